"""Frames per second of 3DMM reconstruction on this machine: detection, alignment, ResNet-50 regression.

Run by hand: ``python bench/bench_recon.py [--frames 64] [--device cpu] [--dtype float32]``. Uses the
real talking-face clip of the test fixtures (tiled to the frame count), at its own 350x350 size and
upscaled to 1280x720, and the test factory's random-weight regressor (same cost as the real one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import webp_frames  # noqa: E402
from factory import morphable  # noqa: E402
from joygen_core.face.align import align_params, crop_faces  # noqa: E402
from joygen_core.face.detect import detect_faces, load_mtcnn  # noqa: E402
from joygen_core.morphable.bfm import load_bfm  # noqa: E402
from joygen_core.morphable.geometry import crop_to_frame, landmarks68, posed_camera_vertices  # noqa: E402
from joygen_core.morphable.regressor import load_regressor, regress  # noqa: E402


def frames_at(size: tuple[int, int] | None, n: int) -> np.ndarray:
    from PIL import Image

    base = webp_frames()
    base = np.concatenate([base] * (n // len(base) + 1))[:n]
    if size is None:
        return np.ascontiguousarray(base)
    h, w = size
    side = h  # the square clip fills the frame height, centred
    out = np.zeros((n, h, w, 3), np.uint8)
    for i, f in enumerate(base):
        out[i, :, (w - side) // 2:(w - side) // 2 + side] = np.asarray(Image.fromarray(f).resize((side, side)))
    return out


class Lap:
    """Seconds since the previous call."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = ap.parse_args()
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        morphable.write(root, np.random.default_rng(0))
        bfm = load_bfm(root / "BFM/BFM_model_front.mat").to(dev)
        reg = load_regressor(root / "face_recon_feat0.2_augment/epoch_20.pth", dev, dtype)
    det_model = load_mtcnn(dev)
    # warm-up (oneDNN / cuDNN kernel selection)
    warm = torch.from_numpy(frames_at(None, 2))
    detect_faces(warm, det_model)
    regress(reg, torch.rand(2, 3, 224, 224, device=dev))

    rows = [("frames", "size", "detect s", "align s", "regress s", "geometry s", "total s", "frames/s")]
    for size in (None, (720, 1280)):
        frames = torch.from_numpy(frames_at(size, args.frames))
        n, h, w, _ = frames.shape
        lap = Lap()
        det = detect_faces(frames, det_model)
        t_det = lap()
        idx = det.found.nonzero()[:, 0]
        al = align_params(det.five[idx], (h, w))
        crops = crop_faces(frames[idx].to(dev), al)
        t_al = lap()
        coeffs = regress(reg, crops, batch_size=args.frames)
        t_reg = lap()
        crop_to_frame(landmarks68(bfm, posed_camera_vertices(bfm, coeffs.to(dev))), al, (h, w))
        t_geo = lap()
        total = t_det + t_al + t_reg + t_geo
        rows.append((str(n), f"{w}x{h}", f"{t_det:.2f}", f"{t_al:.2f}", f"{t_reg:.2f}", f"{t_geo:.2f}",
                     f"{total:.2f}", f"{n / total:.1f}"))
    print(f"device {dev}, regressor {args.dtype}, torch threads {torch.get_num_threads()}, one call per stage")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(wd) for c, wd in zip(r, widths)))


if __name__ == "__main__":
    main()
