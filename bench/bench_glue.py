"""The glue around the networks: what the edit pass costs when the networks cost nothing (run by hand; tables).

    python bench/bench_glue.py glue --height 720 1080 --frames 100
        frames/s of each CPU stage of a warm-cache edit pass (decode, cache reads, depth raster, paste, encode;
        and the per-video pass's face crop), with zero-cost stand-in VAE / UNet, serial and pipelined overall
    python bench/bench_glue.py overlap --height 720 --frames 100
        stand-in networks that sleep L ms a frame (the CPU is free meanwhile, as with a GPU kernel), L = the glue's
        own serial time per frame: serial vs pipelined frames/s against min(glue fps, 1000 / L). A pipelined run
        pays its fill (the first batch read and rendered before the networks start) and drain (the last batches'
        paste and x264's lookahead flush, about 40 frames at preset medium) once: on short clips that is a visible
        part of the time, so measure with a few hundred frames
    python bench/bench_glue.py full --frames 8
        official-size random-weight VAE + UNet on a short clip: the frames handed to the encoder are identical
        serial vs pipelined, and the times of both

Everything but the editing networks is real: the small factory face models build the per-video cache (face track,
cached latents and masks), then the warm edit pass reads, rasterises the mouth depth, pastes and encodes (x264,
default preset) exactly as :func:`joygen_core.pipeline.lip_sync` does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

STAGES = ("decode", "cache reads", "depth raster", "audio features", "paste", "encode")


class ZeroVAE(torch.nn.Module):
    """The VAE's interface with no arithmetic: latents and images of zeros of the right shapes."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        self.config = SimpleNamespace(scaling_factor=0.18215)

    def encode(self, x):
        mean = x.new_zeros(x.shape[0], 4, x.shape[2] // 8, x.shape[3] // 8)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))

    def decode(self, z):
        return SimpleNamespace(sample=z.new_zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8))


class SleepUNet(torch.nn.Module):
    """The UNet's interface: zeros out, after sleeping ``ms_per_frame`` per frame (0: no cost at all)."""

    def __init__(self, ms_per_frame: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        self.ms_per_frame = ms_per_frame

    def forward(self, x, t, encoder_hidden_states=None):
        if self.ms_per_frame:
            time.sleep(self.ms_per_frame * x.shape[0] / 1000)  # releases the GIL, like waiting on a GPU
        return SimpleNamespace(sample=x.new_zeros(x.shape[0], 4, x.shape[2], x.shape[3]))


def stand_in_edit(ms_per_frame: float = 0.0):
    from joygen_core.edit.models import EditModels

    return EditModels(vae=ZeroVAE(), unet=SleepUNet(ms_per_frame), device=torch.device("cpu"), dtype=torch.float32)


def make_clip(folder: Path, height: int, frames: int, face: float = 0.6) -> tuple[Path, object]:
    """The sample face clip upscaled so the face square is ``face`` of the height, in a 16:9 frame of ``height``
    (ping-pong looped to ``frames``), and a tone as long as the clip to drive it."""
    import cv2

    from conftest import webp_frames
    from joygen_core.video.io import AudioClip, write_video
    from joygen_core.video.length import fit_length

    src = webp_frames()
    side = int(height * face) // 2 * 2
    width = height * 16 // 9 // 2 * 2
    y, x = (height - side) // 2, (width - side) // 2
    index = fit_length(len(src), frames, "pingpong").numpy()
    video = folder / f"clip_{height}p_{frames}.mp4"

    def chunks():
        for i in range(0, frames, 32):
            out = np.full((len(index[i:i + 32]), height, width, 3), 90, np.uint8)
            for j, k in enumerate(index[i:i + 32]):
                out[j, y:y + side, x:x + side] = cv2.resize(src[k], (side, side), interpolation=cv2.INTER_CUBIC)
            yield out

    write_video(video, chunks(), fps=25, overwrite=True, preset="veryfast", crf=16)
    t = torch.arange(int(frames / 25 * 16000)) / 16000
    tone = (0.3 * torch.sin(2 * np.pi * 180 * t) * (torch.sin(2 * np.pi * 3 * t) > 0)).float()[None]
    return video, AudioClip(tone, 16000)


def small_models(folder: Path):
    from bench_edit import _small_models

    return _small_models(folder, "landmarks")


def _run(video, audio, out: Path, models, cache: Path, *, pipelined: bool, **kw):
    from joygen_core.pipeline import LipSyncOptions, lip_sync

    opts = LipSyncOptions(blend="landmarks", pipelined=pipelined, **kw)
    return lip_sync(video, audio, out, models, opts, cache_root=cache, overwrite=True)


def _table(rows) -> None:
    w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))


def _crop_fps(video: Path, cache: Path, n: int) -> float:
    """Face crops (the per-video pass's cut + Lanczos resize) on the clip's own boxes, frames/s."""
    from joygen_core.cache import VideoCache
    from joygen_core.edit.editor import face_crops
    from joygen_core.video.io import read_frames

    entry = next(p for p in cache.iterdir() if VideoCache(p).complete())
    track = VideoCache(entry).track()
    frames = torch.from_numpy(read_frames(video, max_frames=min(n, 64)))
    t = time.perf_counter()
    face_crops(frames, track.box[:len(frames)])
    return len(frames) / (time.perf_counter() - t)


def glue(args, height: int, tmp: Path, models) -> dict:
    """Warm edit passes with zero-cost networks: per-stage frames/s (serial run) and overall (both engines)."""
    video, audio = make_clip(tmp, height, args.frames)
    cache = tmp / f"cache{height}"
    models.edit = stand_in_edit(0.0)
    _run(video, audio, tmp / "cold.mp4", models, cache, pipelined=False, batch_size=args.batch)  # builds the cache
    res = {}
    for pipelined in (False, True) * args.repeat:
        r = _run(video, audio, tmp / "warm.mp4", models, cache, pipelined=pipelined, batch_size=args.batch)
        key = "pipelined" if pipelined else "serial"
        if key not in res or r.seconds["edit pass (wall)"] < res[key].seconds["edit pass (wall)"]:
            res[key] = r
    n = res["serial"].frames
    stage = {k: n / max(res["serial"].seconds[f"edit: {k}"], 1e-9) for k in STAGES}
    stage["crop (per-video pass)"] = _crop_fps(video, cache, n)
    return {"n": n, "stage": stage, "serial": n / res["serial"].seconds["edit pass (wall)"],
            "pipelined": n / res["pipelined"].seconds["edit pass (wall)"],
            "ms_per_frame": 1000 * res["serial"].seconds["edit pass (wall)"] / n}


def bench_glue(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = small_models(tmp)
        results = {h: glue(args, h, tmp, models) for h in args.height}
    rows = [("stage (frames/s)", *[f"{h}p" for h in args.height])]
    for k in (*STAGES, "crop (per-video pass)"):
        rows.append((k, *[f"{results[h]['stage'][k]:.1f}" for h in args.height]))
    for k in ("serial", "pipelined"):
        rows.append((f"overall, {k}", *[f"{results[h][k]:.1f}" for h in args.height]))
    print(f"warm-cache edit pass, zero-cost VAE / UNet, {args.frames} frames, batch {args.batch}, x264 default "
          f"(medium, crf 18), {torch.get_num_threads()} torch threads")
    _table(rows)
    for h in args.height:
        st = results[h]["stage"]
        other = sum(1 / st[k] for k in STAGES if k != "encode")
        print(f"{h}p: stages other than the encoder {1000 * other:.1f} ms/frame, encoder {1000 / st['encode']:.1f} "
              f"ms/frame: ratio {other * st['encode']:.2f} (goal < 0.5)")


def bench_overlap(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = small_models(tmp)
        rows = [("height", "L (ms)", "glue fps", "1000/L", "serial fps", "pipelined fps", "serial x",
                 "pipelined x")]
        for h in args.height:
            g = glue(args, h, tmp, models)
            L = args.sleep_ms or g["ms_per_frame"]
            models.edit = stand_in_edit(L)
            video, audio = tmp / f"clip_{h}p_{args.frames}.mp4", make_clip(tmp, h, args.frames)[1]
            best = {}
            for pipelined in (False, True) * args.repeat:
                r = _run(video, audio, tmp / "o.mp4", models, tmp / f"cache{h}", pipelined=pipelined,
                         batch_size=args.batch)
                fps = r.frames / r.seconds["edit pass (wall)"]
                best[pipelined] = max(best.get(pipelined, 0.0), fps)
            ceiling = min(g["serial"], 1000 / L)
            rows.append((f"{h}p", f"{L:.1f}", f"{g['serial']:.1f}", f"{1000 / L:.1f}", f"{best[False]:.1f}",
                         f"{best[True]:.1f}", f"{best[False] / ceiling:.2f}", f"{best[True] / ceiling:.2f}"))
            print("  ".join(rows[-1]), flush=True)
    print(f"stand-in networks sleeping L ms per frame, {args.frames} frames, batch {args.batch}; "
          "x = frames/s / min(glue fps, 1000/L) (goal: pipelined >= 0.85, serial ~0.5)")
    _table(rows)


def bench_full(args) -> None:
    from bench_edit import _full_size_edit

    import joygen_core.video.io as video_io

    encoded = {}
    real = video_io.write_video

    def keep(path, frames, **kw):
        chunks = []

        def tee():
            for c in frames:
                chunks.append(np.array(c))
                yield c

        try:
            return real(path, tee(), **kw)
        finally:
            encoded[Path(path).stem] = np.concatenate(chunks) if chunks else None

    video_io.write_video = keep
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = small_models(tmp)
        models.edit = _full_size_edit(torch.device("cpu"), torch.float32)
        src = tmp / "src"
        src.mkdir()
        video, audio = make_clip(src, args.height[0], args.frames)
        _run(video, audio, tmp / "cold.mp4", models, tmp / "cache", pipelined=False, batch_size=args.batch)
        rows = [("engine", "edit pass (s)", "frames/s")]
        for pipelined in (False, True):
            name = "pipelined" if pipelined else "serial"
            r = _run(video, audio, tmp / f"{name}.mp4", models, tmp / "cache", pipelined=pipelined,
                     batch_size=args.batch)
            wall = r.seconds["edit pass (wall)"]
            rows.append((name, f"{wall:.1f}", f"{r.frames / wall:.3f}"))
    same = np.array_equal(encoded["serial"], encoded["pipelined"])
    print(f"official-size random-weight VAE + UNet, {args.frames} frames at {args.height[0]}p, batch {args.batch}, "
          f"CPU, {torch.get_num_threads()} torch threads; frames handed to the encoder identical: {same}")
    _table(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, func, frames, height in (("glue", bench_glue, 100, [720, 1080]), ("overlap", bench_overlap, 100, [720]),
                                       ("full", bench_full, 8, [360])):
        s = sub.add_parser(name)
        s.add_argument("--height", type=int, nargs="+", default=height)
        s.add_argument("--frames", type=int, default=frames)
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--repeat", type=int, default=1, help="runs of each engine; the best is kept")
        if name == "overlap":
            s.add_argument("--sleep-ms", type=float, default=0.0, help="L (default: the glue's own ms per frame)")
        s.set_defaults(func=func)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
