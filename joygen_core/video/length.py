"""Length fitting: re-time a run of frames (and its face track) to a target length, e.g. the audio's."""

from __future__ import annotations

import torch

MODES = ("pingpong", "loop", "trim", "hold")


def fit_length(n_in: int, n_out: int, mode: str = "pingpong") -> torch.Tensor:
    """Source frame index for each of ``n_out`` output frames, from ``n_in`` input frames.

    - ``pingpong`` (official default): 0,1,..,n-1,n-1,..,1,0,0,1,.. (official: frames + frames[::-1],
      cycled, so each turning frame shows twice) and the motion never jumps.
    - ``loop``: 0..n-1, 0..n-1, ...
    - ``trim``: the first min(n_in, n_out) frames only (the output may be shorter than asked).
    - ``hold``: 0..n-1 then the last frame repeated.
    When ``n_out <= n_in`` every mode keeps the first ``n_out`` frames.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown length mode {mode!r}; choose one of {', '.join(MODES)}.")
    if n_in <= 0:
        raise ValueError("Cannot fit the length of an empty clip (0 frames).")
    if n_out < 0:
        raise ValueError(f"Target length must be >= 0; got {n_out}.")
    i = torch.arange(n_out)
    if n_out <= n_in or mode == "trim":
        return i[: min(n_in, n_out)]
    if mode == "loop":
        return i % n_in
    if mode == "hold":
        return i.clamp(max=n_in - 1)
    r = i % (2 * n_in)
    return torch.where(r < n_in, r, 2 * n_in - 1 - r)


def frames_for_duration(duration_s: float, fps: float) -> int:
    """Number of frames covering ``duration_s`` at ``fps`` (rounded to nearest, at least 1)."""
    return max(1, int(round(duration_s * float(fps))))
