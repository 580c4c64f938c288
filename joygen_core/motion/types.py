"""The expression coefficients the audio drives: one 64-d BFM expression vector per video frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Motion:
    """Per-frame BFM expression coefficients ``exp`` [T,64] (float32, CPU) at ``fps`` frames per second.

    ``exp`` replaces the ``exp`` slice (80:144) of each frame's 257 coefficients when the mouth depth is
    rendered. ``meta`` records how it was made (seed, temperature, mouth amplitude) for reproducibility.
    """

    exp: torch.Tensor
    fps: float
    meta: dict | None = None

    def __post_init__(self) -> None:
        if self.exp.ndim != 2 or self.exp.shape[1] != 64:
            raise ValueError(f"Motion.exp must be [T,64]; got {tuple(self.exp.shape)}")

    def __len__(self) -> int:
        return int(self.exp.shape[0])

    def select(self, index: torch.Tensor) -> Motion:
        """The frames at ``index`` (a LongTensor from length fitting), same fps."""
        return Motion(self.exp[index], self.fps, dict(self.meta or {}))
