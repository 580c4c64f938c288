"""Audio to motion: per-frame 3DMM expression coefficients from speech (Real3DPortrait's flow VAE)."""

from .types import Motion

__all__ = ["Motion"]
