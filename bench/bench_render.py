"""Depth rendering speed on the real BFM front mesh, and our rasterizer against nvdiffrast where it exists.

Reads the real topology (70,789 triangles) and a synthetic face shape on it (35,709 vertices) from
``../shared/bfm-topology`` relative to the repository root (or ``--topology DIR``); skips when absent.
Renders batches of re-posed faces at 224x224 and prints frames/s per device, backend and batch size.
With CUDA and nvdiffrast importable it also compares coverage and depth of both backends, pixel by
pixel, on the same batches (the torch backend is meant to match nvdiffrast's CUDA rasterizer).

    python bench/bench_render.py [--batches 8 32 128] [--repeats 5] [--frames 256]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from joygen_core.render.depth import normalise_depth  # noqa: E402
from joygen_core.render.raster import nvdiffrast_available, rasterize_depth  # noqa: E402


def default_topology() -> Path:
    """``../shared/bfm-topology`` beside the repository root (also from a worktree one level deeper)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "bfm-topology").is_dir():
            return base / "shared" / "bfm-topology"
    return ROOT.parent / "shared" / "bfm-topology"


def load_topology(folder: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    from scipy.io import loadmat

    info, shape = folder / "facemodel_info.mat", folder / "synthetic_meanshape.npy"
    if not info.is_file() or not shape.is_file():
        return None
    tri = torch.from_numpy(loadmat(str(info))["tri"].astype(np.int64) - 1)  # official: 1-based
    mean = torch.from_numpy(np.load(shape).astype(np.float32))
    return mean - mean.mean(0), tri


def posed_faces(mean: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n camera-space copies of the face: random pose within +-15 deg, small shifts, Zc = 10 - z."""
    g = torch.Generator().manual_seed(seed)
    ang = (torch.rand(n, 3, generator=g) - 0.5) * math.radians(30)
    x, y, z = ang.unbind(1)
    c, s = torch.cos, torch.sin
    one, zero = torch.ones(n), torch.zeros(n)
    rx = torch.stack([one, zero, zero, zero, c(x), -s(x), zero, s(x), c(x)], 1).view(n, 3, 3)
    ry = torch.stack([c(y), zero, s(y), zero, one, zero, -s(y), zero, c(y)], 1).view(n, 3, 3)
    rz = torch.stack([c(z), -s(z), zero, s(z), c(z), zero, zero, zero, one], 1).view(n, 3, 3)
    trans = (torch.rand(n, 1, 3, generator=g) - 0.5) * torch.tensor([0.2, 0.2, 0.5])
    v = mean[None] @ (rz @ ry @ rx).transpose(1, 2) + trans
    return torch.cat([v[..., :2], 10.0 - v[..., 2:]], -1)


def timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def speed(mean, tri, devices, backends, batches, repeats) -> list[tuple]:
    rows = []
    for dev in devices:
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        t = tri.to(dev)
        for backend in backends:
            if backend == "nvdiffrast" and (dev.type != "cuda" or not nvdiffrast_available()):
                continue
            for b in batches:
                v = posed_faces(mean, b).to(dev)
                sec = timed(lambda v=v, t=t, backend=backend: rasterize_depth(v, t, 224, backend), repeats, sync)
                rows.append((str(dev), backend, b, sec * 1000 / b, b / sec))
                print(f"  {str(dev):6s} {backend:10s} batch {b:5d}: {b / sec:9.1f} frames/s", flush=True)
    return rows


def compare(mean, tri, frames: int) -> None:
    """Ours (torch) against nvdiffrast on CUDA: coverage, depth and normalised uint8 maps."""
    dev = torch.device("cuda")
    v = posed_faces(mean, frames, seed=1).to(dev)
    t = tri.to(dev)
    d_ours, c_ours = rasterize_depth(v, t, 224, "torch")
    d_nv, c_nv = rasterize_depth(v, t, 224, "nvdiffrast")
    both = c_ours & c_nv
    cov_diff = (c_ours != c_nv).sum(dim=(1, 2))
    dd = (d_ours - d_nv).abs()[both]
    n_ours, n_nv = normalise_depth(d_ours, c_ours), normalise_depth(d_nv, c_nv)
    u8 = (n_ours - n_nv).abs()
    print(f"\nours vs nvdiffrast on {frames} frames (CUDA):")
    print(f"  covered pixels per frame (nvdiffrast): {c_nv.sum(dim=(1, 2)).float().mean():.0f}")
    print(f"  coverage differs: {int(cov_diff.sum())} pixels in all ({int((cov_diff > 0).sum())} frames), "
          f"max {int(cov_diff.max())} in one frame")
    print(f"  depth |diff| on pixels both cover: max {float(dd.max()):.3g}, mean {float(dd.mean()):.3g}")
    print(f"  normalised uint8 maps: pixels differing {int((u8 > 0).sum())}, by more than 1: {int((u8 > 1).sum())}, "
          f"max {int(u8.max())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", type=Path, default=default_topology())
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[32, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=256, help="frames for the nvdiffrast comparison")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    args = ap.parse_args()
    data = load_topology(args.topology)
    if data is None:
        print(f"skipped: no BFM topology in {args.topology} (facemodel_info.mat + synthetic_meanshape.npy)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    mean, tri = data
    print(f"BFM front mesh: {mean.shape[0]} vertices, {tri.shape[0]} triangles, 224x224")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load:.2f} "
          "(other processes on the machine slow the CPU figures)")
    rows = speed(mean, tri, [torch.device("cpu")], ["torch"], args.batches, args.repeats)
    if torch.cuda.is_available():
        rows += speed(mean, tri, [torch.device("cuda")], ["torch", "nvdiffrast"], args.gpu_batches, args.repeats)
    print("\n| device | backend | batch | ms/frame | frames/s |\n|---|---|---|---|---|")
    for dev, backend, b, ms, fps in rows:
        print(f"| {dev} | {backend} | {b} | {ms:.3f} | {fps:.1f} |")
    if torch.cuda.is_available() and nvdiffrast_available():
        compare(mean, tri, args.frames)
    else:
        print("\nnvdiffrast comparison skipped: needs CUDA and nvdiffrast")


if __name__ == "__main__":
    main()
