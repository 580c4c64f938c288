"""Blending cost per frame: BiSeNet parsing masks and the paste, with the full-size random-weight parser (by hand).

    python bench/bench_blend.py [--frames 8] [--device cpu] [--threads N] [--sizes 360x640:160 720x1280:320]

Each size is frame HxW : face box side. Columns: the parser network alone on [B,3,512,512], the whole
``blend_masks`` (crop + PIL-exact resizes + network + box/lower-half + cv2-exact blur), ``paste_faces``
of 256x256 faces (cv2-exact resize + PIL paste arithmetic), and ``landmark_mask``; ms per frame.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def timed(device: torch.device, fn, *args) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sizes", nargs="+", default=["360x640:160", "720x1280:320", "1080x1920:480"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    from factory import make_models_folder
    from joygen_core.edit.blend import blend_masks, landmark_mask, paste_faces
    from joygen_core.edit.parsing import load_face_parser

    with tempfile.TemporaryDirectory() as tmp:
        root = make_models_folder(Path(tmp), only=["parsing"])
        parser, t_load = timed(device, load_face_parser, root / "face-parse-bisent/79999_iter.pth", device, dtype)
    print(f"parser load {t_load * 1000:.0f} ms ({device}, {dtype})")
    rng = np.random.default_rng(0)
    b = args.frames
    rows = [("frame", "box", "network", "blend_masks", "paste_faces", "landmark_mask")]
    for spec in args.sizes:
        hw, side = spec.split(":")
        h, w = (int(v) for v in hw.split("x"))
        side = int(side)
        frames = torch.from_numpy(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8))
        x0 = torch.from_numpy(rng.integers(0, max(w - side, 1), b))
        y0 = torch.from_numpy(rng.integers(0, max(h - side, 1), b))
        boxes = torch.stack([x0, y0, x0 + side, y0 + side + side // 8], 1)
        faces = torch.from_numpy(rng.integers(0, 256, (b, 256, 256, 3), dtype=np.uint8))
        lm = torch.rand(b, 68, 2) * side + boxes[:, None, :2].float()
        x = torch.randn(b, 3, 512, 512, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            parser(x[:1])
            _, t_net = timed(device, parser, x)
        masks, t_mask = timed(device, blend_masks, parser, frames, boxes)
        _, t_paste = timed(device, paste_faces, frames, faces, boxes, masks)
        _, t_lm = timed(device, landmark_mask, lm, boxes, (h, w))
        rows.append((f"{h}x{w}", str(side), *(f"{t / b * 1000:.0f} ms" for t in (t_net, t_mask, t_paste, t_lm))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(wd) for c, wd in zip(r, widths)))


if __name__ == "__main__":
    main()
