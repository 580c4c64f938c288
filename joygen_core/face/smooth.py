"""Temporal smoothing of detected boxes and points: removes detector jitter without lag or trailing.

A One Euro filter (Casiez et al. 2012) adapts its cut-off to the speed: heavy smoothing while the face
stands still, almost none while it moves. Run forward and backward and averaged, it is zero-phase:
a still face stays exactly where it is, and a moving face is not trailed. Speeds are measured in
face sizes per second, so the settings do not depend on the resolution. Each run of frames with a
face is smoothed on its own (frames without a face break the run).
"""

from __future__ import annotations

import math

import torch


def _alpha(cutoff: torch.Tensor | float, dt: float) -> torch.Tensor | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def _one_euro(x: torch.Tensor, scale: torch.Tensor, dt: float, min_cutoff: float, beta: float,
              d_cutoff: float) -> torch.Tensor:
    """Causal One Euro over the first axis of x [T,K]; speeds divided by ``scale`` [T]."""
    out = torch.empty_like(x)
    out[0] = x[0]
    dx = torch.zeros_like(x[0])
    a_d = _alpha(d_cutoff, dt)
    for t in range(1, x.shape[0]):  # a recursive filter: sequential in time, vectorised over points
        raw_speed = (x[t] - out[t - 1]) / dt
        dx = a_d * raw_speed + (1 - a_d) * dx
        cutoff = min_cutoff + beta * dx.abs() / scale[t]
        a = _alpha(cutoff, dt)
        out[t] = a * x[t] + (1 - a) * out[t - 1]
    return out


def _zero_phase(seg: torch.Tensor, sc: torch.Tensor, dt: float, *args: float) -> torch.Tensor:
    """Forward + backward One Euro, averaged, over a run padded by odd reflection at both ends (as
    scipy's filtfilt): the filters' start-up transients fall in the padding and a steady motion is kept."""
    n = seg.shape[0]
    p = min(n - 1, 16)
    head = 2 * seg[:1] - seg[1:p + 1].flip(0)
    tail = 2 * seg[-1:] - seg[-p - 1:-1].flip(0)
    x = torch.cat([head, seg, tail])
    s = torch.cat([sc[1:p + 1].flip(0), sc, sc[-p - 1:-1].flip(0)])
    fwd = _one_euro(x, s, dt, *args)
    bwd = _one_euro(x.flip(0), s.flip(0), dt, *args).flip(0)
    return ((fwd + bwd) / 2)[p:p + n]


def smooth_points(points: torch.Tensor, found: torch.Tensor, size: torch.Tensor, fps: float = 25.0, *,
                  min_cutoff: float = 1.0, beta: float = 2.0, d_cutoff: float = 1.0) -> torch.Tensor:
    """Zero-phase One Euro smoothing of per-frame points [T,K,2] (any K: box corners, five points).

    ``found`` [T] bool marks frames holding a face; ``size`` [T] is the face size in pixels (speeds
    are normalised by it). ``min_cutoff`` (Hz) sets the smoothing of a still face (lower: smoother),
    ``beta`` how quickly it gives way to motion (higher: less lag). Frames without a face are returned
    unchanged.
    """
    t_len = points.shape[0]
    out = points.clone()
    if t_len < 3:
        return out
    dt = 1.0 / float(fps)
    x = points.reshape(t_len, -1).to(torch.float64)
    scale = size.to(torch.float64).clamp(min=1.0)[:, None]
    f = found.bool().tolist()
    start = 0
    while start < t_len:  # runs of consecutive frames with a face
        if not f[start]:
            start += 1
            continue
        stop = start
        while stop < t_len and f[stop]:
            stop += 1
        if stop - start >= 3:
            out[start:stop] = _zero_phase(x[start:stop], scale[start:stop], dt, min_cutoff, beta, d_cutoff
                                          ).reshape(stop - start, *points.shape[1:]).to(points.dtype)
        start = stop
    return out
