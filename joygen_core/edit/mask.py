"""The region the editor regenerates, in frame coordinates: the lower half of each frame's face box.

Official: the UNet sees the face crop with its lower half black and redraws it, so what can change in a
frame is the lower half of the (integer) face box; the blend mask then narrows that to the face skin.
"""

from __future__ import annotations

import torch


def regenerated_region(boxes: torch.Tensor, detected: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """MASK [T,H,W] float: 1 inside the lower half of each detected frame's face box, 0 elsewhere.

    The half is split where the 256 crop is split: crop row 128 maps to box row ``h * 128 / 256``.
    """
    H, W = frame_size
    b = boxes.long()
    x1, y1, x2, y2 = b.unbind(1)
    ymid = y1 + (y2 - y1) // 2
    ys = torch.arange(H)[None, :, None]
    xs = torch.arange(W)[None, None, :]
    inside = ((ys >= ymid[:, None, None]) & (ys < y2[:, None, None])
              & (xs >= x1[:, None, None]) & (xs < x2[:, None, None]))
    return (inside & detected.bool()[:, None, None]).float()
