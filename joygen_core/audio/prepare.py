"""Driving audio -> the 16 kHz signals the models were fed, the way the official scripts make them.

The official scripts let the ffmpeg command line do it, and each model sees a different signal:

- Whisper (``whisper.load_audio``): ``ffmpeg -ac 1 -ar 16000 -f s16le``: channels downmixed, resampled,
  rounded to 16 bits -> :func:`to_mono_16k`.
- audio-to-motion (``save_wav16k``): ``ffmpeg -ar 16000`` to a 16-bit WAV with the channels kept; HuBERT
  reads its first channel, the pitch tracker (librosa) the mean of the channels -> :func:`to_motion_16k`.

Both run ffmpeg's own resampler and channel mixer (libswresample, through PyAV), so for any rate and
layout the samples are the official ones bit for bit, not a close resampling.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import MediaError

log = logging.getLogger(__name__)

TARGET_RATE = 16000
_BLOCK = 1 << 16  # input samples per frame handed to the resampler


def _layout(channels: int) -> str:
    """ffmpeg's default layout for a channel count (what it assumes for a WAV without a channel mask)."""
    import av

    return av.AudioLayout(f"{int(channels)}c").name


def swr_resample(waveform: torch.Tensor, sample_rate: int, target_rate: int, *, channels: int | None = None,
                 pcm16: bool = False) -> torch.Tensor:
    """[C, T] float -> [C', T'] float32 at ``target_rate`` with ffmpeg's resampler (libswresample defaults).

    ``channels``: remixed to that many with ffmpeg's matrix (``-ac N``); ``None`` keeps them. ``pcm16``:
    rounded and clipped to 16-bit steps as ffmpeg's s16 output (values ``k / 32768``). Streamed in blocks.
    """
    import av

    wav = waveform.detach().to("cpu", torch.float32)
    n = int(wav.shape[1])
    in_layout = _layout(int(wav.shape[0]))
    out_channels = int(wav.shape[0]) if channels is None else int(channels)
    out_layout = _layout(out_channels)
    if n == 0:
        return torch.zeros((out_channels, 0))
    resampler = av.AudioResampler(format="s16" if pcm16 else "fltp", layout=out_layout, rate=int(target_rate))
    parts: list[np.ndarray] = []

    def take(frames) -> None:
        for f in frames:
            a = f.to_ndarray()
            if pcm16:  # packed s16: [1, T*C] interleaved
                a = a.reshape(-1, out_channels).T.astype(np.float32) / 32768.0
            parts.append(a)

    data = wav.numpy()
    for i in range(0, n, _BLOCK):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i:i + _BLOCK]), format="fltp",
                                           layout=in_layout)
        frame.sample_rate = int(sample_rate)
        frame.pts = i
        take(resampler.resample(frame))
    take(resampler.resample(None))
    if not parts:
        return torch.zeros((out_channels, 0))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32))


def finite_audio(waveform: torch.Tensor | np.ndarray, source: str = "The audio") -> torch.Tensor:
    """[C, T] samples with every NaN / inf sample made silence (0), float32; the input itself when all are finite.

    The one cleaning step both the models' signals and the output track go through. Some non-finite
    samples: one warning with their count. All of them non-finite: nothing usable is left, a
    :class:`MediaError` naming ``source`` (a file name, or what the samples are).
    """
    wav = torch.as_tensor(waveform).to(torch.float32)
    bad = ~torch.isfinite(wav)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return wav
    if n_bad == wav.numel():
        raise MediaError(f"{source} holds no usable audio: all {n_bad} of its samples are NaN or infinite. "
                         "Give another audio file (or export this one again).")
    log.warning("%s holds %d NaN/inf samples (of %d); they are replaced by silence.", source, n_bad, wav.numel())
    return torch.where(bad, torch.zeros_like(wav), wav)


def _checked(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """[T], [C,T] or [B,C,T] (first batch item) -> finite float32 [C, T] (:func:`finite_audio`)."""
    wav = torch.as_tensor(waveform)
    if wav.ndim == 3:
        wav = wav[0]
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise MediaError(f"Audio waveform must be [T], [C,T] or [B,C,T]; got shape {tuple(wav.shape)}.")
    if sample_rate is None or int(sample_rate) <= 0:
        raise MediaError(f"Audio sample rate must be a positive integer; got {sample_rate!r}.")
    return finite_audio(wav)


def to_mono_16k(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """Any waveform [T], [C,T] or [B,C,T] at any rate -> the official Whisper input, float32 [T].

    ffmpeg ``-ac 1 -ar 16000`` 16-bit samples scaled by 1/32768 (so within [-1, 1)). NaN and inf samples
    become silence first, so damaged audio cannot poison the features downstream.
    """
    return swr_resample(_checked(waveform, sample_rate), int(sample_rate), TARGET_RATE, channels=1, pcm16=True)[0]


def to_motion_16k(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """Any waveform at any rate -> the official audio-to-motion input, float32 [C, T] (channels kept).

    ffmpeg ``-ar 16000`` to a 16-bit WAV; :func:`joygen_core.motion.a2m.audio_to_motion` gives HuBERT the
    first channel and the pitch tracker the channels' mean, as the official readers do.
    """
    return swr_resample(_checked(waveform, sample_rate), int(sample_rate), TARGET_RATE, pcm16=True)
