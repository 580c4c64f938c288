"""Editing-stage and whole-pipeline benchmarks (run by hand; prints tables).

    python bench/bench_edit.py unet      # frames/s of the edit stage with full-size random-weight models
    python bench/bench_edit.py stages    # per-stage seconds for a 10 s clip, cold and warm cache (small models)
    python bench/bench_edit.py stages --seconds 2 --full-size   # the same with official-size VAE + UNet
    python bench/bench_edit.py memory --minutes 1 10 --height 720   # peak RSS of the streamed pipeline

Full-size models use the official configs (UNet 12 -> 4 channels, [320,640,1280,1280]; sd-vae-ft-mse)
with random weights, so the cost is the real one. ``stages`` and ``memory`` use the test factory's small
models: they measure the pipeline's own overheads, caching and streaming, not the networks.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

UNET_OFFICIAL = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 12, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
VAE_OFFICIAL = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def _time(fn, repeat: int = 2) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def _full_size_edit(device: torch.device, dtype: torch.dtype):
    """EditModels with the official VAE / UNet configs and random weights (the real cost, no download)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from joygen_core.edit.models import EditModels

    torch.manual_seed(0)
    return EditModels(vae=AutoencoderKL.from_config(VAE_OFFICIAL).eval().to(device, dtype),
                      unet=UNet2DConditionModel.from_config(UNET_OFFICIAL).eval().to(device, dtype),
                      device=device, dtype=dtype)


def bench_unet(args) -> None:
    from joygen_core.edit import editor

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    models = _full_size_edit(device, dtype)
    rows = [("batch", "encode x3 (s/frame)", "UNet (s/frame)", "decode (s/frame)", "frames/s")]
    for b in args.batch:
        x = torch.rand(b, 3, 256, 256) * 2 - 1
        lat = torch.randn(b, 12, 32, 32)
        audio = torch.randn(b, 50, 384)
        with torch.no_grad():
            enc = _time(lambda x=x, b=b: editor.encode(models, x, b), args.repeat) * 3
            unet = _time(lambda lat=lat, a=audio: editor.predict_latents(models.unet, lat, a), args.repeat)
            dec = _time(lambda lat=lat, b=b: editor.decode(models, lat[:, :4], b), args.repeat)
        total = enc + unet + dec
        rows.append((str(b), f"{enc / b:.3f}", f"{unet / b:.3f}", f"{dec / b:.3f}", f"{b / total:.2f}"))
    print(f"edit stage, full-size random weights, {device} {args.dtype}, torch threads {torch.get_num_threads()}")
    _table(rows)
    print("with the per-video cache the masked and reference encodes are done once per video: a warm run costs "
          "1 encode (depth) + UNet + decode per frame")


def _table(rows) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def _sample(folder: Path, seconds: float, height: int | None = None) -> tuple[Path, Path]:
    """A real face clip looped (ping-pong) to ``seconds`` at 25 fps, optionally placed in a larger frame."""
    from conftest import webp_frames
    from joygen_core.video.io import AudioClip, read_audio, write_video
    from joygen_core.video.length import fit_length

    frames = webp_frames()
    if height:
        width = height * 16 // 9
        canvas = np.zeros((frames.shape[0], height, width, 3), np.uint8)
        y, x = (height - frames.shape[1]) // 2, (width - frames.shape[2]) // 2
        canvas[:, y:y + frames.shape[1], x:x + frames.shape[2]] = frames
        frames = canvas
    n = int(round(seconds * 25))
    index = fit_length(len(frames), n, "pingpong").numpy()
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "JoyGen edits the lips of an existing talking face video to "
                    "follow new speech."], check=True, capture_output=True)
    speech = read_audio(wav)
    reps = -(-n * speech.sample_rate // (25 * speech.waveform.shape[1]))
    tiled = AudioClip(speech.waveform.repeat(1, reps)[:, : n * speech.sample_rate // 25], speech.sample_rate)
    video = folder / f"clip_{seconds:g}s_{height or frames.shape[1]}p.mp4"

    def chunks():
        for i in range(0, n, 250):
            yield frames[index[i:i + 250]]

    write_video(video, chunks(), fps=25, audio=tiled, overwrite=True, preset="veryfast")
    return video, video  # the clip's own track drives it: audio as long as the video


def _small_models(folder: Path, blend: str):
    from factory import make_models_folder
    from joygen_core.pipeline import load_models
    from joygen_core.weights import ModelStore

    root = folder / "models"
    if not root.exists():
        make_models_folder(root)
    return load_models(ModelStore(root), "cpu", blend=blend)


def bench_stages(args) -> None:
    from joygen_core.pipeline import LipSyncOptions, lip_sync

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video, speech = _sample(tmp, args.seconds)
        models = _small_models(tmp, args.blend)
        if args.full_size:
            models.edit = _full_size_edit(torch.device("cpu"), torch.float32)
        opts = LipSyncOptions(blend=args.blend, chunk_frames=64)
        cold = lip_sync(video, speech, tmp / "cold.mp4", models, opts, cache_root=tmp / "cache")
        warm = lip_sync(video, speech, tmp / "warm.mp4", models, opts, cache_root=tmp / "cache")
    rows = [("stage", "cold (s)", "warm (s)")]
    for k in cold.seconds:
        rows.append((k, f"{cold.seconds[k]:.2f}", f"{warm.seconds.get(k, 0.0):.2f}"))
    kind = "full-size random-weight VAE + UNet, other models small" if args.full_size else "small factory models"
    print(f"{args.seconds:g} s clip at 25 fps ({cold.frames} output frames), {kind}, CPU, blend {args.blend}")
    _table(rows)
    print(f"warm / cold total: {cold.seconds['total'] / warm.seconds['total']:.2f}x faster")


class _StageSampler:
    """Peak resident memory per pipeline stage (progress callback's stage), sampled from /proc on Linux."""

    def __init__(self, every: float = 0.25):
        import threading

        self.stage, self.peaks, self.every = "load", {}, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page = 4096 / 2**20
        while not self._stop.is_set():
            try:
                with open("/proc/self/statm") as f:
                    mb = int(f.read().split()[1]) * page
            except OSError:
                return
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), mb)
            self._stop.wait(self.every)

    def progress(self, stage: str, done: int, total: int, preview=None) -> None:
        self.stage = stage

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peaks.items()}


def _peak_run(args) -> None:
    """Child process: one pipeline run; prints its peak RSS (whole run and per stage) as JSON."""
    import resource

    from joygen_core.pipeline import LipSyncOptions, lip_sync

    tmp = Path(args.work)
    sampler = _StageSampler()
    models = _small_models(tmp, "box")
    opts = LipSyncOptions(blend="box", use_depth=not args.audio_only, chunk_frames=64)
    t = time.perf_counter()
    report = lip_sync(Path(args.video), Path(args.speech), tmp / f"out_{Path(args.video).stem}.mp4", models, opts,
                      cache_root=tmp / "cache", overwrite=True, progress=sampler.progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": report.frames, "peak_mb": peak, "seconds": time.perf_counter() - t,
                      "stages": sampler.stop()}))


def bench_memory(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("video", "frames", "peak RSS (MB)", "seconds", "peak by stage (MB)")]
        peaks = []
        for minutes in args.minutes:
            video, speech = _sample(Path(tmp), minutes * 60, args.height)
            cmd = [sys.executable, __file__, "_peak", "--work", tmp, "--video", str(video), "--speech", str(speech)]
            if args.audio_only:
                cmd.append("--audio-only")
            for kind in ("cold", "warm") if args.warm else ("cold",):  # warm: a new process, the cache kept
                run = subprocess.run(cmd, check=True, capture_output=True, text=True)
                res = json.loads(run.stdout.splitlines()[-1])
                if kind == "cold":
                    peaks.append(res["peak_mb"])
                stages = " ".join(f"{k} {v}" for k, v in res["stages"].items())
                rows.append((f"{minutes:g} min {args.height}p {kind}", str(res["frames"]), f"{res['peak_mb']:.0f}",
                             f"{res['seconds']:.0f}", stages))
                print("  ".join(rows[-1]), flush=True)
    _table(rows)
    if len(peaks) > 1:
        print(f"peak ratio longest / shortest: {peaks[-1] / peaks[0]:.2f} (goal <= 1.2)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unet")
    u.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    u.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32")
    u.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    u.add_argument("--repeat", type=int, default=1)
    u.set_defaults(func=bench_unet)
    s = sub.add_parser("stages")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--blend", default="parsing")
    s.add_argument("--full-size", action="store_true", help="official-size editing models (random weights)")
    s.set_defaults(func=bench_stages)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    m.add_argument("--height", type=int, default=720)
    m.add_argument("--audio-only", action="store_true")
    m.add_argument("--warm", action="store_true", help="also re-drive each video from its cache in a new process")
    m.set_defaults(func=bench_memory)
    k = sub.add_parser("_peak")
    for a in ("--work", "--video", "--speech"):
        k.add_argument(a)
    k.add_argument("--audio-only", action="store_true")
    k.set_defaults(func=_peak_run)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
