"""Pitch contour for audio-to-motion with Praat's autocorrelation method (praat-parselmouth).

Official (Real3DPortrait ``extract_mel_f0.py``): the 16 kHz clip is right-padded with zeros to
``(N//320 + 1) * 320`` samples, Praat ``to_pitch_ac(time_step=0.02, voicing_threshold=0.6, pitch_floor=80,
pitch_ceiling=750)`` gives one value per 20 ms (0 = unvoiced), and the contour is fitted to the mel frame
count of a centre-less 512/320 STFT (``1 + (N-512)//320``) by holding its last value. The coarse 256-bin
quantisation happens inside the model (:func:`joygen_core.motion.a2m.f0_to_coarse`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 320
FFT = 512


def mel_frames(num_samples: int) -> int:
    """Frames of the official centre-less STFT (n_fft 512, hop 320) the contour is fitted to."""
    return max(1 + (int(num_samples) - FFT) // HOP, 0) if num_samples >= FFT else 0


def pitch_contour(audio16k: torch.Tensor) -> torch.Tensor:
    """16 kHz mono [N] -> pitch in Hz [mel_frames(N)] float32 (0 where unvoiced)."""
    import parselmouth

    n = int(audio16k.shape[0])
    target = mel_frames(n)
    if target == 0:
        return torch.zeros(0)
    wav = np.zeros((n // HOP + 1) * HOP)  # official librosa_pad_lr(..., pad_sides=1): zeros on the right
    src = audio16k.detach().cpu()
    wav[:n] = (src if src.dtype in (torch.float32, torch.float64) else src.float()).numpy()
    try:
        f0 = parselmouth.Sound(wav, SAMPLE_RATE).to_pitch_ac(
            time_step=HOP / SAMPLE_RATE, voicing_threshold=0.6, pitch_floor=80, pitch_ceiling=750
        ).selected_array["frequency"]
    except parselmouth.PraatError as exc:  # too short for an 80 Hz analysis window
        log.warning("Pitch analysis failed (%s); treating the audio as unvoiced.", exc)
        f0 = np.zeros(0)
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if f0.shape[0] == 0:
        f0 = np.zeros(1)
    if f0.shape[0] < target:  # official: repeat the last value
        f0 = np.concatenate([f0, np.full(target - f0.shape[0], f0[-1])])
    return torch.from_numpy(f0[:target].astype(np.float32))


def fit_to(f0: torch.Tensor, frames: int) -> torch.Tensor:
    """Official A2M input: the contour trimmed, or zero-padded (unvoiced), to the HuBERT frame count."""
    if f0.shape[0] >= frames:
        return f0[:frames]
    return torch.cat([f0, f0.new_zeros(frames - f0.shape[0])])
