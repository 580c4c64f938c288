"""Device check: everything that needs a GPU, in one run, printed as one table (markdown, for the README).

    python bench/gpu_check.py            # on a CUDA machine: the full check, under 8 minutes on an H100
    python bench/gpu_check.py --quick    # anywhere (CPU): small networks and clips, proves the script runs

Rows (each catches its own failure and prints why, so one missing piece never hides the rest):

- environment: torch / CUDA device / PyAV, whether nvdiffrast imports, the encoder ``auto`` resolves to;
- depth parity: nvdiffrast against our torch rasterizer on a batch of posed dense face meshes: PASS when the
  depth agrees within 1e-4 where both draw and coverage is equal on at least 99.9 % of pixels (nvdiffrast has
  to be built from source, ``pip install git+https://github.com/NVlabs/nvdiffrast``: without it the row says so);
- float16 / bfloat16 edit against float32: max and mean difference of the edited uint8 faces, full-size
  official-config VAE + UNet with random weights (the real cost and the real numerics of the layers);
- edit stage frames/s (depth encode + UNet + decode, a warm cache's per-frame work) at batch 8, 16, 32, 64;
- whole pipeline frames/s (``lip_sync`` on a 720p clip, warm cache, the full-size editing networks, the test
  factory's small other models) at the same batch sizes, and serial against pipelined;
- the H.264 encoder at 720p: ``auto`` (NVENC on a GPU whose FFmpeg has it) against libx264;
- the glue ceiling (bench/bench_glue.py: the pipeline with zero-cost stand-in networks), when that file exists.

A time budget (``--budget`` seconds, default 420) skips the rows that would start after it is spent. Sample
media: the face clip of comfyui-workflow-templates-media-video (requirements-test.txt), else scikit-image's
astronaut; the driving audio is synthesised (no espeak-ng needed).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_edit import UNET_OFFICIAL, VAE_OFFICIAL  # noqa: E402

# Small stand-ins of the same architecture for --quick on a CPU (same code paths, a fraction of the width).
UNET_QUICK = {**UNET_OFFICIAL, "block_out_channels": [16, 32, 32, 32], "attention_head_dim": 2, "norm_num_groups": 8,
              "layers_per_block": 1}
VAE_QUICK = {**VAE_OFFICIAL, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1}
PARITY_DEPTH_TOL = 1e-4
PARITY_COVERAGE = 0.999


class Skip(Exception):
    """A row that cannot run here (no CUDA, no nvdiffrast, ...): its message says why."""


class Report:
    """Rows of (check, result, verdict, seconds); each row's function runs under its own try."""

    def __init__(self, budget: float):
        self.rows: list[tuple[str, str, str, str]] = []
        self.start = time.perf_counter()
        self.budget = budget

    def run(self, check: str, fn: Callable[[], tuple[str, str] | list[tuple[str, str, str]]]) -> None:
        t = time.perf_counter()
        if t - self.start > self.budget:
            self.add(check, f"not run: the time budget ({self.budget:.0f} s) is spent", "SKIP", 0.0)
            return
        try:
            out = fn()
        except Skip as exc:
            self.add(check, str(exc), "SKIP", time.perf_counter() - t)
            return
        except Exception as exc:  # noqa: BLE001 - the row reports its failure, the next rows still run
            traceback.print_exc(file=sys.stderr)
            self.add(check, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                     [:200], "ERROR", time.perf_counter() - t)
            _free()
            return
        dt = time.perf_counter() - t
        if isinstance(out, list):  # several rows from one measurement
            for i, (name, result, verdict) in enumerate(out):
                self.add(name, result, verdict, dt if i == 0 else None)
        else:
            self.add(check, out[0], out[1], dt)

    def add(self, check: str, result: str, verdict: str, seconds: float | None) -> None:
        self.rows.append((check, result.replace("|", "/"), verdict, "" if seconds is None else f"{seconds:.1f}"))
        print(f"[{time.perf_counter() - self.start:6.1f} s] {verdict:5} {check}: {result}", file=sys.stderr,
              flush=True)

    def table(self) -> str:
        head = ("check", "result", "verdict", "s")
        rows = [head, *self.rows]
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
        return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, self.rows)])


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], object], units: int, device: torch.device, min_seconds: float, warmup: int = 1) -> float:
    """Units per second of ``fn`` after ``warmup`` calls, timed over at least ``min_seconds`` (and 2 calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, t = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t < min_seconds:
        fn()
        n += 1
        _sync(device)
    return units * n / (time.perf_counter() - t)


# ---------------------------------------------------------------- environment


def check_environment(device: torch.device) -> tuple[str, str]:
    import av

    from joygen_core.render.raster import nvdiffrast_available
    from joygen_core.video.io import resolve_encoder

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    cuda = f"CUDA {torch.version.cuda}" if device.type == "cuda" else "no CUDA"
    return (f"{gpu}; torch {torch.__version__} ({cuda}, {torch.get_num_threads()} threads); PyAV {av.__version__}; "
            f"nvdiffrast {'yes' if nvdiffrast_available() else 'absent'}; encoder auto = {resolve_encoder('auto')}",
            "INFO")


# ---------------------------------------------------------------- depth parity


def face_meshes(frames: int, grid: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense face-like surface (a grid of ``grid`` x ``grid`` vertices bulged into a head with a nose) in
    ``frames`` random poses, camera space as the renderer takes it (Zc = 10 - z), and its triangles."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1.2, 1.2, grid), indexing="xy")
    r2 = (u ** 2 + (v / 1.2) ** 2).clamp(max=1)
    z = 0.9 * torch.sqrt(1 - 0.8 * r2) + 0.25 * torch.exp(-(u ** 2 + (v + 0.1) ** 2) / 0.02)  # nose
    verts = torch.stack([0.9 * u, v, z], -1).reshape(-1, 3)
    i = torch.arange(grid - 1)
    a = (i[:, None] * grid + i[None, :]).reshape(-1)
    tri = torch.cat([torch.stack([a, a + 1, a + grid], 1), torch.stack([a + 1, a + grid + 1, a + grid], 1)])
    out = []
    for _ in range(frames):
        yaw, pitch, roll = ((torch.rand(3, generator=g) - 0.5) * torch.tensor([1.2, 0.6, 0.4])).tolist()
        cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll),
                                  math.sin(roll))
        rot = (torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
               @ torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
               @ torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
        shift = (torch.rand(3, generator=g) - 0.5) * torch.tensor([0.6, 0.6, 1.0])
        p = verts @ rot.T + shift
        out.append(torch.stack([p[:, 0], p[:, 1], 10.0 - p[:, 2]], -1))
    return torch.stack(out), tri


def check_parity(device: torch.device, quick: bool) -> tuple[str, str]:
    from joygen_core.render.raster import nvdiffrast_available, rasterize_depth

    v, tri = face_meshes(4 if quick else 64, 60 if quick else 200)
    v, tri = v.to(device), tri.to(device)
    d0, c0 = rasterize_depth(v, tri, backend="torch")
    torch_fps = _rate(lambda: rasterize_depth(v, tri, backend="torch"), v.shape[0], device, 0.5)
    if device.type != "cuda":
        raise Skip(f"no CUDA device (torch rasterizer alone: {torch_fps:.0f} frames/s, {tri.shape[0]} triangles)")
    if not nvdiffrast_available():
        raise Skip(f"nvdiffrast is not installed (build it from source: pip install "
                   f"git+https://github.com/NVlabs/nvdiffrast); torch rasterizer {torch_fps:.0f} frames/s")
    d1, c1 = rasterize_depth(v, tri, backend="nvdiffrast")
    nv_fps = _rate(lambda: rasterize_depth(v, tri, backend="nvdiffrast"), v.shape[0], device, 0.5)
    agree = float((c0 == c1).float().mean())
    both = c0 & c1
    err = float((d0[both] - d1[both]).abs().max()) if both.any() else 0.0
    ok = agree >= PARITY_COVERAGE and err <= PARITY_DEPTH_TOL and int(both.sum()) > 0
    return (f"{v.shape[0]} frames x {tri.shape[0]} triangles: coverage equal on {100 * agree:.4f}% of pixels "
            f"({int((c0 != c1).sum())} differ), max |depth diff| {err:.2e} over {int(both.sum())} pixels; "
            f"torch {torch_fps:.0f} / nvdiffrast {nv_fps:.0f} frames/s", "PASS" if ok else "FAIL")


# ---------------------------------------------------------------- editing networks


def edit_models(device: torch.device, dtype: torch.dtype, quick: bool):
    """EditModels with the official VAE / UNet configs (or their narrow --quick stand-ins), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from joygen_core.edit.models import EditModels

    torch.manual_seed(0)
    with torch.device(device):  # built on the device: random init of 0.9 G parameters on a CPU takes a while
        vae = AutoencoderKL.from_config(VAE_QUICK if quick else VAE_OFFICIAL).eval()
        unet = UNet2DConditionModel.from_config(UNET_QUICK if quick else UNET_OFFICIAL).eval()
    return EditModels(vae=vae.to(dtype), unet=unet.to(dtype), device=device, dtype=dtype)


def as_dtype(models, dtype: torch.dtype):
    from joygen_core.edit.models import EditModels

    return EditModels(vae=copy.deepcopy(models.vae).to(dtype), unet=copy.deepcopy(models.unet).to(dtype),
                      device=models.device, dtype=dtype)


def edit_inputs(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A warm cache's per-frame inputs: masked and reference latents, the mouth-depth image, audio features."""
    g = torch.Generator().manual_seed(seed)
    return {"masked": torch.randn(n, 4, 32, 32, generator=g).to(device),
            "reference": torch.randn(n, 4, 32, 32, generator=g).to(device),
            "depth": (torch.rand(n, 3, 256, 256, generator=g) * 2 - 1).to(device),
            "audio": torch.randn(n, 50, 384, generator=g).to(device)}


@torch.no_grad()
def edit_step(models, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Depth encode + UNet + decode of one batch (the edit stage's work per frame with a warm cache)."""
    from joygen_core.edit import editor

    depth = editor.encode_on_device(models, x["depth"])
    return editor.edit_batch(models, x["masked"], x["reference"], depth, x["audio"])


def check_dtypes(base, quick: bool) -> list[tuple[str, str, str]]:
    x = edit_inputs(1 if quick else 8, base.device)
    ref = edit_step(base, x).cpu().int()
    rows = []
    for name in ("float16", "bfloat16"):
        check = f"edit {name} vs float32"
        try:
            m = as_dtype(base, getattr(torch, name))
            out = edit_step(m, x).cpu().int()
            del m
            diff = (out - ref).abs()
            rows.append((check, f"max {int(diff.max())}, mean {float(diff.float().mean()):.2f} uint8 levels; "
                         f"{100 * float((diff > 8).float().mean()):.2f}% of values off by more than 8", "INFO"))
        except Exception as exc:  # noqa: BLE001 - float16 convolutions are missing on some CPUs
            rows.append((check, f"{type(exc).__name__}: {str(exc).strip()[:160]}", "ERROR"))
        _free()
    return rows


def check_edit_rate(models, batches: list[int], quick: bool) -> list[tuple[str, str, str]]:
    rows = []
    for b in batches:
        check = f"edit stage frames/s, batch {b} ({str(models.dtype).replace('torch.', '')})"
        try:
            x = edit_inputs(b, models.device, seed=b)
            fps = _rate(lambda x=x: edit_step(models, x), b, models.device, 0.0 if quick else 2.0)
            rows.append((check, f"{fps:.1f}", "INFO"))
        except Exception as exc:  # noqa: BLE001 - out of memory at the largest batch must not hide the rest
            rows.append((check, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}", "ERROR"))
            _free()
    return rows


def check_channels_last(models, batch: int, quick: bool) -> tuple[str, str]:
    try:
        from joygen_core.edit.models import optimize_edit_models
    except ImportError:
        raise Skip("joygen_core.edit.models has no optimize_edit_models") from None
    nhwc = optimize_edit_models(as_dtype(models, models.dtype), channels_last=True)
    x = edit_inputs(batch, models.device, seed=batch)
    a, b = edit_step(models, x).int(), edit_step(nhwc, x).int()
    fps = _rate(lambda: edit_step(nhwc, x), batch, models.device, 0.0 if quick else 2.0)
    return f"{fps:.1f} frames/s at batch {batch}; max diff to NCHW {int((a - b).abs().max())} uint8 levels", "INFO"


# ---------------------------------------------------------------- whole pipeline


def sample_clip(folder: Path, frames: int, height: int | None) -> Path:
    """A real face clip (looped ping-pong to ``frames``), optionally centred in a 16:9 frame ``height`` high."""
    from joygen_core.video.io import write_video
    from joygen_core.video.length import fit_length

    try:
        from conftest import webp_frames

        src = webp_frames()
    except Exception:  # noqa: BLE001 - no templates package: a still photo of a face, moved a little
        from skimage import data

        face = data.astronaut()[:300, 100:400]
        src = np.stack([np.roll(face, (k % 8) - 4, axis=1) for k in range(16)])
    if height:
        width = height * 16 // 9
        canvas = np.zeros((src.shape[0], height, width, 3), np.uint8)
        y, x = (height - src.shape[1]) // 2, (width - src.shape[2]) // 2
        canvas[:, y:y + src.shape[1], x:x + src.shape[2]] = src
        src = canvas
    index = fit_length(len(src), frames, "pingpong").numpy()
    out = folder / f"clip_{frames}_{src.shape[1]}p.mp4"
    write_video(out, (src[index[i:i + 64]] for i in range(0, frames, 64)), fps=25, preset="veryfast",
                encoder="libx264", overwrite=True)
    return out


def speech_like(seconds: float, rate: int = 16000):
    """A synthetic voice: a 120 Hz pulse train through moving formants, syllables at 4 Hz (no espeak needed)."""
    from joygen_core.video.io import AudioClip

    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * k * 120 * t) / k for k in range(1, 30))
    formant = np.sin(2 * np.pi * (500 + 300 * np.sin(2 * np.pi * 1.3 * t)) * t)
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    wav = 0.3 * voice * (0.5 + 0.5 * formant) * env / np.abs(voice).max()
    return AudioClip(torch.from_numpy(wav.astype(np.float32))[None], rate)


def check_pipeline(device: torch.device, edit, batches: list[int], quick: bool,
                   work: Path) -> list[tuple[str, str, str]]:
    import dataclasses

    from factory import make_models_folder
    from joygen_core.pipeline import LipSyncOptions, lip_sync, load_models
    from joygen_core.weights import ModelStore

    frames = 4 if quick else 250
    blend = "landmarks" if quick else "parsing"  # quick: no face parsing network in the per-video pass
    video = sample_clip(work, frames, None if quick else 720)
    audio = speech_like(frames / 25)
    models = load_models(ModelStore(make_models_folder(work / "models")), device, blend=blend)
    models.edit = edit  # full-size networks; the cache keeps their latents (the cold run below builds it)
    fields = {f.name for f in dataclasses.fields(LipSyncOptions)}

    def run(name: str, b: int, **kw):
        kw = {k: v for k, v in kw.items() if k in fields}
        opts = LipSyncOptions(batch_size=b, chunk_frames=max(64, b), blend=blend, **kw)
        return lip_sync(video, audio, work / f"{name}.mp4", models, opts, cache_root=work / "cache", overwrite=True)

    if quick:  # one warm batch size and the serial engine prove the path; the speeds mean nothing on a CPU
        batches = batches[:1]
    cold = run("cold", batches[0])
    rows = [(f"pipeline cold run ({frames} frames {'small' if quick else '720p'}, batch {batches[0]})",
             f"{cold.frames / cold.seconds['total']:.1f} frames/s; {cold.frames_with_face} frames with a face; "
             + ", ".join(f"{k} {v:.1f} s" for k, v in cold.seconds.items() if not k.startswith("edit:")), "INFO")]
    for b in batches:
        check = f"pipeline frames/s warm, batch {b}"
        try:
            rep = run(f"warm{b}", b)
            parts = ", ".join(f"{k[6:]} {v:.2f}" for k, v in rep.seconds.items() if k.startswith("edit:"))
            wall = rep.seconds.get("edit pass (wall)")
            edit = f"edit pass {rep.frames / wall:.1f} frames/s; " if wall else ""
            rows.append((check, f"{rep.frames / rep.seconds['total']:.1f} ({edit}seconds: {parts})", "INFO"))
        except Exception as exc:  # noqa: BLE001
            rows.append((check, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}", "ERROR"))
            _free()
    if "pipelined" in fields:
        b = batches[min(1, len(batches) - 1)]
        rep = run("serial", b, pipelined=False)
        rows.append((f"pipeline frames/s warm, batch {b}, serial", f"{rep.frames / rep.seconds['total']:.1f}",
                     "INFO"))
    else:
        rows.append(("pipeline serial vs pipelined", "LipSyncOptions has no 'pipelined' setting", "SKIP"))
    return rows


# ---------------------------------------------------------------- encoder, glue


def check_encoder(quick: bool, work: Path) -> tuple[str, str]:
    from joygen_core.video.io import probe_video, read_frames, resolve_encoder, write_video

    n, (h, w) = (8, (360, 640)) if quick else (120, (720, 1280))
    y, x = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(x + 4 * k) % 256, (y + 2 * k) % 256, (x + y) // 8 % 256], -1)
                       for k in range(n)]).astype(np.uint8)
    parts = []
    for enc in dict.fromkeys(("libx264", resolve_encoder("auto"))):
        path = work / f"enc_{enc}.mp4"
        t = time.perf_counter()
        write_video(path, iter([frames]), 25, encoder=enc, overwrite=True)
        fps = n / (time.perf_counter() - t)
        back = read_frames(path)
        psnr = 10 * np.log10(255 ** 2 / np.mean((back.astype(np.float64) - frames) ** 2))
        assert probe_video(path).frame_count == n
        parts.append(f"{enc} {fps:.0f} frames/s, PSNR {psnr:.1f} dB, {path.stat().st_size // 1024} KiB")
    return f"{w}x{h}, crf 18 preset medium: " + "; ".join(parts), "INFO"


def check_glue(quick: bool, work: Path) -> tuple[str, str]:
    """bench/bench_glue.py's warm edit pass with zero-cost stand-in networks: the most the CPU glue allows."""
    from types import SimpleNamespace

    if not (ROOT / "bench" / "bench_glue.py").is_file():
        raise Skip("bench/bench_glue.py is not in this checkout")
    import bench_glue

    if not all(hasattr(bench_glue, f) for f in ("glue", "small_models")):
        raise Skip("bench_glue has no glue(args, height, folder, models) / small_models(folder)")
    height, frames = (360, 4) if quick else (720, 100)
    # work/models is the pipeline row's factory folder when that row ran: reused, not rebuilt
    res = bench_glue.glue(SimpleNamespace(frames=frames, batch=8, repeat=1), height, work,
                          bench_glue.small_models(work))
    stages = ", ".join(f"{k} {v:.0f}" for k, v in res["stage"].items())
    return (f"{height}p, {res['n']} frames, batch 8: serial {res['serial']:.1f}, pipelined {res['pipelined']:.1f} "
            f"frames/s; per stage (frames/s): {stages}", "INFO")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small networks and clips: proves the script on a CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="the speed rows' dtype (default: float16 on CUDA, else float32)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 8 16 32 64; --quick 2 4)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no new row starts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" at every .to(dtype)
    device = torch.device(args.device)
    batches = args.batch or ([2, 4] if args.quick else [8, 16, 32, 64])
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    report = Report(args.budget)
    report.run("environment", lambda: check_environment(device))
    report.run("depth parity nvdiffrast vs torch", lambda: check_parity(device, args.quick))
    nets: dict = {}

    def build() -> tuple[str, str]:
        t = time.perf_counter()
        nets["fp32"] = edit_models(device, torch.float32, args.quick)
        n = sum(p.numel() for m in (nets["fp32"].vae, nets["fp32"].unet) for p in m.parameters())
        kind = "narrow --quick stand-ins" if args.quick else "official configs"
        return f"{kind}, {n / 1e6:.0f} M parameters, built in {time.perf_counter() - t:.1f} s", "INFO"

    report.run("editing networks (random weights)", build)
    with tempfile.TemporaryDirectory(prefix="joygen_gpu_check_") as tmp:
        if "fp32" in nets:
            report.run("edit dtypes", lambda: check_dtypes(nets["fp32"], args.quick))
            speed = nets["fp32"] if dtype == torch.float32 else as_dtype(nets.pop("fp32"), dtype)
            _free()
            report.run("edit stage", lambda: check_edit_rate(speed, batches, args.quick))
            report.run("edit stage, channels_last",
                       lambda: check_channels_last(speed, batches[min(2, len(batches) - 1)], args.quick))
            report.run("whole pipeline", lambda: check_pipeline(device, speed, batches, args.quick, Path(tmp)))
        report.run("H.264 encoder", lambda: check_encoder(args.quick, Path(tmp)))
        report.run("glue ceiling (zero-cost networks)", lambda: check_glue(args.quick, Path(tmp)))
    total = time.perf_counter() - report.start
    print(f"JoyGen device check{' --quick' if args.quick else ''}: {total:.0f} s on {device}\n")
    print(report.table())
    return 1 if any(r[2] in ("FAIL", "ERROR") for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
