"""Pillow's resize, reproduced on batched tensors to the pixel (the official pre-processing uses PIL).

Pillow (``Resample.c``): per output pixel, taps over ``center +- support`` where ``support`` is the filter's
support times ``max(in / out, 1)``; weights from the filter, normalised to sum 1, then for 8-bit images
turned into 22-bit fixed-point integers; the horizontal pass first, each pass rounded and clipped to uint8.
The operations are done in Pillow's order in float64, where every fixed-point sum is exact (below 2**53),
so crops and masks match PIL's integer results rather than approximate them.

Used by the face crop of the 3D reconstruction (:mod:`..face.align`, bicubic) and the face-parsing
mask (:mod:`..edit.parsing`, bilinear in, bicubic out).
"""

from __future__ import annotations

import torch

PRECISION_BITS = 22  # Pillow: 32 - 8 - 2
_HALF = float(1 << (PRECISION_BITS - 1))
_ONE = float(1 << PRECISION_BITS)
SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def pil_filter(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Pillow's triangle (bilinear) or bicubic (a = -0.5) filter, in the operation order of its C code."""
    x = x.abs()
    if kind == "bilinear":
        return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))
    if kind != "bicubic":
        raise ValueError(f"unknown PIL filter {kind!r}")
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def pil_taps(in_size: torch.Tensor, out_size: torch.Tensor, out_index: torch.Tensor, kind: str = "bicubic",
             fixed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's taps for output positions ``out_index`` [B,K] of a 1-D resize ``in_size -> out_size``.

    Sizes broadcast to [B,1]. Returns (source index [B,K,T] long, weight [B,K,T] float64): Pillow's
    normalised coefficients (``fixed``: its 22-bit integers). Taps past the input's end and output
    positions outside ``[0, out_size)`` have weight 0.
    """
    f64 = torch.float64
    in_size = torch.as_tensor(in_size).to(f64).reshape(-1, 1)
    out_size = torch.as_tensor(out_size).to(f64).reshape(-1, 1)
    scale = in_size / out_size.clamp(min=1.0)
    filterscale = scale.clamp(min=1.0)
    support = SUPPORT[kind] * filterscale
    ntaps = int(torch.ceil(support).max().item()) * 2 + 1
    center = (out_index.to(f64) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)  # C (int) cast, then clamp
    count = torch.minimum(torch.trunc(center + support + 0.5), in_size) - xmin
    ss = 1.0 / filterscale
    weights = []
    total = torch.zeros_like(center)
    for x in range(ntaps):  # a sequential sum, as Pillow accumulates ww
        w = pil_filter((x + xmin - center + 0.5) * ss, kind)
        w = torch.where(x < count, w, torch.zeros_like(w))
        weights.append(w)
        total = total + w
    k = torch.stack(weights, dim=-1)
    k = torch.where(total[..., None] != 0, k / total[..., None], k)
    if fixed:  # Pillow normalize_coeffs_8bpc: (int)(k * 2**22 +- 0.5)
        k = torch.trunc(k * _ONE + torch.where(k < 0, -0.5, 0.5))
    valid_out = (out_index >= 0) & (out_index.to(f64) < out_size)
    k = k * valid_out[..., None]
    src = xmin.long()[..., None] + torch.arange(ntaps)
    return src, k


def pil_matrix(in_size: torch.Tensor, out_size: torch.Tensor, n_out: int, n_in: int, kind: str) -> torch.Tensor:
    """Pillow's 1-D resize ``in_size -> out_size`` (per frame, [B]) as dense fixed-point rows [B,n_out,n_in].

    Entry (o, k) is Pillow's coefficient of input pixel k for output pixel o; rows past ``out_size`` and
    columns past ``in_size`` are 0.
    """
    out_index = torch.arange(n_out).expand(torch.as_tensor(in_size).reshape(-1).shape[0], n_out)
    src, k = pil_taps(in_size, out_size, out_index, kind, fixed=True)
    width = n_in + src.shape[-1]
    dense = torch.zeros(src.shape[0], n_out, width, dtype=torch.float64)
    # zero-weight taps (past a row's end or a frame's out_size) may point anywhere: clamp them into the buffer
    return dense.scatter_add_(2, src.clamp(max=width - 1), k)[..., :n_in]


def clip8(x: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8 of a fixed-point sum: ``(sum + 2**21) >> 22``, clipped to 0..255."""
    return torch.floor((x + _HALF) / _ONE).clamp_(0, 255)


def resize_rows(img: torch.Tensor, my: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] uint8 values (any dtype) through [B,H,h] / [B,W,w] Pillow rows -> [B,C,H,W] float64.

    The horizontal pass first, rounded to uint8 before the vertical pass, as Pillow's ``ImagingResample``.
    """
    tmp = clip8(img.to(torch.float64) @ mx.transpose(1, 2)[:, None])
    return clip8(my[:, None] @ tmp)
