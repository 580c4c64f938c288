"""Overlapping analysis windows for long audio, and the per-video-frame window of audio features.

Whisper's encoder sees exactly 30 s (3000 mel frames -> 1500 feature rows). The official MuseTalk/JoyGen code
cuts long audio into back-to-back 30 s pieces, so features jump at 30 s, 60 s, ...  Here windows overlap
and each feature row is a weighted mean over the windows holding it, the weight growing with the row's
distance from the window's cut edges (edges at the start or end of the audio are not cuts). Audio of 30 s
or less is one window: identical to the official features.
"""

from __future__ import annotations

import math

import torch


def plan_windows(length: int, size: int = 3000, hop: int = 2000, align: int = 2) -> list[tuple[int, int]]:
    """(start, end) windows over ``length`` frames: ``size`` long, starts at most ``hop`` apart, multiples of
    ``align``, the last ending at ``length`` (so no window is padded unless the whole input is shorter)."""
    if length <= size:
        return [(0, max(int(length), 0))]
    if not 0 < hop <= size:
        raise ValueError(f"hop must be in (0, {size}]; got {hop}")
    last = length - size
    count = math.ceil(last / hop) + 1
    starts = sorted({int(round(last * k / (count - 1) / align)) * align for k in range(count)})
    starts = [min(s, last - last % align) for s in starts]
    if starts[-1] + size < length:  # alignment moved the last window back: add one that reaches the end
        starts.append(starts[-1] + align)
    return [(s, min(s + size, length)) for s in sorted(set(starts))]


def blend_weights(windows: list[tuple[int, int]], length: int, scale: int = 1) -> list[torch.Tensor]:
    """Per-window weights over its rows (``scale`` input frames per row), normalised to sum to 1 per row.

    A row's weight in a window is its distance (in rows) to the nearest cut edge of that window, plus a
    small floor so every covered row has weight; it rises from ~0 at a cut, so the blend is continuous.
    """
    n_rows = length // scale
    raw = []
    total = torch.zeros(n_rows, dtype=torch.float64)
    for s, e in windows:
        r0, r1 = s // scale, min(e // scale, n_rows)
        t = torch.arange(r0, r1, dtype=torch.float64)
        left = t - r0 + 0.5 if r0 > 0 else torch.full_like(t, math.inf)
        right = r1 - t - 0.5 if r1 < n_rows else torch.full_like(t, math.inf)
        w = torch.minimum(left, right).clamp(max=1e9) + 1e-6
        raw.append(w)
        total[r0:r1] += w
    return [(w / total[s // scale: s // scale + w.shape[0]]).to(torch.float32) for (s, _), w in zip(windows, raw)]


def frame_centres(num_frames: int, fps: float, rate: float = 50.0) -> torch.Tensor:
    """Feature row at the centre of each video frame: official ``int(i * 50 / fps)`` in float64.

    Same IEEE operations as the official Python (multiply, then divide), so indices match it exactly.
    """
    i = torch.arange(int(num_frames), dtype=torch.float64)
    return torch.floor(i * float(rate) / float(fps)).to(torch.long)


def frame_windows(num_frames: int, fps: float, length: int, before: int = 4, after: int = 5) -> torch.Tensor:
    """Row indices [num_frames, before+after+1] around each frame's centre, clamped to ``[0, length-1]``.

    Official MuseTalk ``get_sliced_feature`` with audio_feat_length [2,2]: rows ``c-4 .. c+5``.
    """
    c = frame_centres(num_frames, fps)
    offsets = torch.arange(-before, after + 1, dtype=torch.long)
    return (c[:, None] + offsets[None]).clamp(0, max(int(length) - 1, 0))
