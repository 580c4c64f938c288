"""Real-time factor of the audio stages with full-size random-weight models (run by hand).

    python bench/bench_audio.py [--seconds 20] [--device cpu] [--threads N]

Whisper-tiny (official tiny.pt layout, 39M) -> per-frame features; HuBERT-large (24 layers, 1024 wide,
facebook/hubert-large-ls960-ft config) + pitch + the A2M flow VAE -> expressions. RTF = processing time /
audio duration (below 1 is faster than real time). Model loading is timed separately.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def speech(seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * 16000), dtype=torch.float64) / 16000
    f = 140 + 40 * torch.sin(2 * math.pi * 0.8 * t)
    x = 0.3 * torch.sin(2 * math.pi * torch.cumsum(f, 0) / 16000) * (torch.sin(2 * math.pi * 3 * t) > -0.3)
    return x.to(torch.float32)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, nargs="+", default=[20.0, 75.0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--fps", type=float, default=25.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    from transformers import HubertConfig, HubertModel

    from factory import audio as fa
    from joygen_core.audio.whisper import load_whisper_encoder, whisper_features
    from joygen_core.motion.a2m import audio_to_motion, load_a2m

    g = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (enc, t_w) = timed(lambda: load_whisper_encoder(fa.write_whisper(root, g), device, dtype), device)
        (a2m, t_a) = timed(lambda: load_a2m(fa.write_a2m(root, g), device=device), device)
        torch.manual_seed(0)
        (hub, t_h) = timed(lambda: HubertModel(HubertConfig(**fa.hubert_config(large=True))).to(device, dtype).eval(),
                           device)
        hub.config.do_normalize = True
    print(f"setup: whisper write+load {t_w:.1f} s, A2M write+load {t_a:.1f} s, HuBERT-large init {t_h:.1f} s "
          f"({sum(p.numel() for p in hub.parameters()) / 1e6:.0f}M params); torch threads {torch.get_num_threads()}, "
          f"device {device}, dtype {dtype}")
    whisper_features(enc, speech(1.0), args.fps, 25)  # warm-up
    for sec in args.seconds:
        audio = speech(sec)
        n = int(round(sec * args.fps))
        _, t1 = timed(lambda a=audio, n=n: whisper_features(enc, a, args.fps, n), device)
        _, t2 = timed(lambda a=audio, n=n: audio_to_motion(a2m, hub, a, args.fps, n, seed=0), device)
        rows.append((sec, t1, t2))
    print(f"{'audio s':>8} | {'whisper s':>9} | {'whisper RTF':>11} | {'hubert+a2m s':>12} | {'hubert+a2m RTF':>14}")
    for sec, t1, t2 in rows:
        print(f"{sec:8.1f} | {t1:9.2f} | {t1 / sec:11.3f} | {t2:12.2f} | {t2 / sec:14.3f}")


if __name__ == "__main__":
    main()
