"""Decoding memory vs video length: peak RSS while streaming a 720p video frame by frame.

Usage: python bench/bench_video.py [--minutes 1 10] [--fps 25]
Makes synthetic 720p clips once (x264 ultrafast, in bench/out/), then decodes each in a fresh
process with iter_frames and reports peak resident memory and decode speed. Flat memory means
the decoder streams: a 10-minute video must not need more than a 1-minute one.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--fps", type=int, default=25)
    args = ap.parse_args()
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
