"""Training augmentations of the mouth depth (JoyGen paper, section 4.5).

The paper displaces the mouth depth at random by about +-2% of the crop (+-5 px at 256) so the
model does not copy the depth's exact outline, and omits the depth in 50% of samples so the model
also works from audio alone (an omitted depth is an all-black image, as at inference without depth).
The public training code calls a displacement function that does not exist and swallows the error,
so the released training never saw depth; here both augmentations exist and are batched and seeded.
"""

from __future__ import annotations

import torch


def displace_mouth_depth(depth: torch.Tensor, max_fraction: float = 0.02,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each sample's depth by a random whole-pixel offset, zero-filling what comes in.

    ``depth`` [B,H,W] or [B,C,H,W]; offsets are drawn uniformly from ``-m..m`` pixels per axis with
    ``m = round(max_fraction * W)`` (x) and ``round(max_fraction * H)`` (y) (5 px at 256).
    Returns the shifted depth and the offsets [B,2] (dx, dy; positive moves right / down).
    """
    squeeze = depth.dim() == 3
    x = depth[:, None] if squeeze else depth
    B, C, H, W = x.shape
    mx, my = round(max_fraction * W), round(max_fraction * H)
    dx = torch.randint(-mx, mx + 1, (B,), generator=generator) if mx else torch.zeros(B, dtype=torch.long)
    dy = torch.randint(-my, my + 1, (B,), generator=generator) if my else torch.zeros(B, dtype=torch.long)
    dx, dy = dx.to(x.device), dy.to(x.device)
    src_x = torch.arange(W, device=x.device)[None, :] - dx[:, None]  # [B,W]
    src_y = torch.arange(H, device=x.device)[None, :] - dy[:, None]  # [B,H]
    ok = ((src_y >= 0) & (src_y < H))[:, :, None] & ((src_x >= 0) & (src_x < W))[:, None, :]  # [B,H,W]
    iy = src_y.clamp(0, H - 1)[:, None, :, None].expand(B, C, H, W)
    ix = src_x.clamp(0, W - 1)[:, None, None, :].expand(B, C, H, W)
    rows = x.gather(2, iy)
    out = rows.gather(3, ix) * ok[:, None].to(x.dtype)
    return (out[:, 0] if squeeze else out), torch.stack([dx, dy], dim=1)


def drop_depth(depth: torch.Tensor, fraction: float = 0.5, generator: torch.Generator | None = None,
               exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the depth of some samples by zeros (an all-black map: the 'audio only' input).

    Each sample is dropped with probability ``fraction``; with ``exact`` exactly ``round(fraction*B)``
    samples are dropped. Returns the depth and the kept mask [B] bool.
    """
    B = depth.shape[0]
    if exact:
        n_drop = round(fraction * B)
        order = torch.randperm(B, generator=generator)
        keep = torch.ones(B, dtype=torch.bool)
        keep[order[:n_drop]] = False
    else:
        keep = torch.rand(B, generator=generator) >= fraction
    keep = keep.to(depth.device)
    shape = (B,) + (1,) * (depth.dim() - 1)
    return depth * keep.view(shape).to(depth.dtype), keep
