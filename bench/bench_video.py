"""Decoding memory vs video length, and the H.264 encoder's speed per preset.

Usage: python bench/bench_video.py [--minutes 1 10] [--fps 25]
Makes synthetic 720p clips once (x264 ultrafast, in bench/out/), then decodes each in a fresh
process with iter_frames and reports peak resident memory and decode speed. Flat memory means
the decoder streams: a 10-minute video must not need more than a 1-minute one.

Usage: python bench/bench_video.py --encode [--height 720 1080] [--frames 100]
frames/s, size and PSNR of write_video for each preset (crf 18) with libx264, and with h264_nvenc
where the machine has it: what the --preset / --encoder options trade.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
from joygen_core.video.io import iter_frames
t = time.perf_counter(); n = 0; checksum = 0
for chunk in iter_frames(sys.argv[1], chunk_size=16):
    n += chunk.shape[0]; checksum += int(chunk[:, ::97, ::97].sum())
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"frames": n, "seconds": dt, "peak_rss_mb": rss}))
"""


def make_clip(path: Path, minutes: float, fps: int) -> None:
    from joygen_core.video.io import write_video

    n = int(minutes * 60 * fps)
    base = np.linspace(0, 255, 1280, dtype=np.float32)[None, :, None]

    def frames():
        for start in range(0, n, 50):
            k = min(50, n - start)
            shift = (np.arange(start, start + k) * 7) % 1280
            chunk = np.stack([np.broadcast_to(np.roll(base, s, axis=1), (720, 1280, 3)) for s in shift])
            yield chunk.astype(np.uint8)

    write_video(path, frames(), fps, crf=35, preset="ultrafast")


def encode_table(heights: list[int], frames: int, presets: list[str]) -> None:
    """write_video's speed, file size and PSNR per encoder and preset, on a real face clip in a 16:9 frame."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import webp_frames
    from joygen_core.video.io import nvenc_available, read_frames, write_video
    from joygen_core.video.length import fit_length

    src = webp_frames()
    encoders = ["libx264"] + (["h264_nvenc"] if nvenc_available() else [])
    print(f"{'size':>10} {'encoder':>10} {'preset':>9} {'frames/s':>9} {'KiB':>8} {'PSNR dB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for h in heights:
            w = h * 16 // 9 // 2 * 2
            clip = np.full((frames, h, w, 3), 90, np.uint8)
            side = min(h, src.shape[1])
            y, x = (h - side) // 2, (w - side) // 2
            clip[:, y:y + side, x:x + side] = src[fit_length(len(src), frames, "pingpong").numpy(), :side, :side]
            for enc in encoders:
                for preset in presets:
                    out = Path(tmp) / f"{h}_{enc}_{preset}.mp4"
                    t = time.perf_counter()
                    write_video(out, (clip[i:i + 32] for i in range(0, frames, 32)), 25, preset=preset,
                                encoder=enc)
                    fps = frames / (time.perf_counter() - t)
                    back = read_frames(out).astype(np.float64)
                    psnr = 10 * np.log10(255 ** 2 / np.mean((back - clip) ** 2))
                    print(f"{f'{w}x{h}':>10} {enc:>10} {preset:>9} {fps:>9.1f} {out.stat().st_size // 1024:>8d} "
                          f"{psnr:>8.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--encode", action="store_true", help="the encoder table instead of the decoding memory")
    ap.add_argument("--height", type=int, nargs="+", default=[720])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--presets", nargs="+", default=["ultrafast", "veryfast", "medium", "slow"])
    args = ap.parse_args()
    if args.encode:
        encode_table(args.height, args.frames, args.presets)
        return
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.minutes:
        clip = out / f"synthetic_720p_{m:g}min_{args.fps}fps.mp4"
        if not clip.exists():
            t = time.perf_counter()
            make_clip(clip, m, args.fps)
            print(f"made {clip.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        res = subprocess.run([sys.executable, "-c", CHILD, str(clip)], capture_output=True, text=True, check=True,
                             cwd=ROOT)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append((m, r["frames"], r["frames"] / r["seconds"], r["peak_rss_mb"]))
    print(f"{'minutes':>8} {'frames':>8} {'decode fps':>11} {'peak RSS MB':>12}")
    for m, n, fps, rss in rows:
        print(f"{m:>8g} {n:>8d} {fps:>11.1f} {rss:>12.1f}")
    if len(rows) > 1:
        print(f"peak memory ratio longest/shortest: {rows[-1][3] / rows[0][3]:.3f}")


if __name__ == "__main__":
    main()
