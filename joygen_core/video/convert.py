"""Conversions between our arrays and ComfyUI's edge types.

IMAGE: float [B,H,W,C] in 0..1. MASK: float [B,H,W]. AUDIO: {'waveform': [B,C,T], 'sample_rate': int}.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MediaError
from .io import AudioClip


def image_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] float 0..1 (C = 1, 3 or 4) -> uint8 RGB [B,H,W,3] (alpha dropped, gray expanded)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise MediaError(f"Expected an IMAGE batch [B,H,W,C]; got shape {tuple(image.shape)}.")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(*image.shape[:3], 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise MediaError(f"IMAGE must have 1, 3 or 4 channels; got {c}.")
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def uint8_to_image(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] -> IMAGE float32 [B,H,W,3] in 0..1."""
    t = torch.as_tensor(frames)
    if t.dtype != torch.uint8:
        raise MediaError(f"Expected uint8 frames; got {t.dtype}.")
    return t.to(torch.float32).div_(255.0)


def audio_from_comfy(audio: dict) -> AudioClip:
    """ComfyUI AUDIO -> AudioClip of its first batch item."""
    try:
        wav, rate = audio["waveform"], int(audio["sample_rate"])
    except (KeyError, TypeError) as exc:
        raise MediaError("Expected a ComfyUI AUDIO dict with 'waveform' and 'sample_rate'.") from exc
    wav = torch.as_tensor(wav)
    if wav.ndim == 3:
        wav = wav[0]
    elif wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[-1] == 0:
        raise MediaError(f"The AUDIO input holds no samples (waveform shape {tuple(wav.shape)}).")
    return AudioClip(waveform=wav.detach().cpu().to(torch.float32), sample_rate=rate)


def audio_to_comfy(clip: AudioClip) -> dict:
    """AudioClip -> ComfyUI AUDIO (batch of one)."""
    return {"waveform": clip.waveform[None].to(torch.float32), "sample_rate": int(clip.sample_rate)}
