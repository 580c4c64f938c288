"""Audio preparation shared by Whisper and HuBERT: any rate and channel count -> 16 kHz mono float32."""

from __future__ import annotations

import logging
from math import gcd

import numpy as np
import torch

from ..errors import MediaError

log = logging.getLogger(__name__)

TARGET_RATE = 16000


def resample(waveform: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """Polyphase resampling along the last axis (scipy's windowed FIR), float32 on the CPU."""
    if sample_rate == target_rate:
        return waveform.to(torch.float32)
    from scipy.signal import resample_poly

    g = gcd(int(sample_rate), int(target_rate))
    out = resample_poly(waveform.detach().cpu().numpy().astype(np.float64), target_rate // g, sample_rate // g, axis=-1)
    return torch.from_numpy(out.astype(np.float32))


def to_mono_16k(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """Any waveform [T], [C,T] or [B,C,T] (first batch item) at any rate -> mono 16 kHz float32 [T].

    Channels are averaged (a downmix; the official scripts take the first channel of what librosa
    loads, which librosa itself has already averaged to mono). NaN and inf samples become 0 and the
    result is clipped to [-1, 1], so damaged audio cannot poison the features downstream.
    """
    wav = torch.as_tensor(waveform)
    if wav.ndim == 3:
        wav = wav[0]
    if wav.ndim == 2:
        wav = wav.to(torch.float32).mean(dim=0)
    if wav.ndim != 1:
        raise MediaError(f"Audio waveform must be [T], [C,T] or [B,C,T]; got shape {tuple(wav.shape)}.")
    if sample_rate is None or int(sample_rate) <= 0:
        raise MediaError(f"Audio sample rate must be a positive integer; got {sample_rate!r}.")
    wav = wav.to(torch.float32)
    bad = ~torch.isfinite(wav)
    if bad.any():
        log.warning("Audio holds %d NaN/inf samples; they are replaced by silence.", int(bad.sum()))
        wav = torch.where(bad, torch.zeros_like(wav), wav)
    out = resample(wav, int(sample_rate), TARGET_RATE)
    return out.clamp(-1.0, 1.0) if out is wav else out.clamp_(-1.0, 1.0)  # never clip the caller's tensor
