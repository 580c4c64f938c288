"""LSE-D / LSE-C: lip-sync error with the SyncNet of Wav2Lip's evaluation (syncnet_python, ``syncnet_v2.model``).

Conventions reproduced from the official evaluation (joonson/syncnet_python ``SyncNetInstance.evaluate``
as copied into Wav2Lip ``evaluation/scores_LSE``), so scores compare with published tables:

- video at 25 fps, audio as 16 kHz mono 16-bit PCM (the int16 sample values feed the MFCC, unscaled);
- audio features: MFCC with python_speech_features' defaults (25 ms frames every 10 ms -> 100 Hz,
  512-point FFT, 26 mel filters, 13 coefficients, lifter 22, coefficient 0 replaced by the log frame
  energy, pre-emphasis 0.97), computed here in torch;
- face crops 224x224 in BGR channel order, pixel values 0-255 (cv2.imread), unnormalised;
- window ``i``: video frames ``i..i+4`` against MFCC frames ``4i..4i+19``; ``min(frames, samples // 640) - 5``
  windows (the official count, one short of the possible maximum);
- for each window the distance to the audio embeddings at offsets -15..+15 (``vshift`` 15; audio
  zero-padded at both ends, as the official pads its embedding sequence), ``||v - a + 1e-6||``;
  averaged over windows, LSE-D is the minimum of that curve, LSE-C its median minus the minimum, and
  the AV offset ``vshift - argmin`` (positive: the lips lag the sound).

The embedding network (:class:`SyncNet`) is kept apart from the distance / score computation
(:func:`sync_distances`, :func:`sync_scores`), which takes any embeddings, so it is testable exactly.
Face crops (:func:`syncnet_face_crops`) follow the official pipeline's geometry, but from our MTCNN
boxes (:mod:`joygen_core.face.detect`) rather than the S3FD detector the official pipeline runs, and
frames are not re-encoded on the way (the official dumps JPEG frames and writes the crops to an XVID AVI
before scoring them), so scores differ from the official ones by that detector and that compression.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..errors import MediaError, ModelFileError
from ..weights import check_state_dict, load_checkpoint

log = logging.getLogger(__name__)

WEIGHTS_NAME = "syncnet_v2.model"
WEIGHTS_SOURCE = "joonson/syncnet_python download_model.sh (the SyncNet used by Wav2Lip's evaluation)"
SAMPLE_RATE = 16000
FPS = 25
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps video
VIDEO_WINDOW = 5
AUDIO_WINDOW = 20
FACE_SIZE = 224
VSHIFT = 15
EMBED_DIM = 1024
CROP_SCALE = 0.40  # official run_pipeline --crop_scale
CROP_PAD_VALUE = 110  # official pad colour around the frame
SMOOTH_KERNEL = 13  # official median filter over box size and centre


# ------------------------------------------------------------------------------------------ the network


def _conv_bn(conv: nn.Module, bn: nn.Module, pool: nn.Module | None = None) -> list[nn.Module]:
    return [conv, bn, nn.ReLU()] + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """SyncNet v2 (official class ``S``): an audio tower on MFCC [N,1,13,20] and a lip tower on five
    stacked BGR face crops [N,3,5,224,224] (0-255), both mapped to 1024-d embeddings.

    Layer indices inside the four ``nn.Sequential`` attributes are the official ones, so the file's
    keys (``netcnnaud.0.weight`` ... ``netfclip.3.bias``) load unchanged.
    """

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        c2, b2, c3, b3 = nn.Conv2d, nn.BatchNorm2d, nn.Conv3d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_bn(c2(1, 64, 3, 1, 1), b2(64), nn.MaxPool2d(1, 1)),
            *_conv_bn(c2(64, 192, 3, 1, 1), b2(192), nn.MaxPool2d(3, (1, 2))),
            *_conv_bn(c2(192, 384, 3, padding=1), b2(384)),
            *_conv_bn(c2(384, 256, 3, padding=1), b2(256)),
            *_conv_bn(c2(256, 256, 3, padding=1), b2(256), nn.MaxPool2d(3, 2)),
            *_conv_bn(c2(256, 512, (5, 4)), b2(512)),
        )
        self.netcnnlip = nn.Sequential(
            *_conv_bn(c3(3, 96, (5, 7, 7), (1, 2, 2)), b3(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3(256),
                      nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256)),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3(256), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(c3(256, 512, (1, 6, 6)), b3(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """MFCC windows [N,1,13,20] -> [N,1024] (official ``forward_aud``)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def embed_video(self, clips: torch.Tensor) -> torch.Tensor:
        """BGR 0-255 face clips [N,3,5,224,224] -> [N,1024] (official ``forward_lip``)."""
        return self.netfclip(self.netcnnlip(clips).flatten(1))


class SyncEmbedder(Protocol):
    """What the score computation needs from a model (a :class:`SyncNet`, or a stand-in in tests)."""

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor: ...

    def embed_video(self, clips: torch.Tensor) -> torch.Tensor: ...


def load_syncnet(path: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> SyncNet:
    """SyncNet with the weights of ``syncnet_v2.model`` (a plain state dict, checked strictly), in eval mode.

    BatchNorm ``num_batches_tracked`` counters may be absent (files saved before PyTorch 0.4).
    """
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} is not a state dict of tensors; expected {WEIGHTS_NAME} from {WEIGHTS_SOURCE}.")
    if any(k.startswith("__S__.") for k in state):  # saved from a SyncNetInstance wrapper
        state = {k.removeprefix("__S__."): v for k, v in state.items()}
    model = SyncNet()
    full = dict(state)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in full:
            full[key] = value
    check_state_dict(full, model, path, what=f"SyncNet ({WEIGHTS_NAME}, from {WEIGHTS_SOURCE})")
    model.load_state_dict(full, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ audio front end


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_filters: int = 26, n_fft: int = 512, sample_rate: int = SAMPLE_RATE,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Triangular mel filters [n_filters, n_fft//2+1] on integer FFT bins (python_speech_features'
    ``get_filterbanks``: edges at ``floor((n_fft+1) * hz / sample_rate)``, unnormalised triangles)."""
    mels = torch.linspace(float(_hz_to_mel(torch.tensor(0.0, dtype=torch.float64))),
                          float(_hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))), n_filters + 2,
                          dtype=torch.float64)
    edges = torch.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
    rise = torch.where((k >= lo) & (k < mid), (k - lo) / (mid - lo).clamp(min=1), torch.zeros(()))
    fall = torch.where((k >= mid) & (k < hi), (hi - k) / (hi - mid).clamp(min=1), torch.zeros(()))
    return (rise + fall).to(dtype)


def _dct_ortho(n_in: int, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal DCT-II matrix [n_in, n_out] (scipy ``dct(type=2, norm='ortho')``, first n_out terms)."""
    n = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    m[:, 0] /= math.sqrt(2.0)
    return m.to(dtype)


def speech_mfcc(samples: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_ceps: int = 13) -> torch.Tensor:
    """MFCC [..., 13, M] at 100 Hz of a waveform [..., S] (python_speech_features ``mfcc`` defaults).

    ``samples`` are in the scale the official reads from a 16-bit WAV (int16 values, see :func:`pcm16`);
    the result is float64 (as the official, which casts to float32 only at the network). Frames are
    25 ms every 10 ms, the last zero-padded: ``M = 1 + ceil((S - 400) / 160)`` at 16 kHz (1 when S <= 400).
    """
    x = torch.as_tensor(samples).to(torch.float64)
    frame_len = _round_half_up(0.025 * sample_rate)
    step = _round_half_up(0.01 * sample_rate)
    n_fft = 512
    s = x.shape[-1]
    if s == 0:
        raise MediaError("The audio holds no samples; cannot compute MFCC features.")
    x = torch.cat([x[..., :1], x[..., 1:] - 0.97 * x[..., :-1]], dim=-1)
    n_frames = 1 if s <= frame_len else 1 + math.ceil((s - frame_len) / step)
    x = torch.nn.functional.pad(x, (0, (n_frames - 1) * step + frame_len - s))
    frames = x.unfold(-1, frame_len, step)  # [..., M, frame_len]
    if frame_len > n_fft:
        frames = frames[..., :n_fft]  # numpy's rfft(frames, 512) truncates longer frames
    power = torch.fft.rfft(frames, n=n_fft).abs().square() / n_fft
    tiny = torch.finfo(torch.float64).eps
    energy = power.sum(-1)
    energy = torch.where(energy == 0, torch.full_like(energy, tiny), energy)
    bands = power @ mel_filterbank(26, n_fft, sample_rate).T
    bands = torch.where(bands == 0, torch.full_like(bands, tiny), bands)
    ceps = torch.log(bands) @ _dct_ortho(26, n_ceps, torch.float64)
    ceps = ceps * (1 + 11.0 * torch.sin(math.pi * torch.arange(n_ceps, dtype=torch.float64) / 22))
    ceps[..., 0] = torch.log(energy)
    return ceps.transpose(-1, -2)


def pcm16(waveform: torch.Tensor) -> torch.Tensor:
    """Float audio in [-1, 1] -> the int16 sample values (as float64) of a 16-bit PCM WAV, as ffmpeg
    writes them (``round(x * 32768)`` clipped to the int16 range)."""
    return torch.round(torch.as_tensor(waveform).to(torch.float64) * 32768.0).clamp(-32768, 32767)


# ------------------------------------------------------------------------------------------ windows


def window_count(n_frames: int, n_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """Number of 5-frame windows the official scores: ``min(frames, samples // 640) - 5``."""
    return min(int(n_frames), int(n_samples) // (sample_rate // fps)) - VIDEO_WINDOW


def audio_windows(mfcc: torch.Tensor, n: int) -> torch.Tensor:
    """MFCC [13, M] -> windows [n, 1, 13, 20], window ``i`` = MFCC frames ``4i .. 4i+19`` (a view)."""
    need = MFCC_PER_FRAME * (n - 1) + AUDIO_WINDOW
    if n <= 0 or mfcc.shape[-1] < need:
        raise MediaError(f"Audio too short for {n} SyncNet windows: {mfcc.shape[-1]} MFCC frames, need {need}.")
    return mfcc[:, :need].unfold(1, AUDIO_WINDOW, MFCC_PER_FRAME).transpose(0, 1).unsqueeze(1)


def video_windows(faces: torch.Tensor, n: int) -> torch.Tensor:
    """Face crops [T, 3, H, W] -> clips [n, 3, 5, H, W], clip ``i`` = frames ``i .. i+4`` (a view)."""
    if n <= 0 or faces.shape[0] < n + VIDEO_WINDOW - 1:
        raise MediaError(f"Video too short for {n} SyncNet windows: {faces.shape[0]} frames.")
    return faces[:n + VIDEO_WINDOW - 1].unfold(0, VIDEO_WINDOW, 1).permute(0, 1, 4, 2, 3)


# ------------------------------------------------------------------------------------------ the metric


@dataclass(frozen=True)
class SyncScores:
    """One clip's sync scores: ``min_dist`` is LSE-D, ``confidence`` LSE-C, ``offset`` the AV offset in
    frames (positive: the lips lag the sound), ``mean_dists`` the distance per offset -vshift..+vshift
    (index ``j`` is offset ``vshift - j``, the official order), ``windows`` how many windows were averaged."""

    offset: int
    min_dist: float
    confidence: float
    mean_dists: torch.Tensor
    windows: int


def sync_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """Distances [N, 2*vshift+1]: ``d[i, j] = ||v_i - a_(i + j - vshift) + 1e-6||``, with ``a`` zero outside
    0..N-1 (the official ``calc_pdist``: zero padding and ``pairwise_distance``'s eps)."""
    if video_emb.shape != audio_emb.shape or video_emb.ndim != 2:
        raise ValueError(f"embeddings must both be [N, D]; got {tuple(video_emb.shape)} and {tuple(audio_emb.shape)}")
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, 2 * vshift + 1, 1)  # [N, D, 2*vshift+1]: shifted[i, :, j] = padded[i + j]
    return torch.linalg.vector_norm(video_emb.unsqueeze(-1) - shifted + 1e-6, dim=1)


def sync_scores(dists: torch.Tensor, vshift: int = VSHIFT) -> SyncScores:
    """LSE-D, LSE-C and the offset from per-window distances [N, 2*vshift+1] (official ``evaluate``)."""
    mean = dists.mean(0)
    minval, minidx = torch.min(mean, 0)  # first index on ties, as the official
    conf = torch.median(mean) - minval  # torch's lower median, as the official (31 values: the exact one)
    return SyncScores(offset=vshift - int(minidx), min_dist=float(minval), confidence=float(conf),
                      mean_dists=mean.detach().cpu(), windows=int(dists.shape[0]))


@torch.inference_mode()
def embed_clip(model: SyncEmbedder, faces: torch.Tensor | np.ndarray, samples: torch.Tensor,
               batch_size: int = 20, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, progress: Callable[[int, int], None] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Video and audio embeddings [n, D] (float32, CPU) of one clip; ``progress(done, n)`` after each batch.

    ``faces``: RGB uint8 face crops [T, 224, 224, 3] at 25 fps (flipped to the BGR order the official
    reads with cv2); ``samples``: 16 kHz mono audio in int16 scale (:func:`pcm16`). ``batch_size``
    windows per forward pass (official 20).
    """
    faces = torch.as_tensor(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != torch.uint8:
        raise ValueError(f"faces must be uint8 RGB [T,H,W,3]; got {faces.dtype} {tuple(faces.shape)}")
    samples = torch.as_tensor(samples)
    n = window_count(faces.shape[0], samples.shape[-1])
    if n <= 0:
        seconds = samples.shape[-1] / SAMPLE_RATE
        raise MediaError(f"Clip too short for SyncNet: {faces.shape[0]} frames and {seconds:.2f} s of audio; it "
                         f"needs more than {VIDEO_WINDOW} frames (0.2 s) of both.")
    if device is None:
        p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = p.device if p is not None else "cpu"
    bgr = faces.flip(-1).permute(0, 3, 1, 2)  # [T,3,H,W] uint8; cast per batch to keep memory at one batch
    clips = video_windows(bgr, n)
    mfcc = audio_windows(speech_mfcc(samples), n)
    v, a = [], []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        v.append(model.embed_video(clips[start:stop].to(device=device, dtype=dtype)).float().cpu())
        a.append(model.embed_audio(mfcc[start:stop].to(device=device, dtype=dtype)).float().cpu())
        if progress is not None:
            progress(stop, n)
    return torch.cat(v), torch.cat(a)


def clip_sync_scores(model: SyncEmbedder, faces: torch.Tensor | np.ndarray, samples: torch.Tensor,
                     vshift: int = VSHIFT, batch_size: int = 20, device: torch.device | str | None = None
                     ) -> SyncScores:
    """LSE-D / LSE-C / offset of one clip of face crops and its audio (see :func:`embed_clip`)."""
    v, a = embed_clip(model, faces, samples, batch_size, device)
    return sync_scores(sync_distances(v, a, vshift), vshift)


# ------------------------------------------------------------------------------------------ face crops


def _medfilt(x: np.ndarray, kernel: int) -> np.ndarray:
    from scipy.signal import medfilt

    k = min(kernel, len(x) if len(x) % 2 else len(x) - 1)  # short clips: the largest odd kernel that fits
    return medfilt(x, kernel_size=k) if k > 1 else x


def syncnet_crop_boxes(boxes: torch.Tensor | np.ndarray, found: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-frame crop windows [T, 4] (row0, row1, col0, col1, integer, frame coordinates) from face boxes.

    Official geometry (run_pipeline ``crop_video``): half-size ``s = max(w, h) / 2`` and the box centre,
    each median-filtered over 13 frames; rows ``cy - s .. cy + 1.8 s``, columns ``cx - 1.4 s .. cx + 1.4 s``
    (crop_scale 0.4), truncated to integers as the official does in its padded frame. Frames without a
    face take boxes interpolated from their neighbours (the official interpolates its face tracks).
    """
    b = np.asarray(torch.as_tensor(boxes).cpu(), np.float64).reshape(-1, 4)
    ok = np.asarray(torch.as_tensor(found).cpu(), bool).reshape(-1)
    if not ok.any():
        raise MediaError("No face was found in any frame; SyncNet scores need a visible face.")
    t = np.arange(len(b))
    b = np.stack([np.interp(t, t[ok], b[ok, k]) for k in range(4)], axis=1)
    s = _medfilt(np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2, SMOOTH_KERNEL)
    cy = _medfilt((b[:, 1] + b[:, 3]) / 2, SMOOTH_KERNEL)
    cx = _medfilt((b[:, 0] + b[:, 2]) / 2, SMOOTH_KERNEL)
    cs = CROP_SCALE
    pad = np.floor(s * (1 + 2 * cs))  # official int(): s >= 0
    # The official pads the frame by `pad` and slices with int(); shift back to frame coordinates after.
    r0 = np.floor(cy + pad - s) - pad
    r1 = np.floor(cy + pad + s * (1 + 2 * cs)) - pad
    c0 = np.floor(cx + pad - s * (1 + cs)) - pad
    c1 = np.floor(cx + pad + s * (1 + cs)) - pad
    return np.stack([r0, r1, c0, c1], axis=1).astype(np.int64)


def _linear_taps(start: torch.Tensor, size: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2 INTER_LINEAR source taps for resizing spans [B] of ``size`` pixels to ``out``: half-pixel
    centres, clamped at the span's edges (cv2 replicates the crop's border)."""
    pos = (torch.arange(out, dtype=torch.float64)[None, :] + 0.5) * (size[:, None] / out) - 0.5
    i0 = torch.floor(pos)
    frac = pos - i0
    frac = torch.where(i0 < 0, torch.zeros_like(frac), frac)
    i0 = i0.clamp(min=0)
    last = (size[:, None] - 1).to(torch.float64)
    frac = torch.where(i0 >= last, torch.zeros_like(frac), frac)
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    return start[:, None] + i0.long(), start[:, None] + i1.long(), frac


def syncnet_face_crops(frames: torch.Tensor | np.ndarray, crop_boxes: np.ndarray, size: int = FACE_SIZE
                       ) -> torch.Tensor:
    """Cut and resize the official SyncNet face crops: uint8 RGB [T,H,W,3] -> [T,size,size,3], batched.

    ``crop_boxes`` from :func:`syncnet_crop_boxes`. Pixels outside the frame are the official pad grey
    (110); the resize is bilinear with cv2's pixel-centre convention (equal to ``cv2.resize`` up to its
    fixed-point rounding).
    """
    frames = torch.as_tensor(frames)
    t, h, w, _ = frames.shape
    boxes = torch.as_tensor(crop_boxes, dtype=torch.long)
    if boxes.shape != (t, 4):
        raise ValueError(f"crop_boxes must be [{t}, 4]; got {tuple(boxes.shape)}")
    heights = (boxes[:, 1] - boxes[:, 0]).clamp(min=1)
    widths = (boxes[:, 3] - boxes[:, 2]).clamp(min=1)
    r0, r1, fr = _linear_taps(boxes[:, 0], heights, size)
    c0, c1, fc = _linear_taps(boxes[:, 2], widths, size)

    def sample(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        idx = torch.arange(t)[:, None, None]
        px = frames[idx, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]].float()
        return torch.where(inside[..., None], px, torch.full_like(px, float(CROP_PAD_VALUE)))

    fr = fr.float()[:, :, None, None]
    fc = fc.float()[:, None, :, None]
    top = sample(r0, c0) * (1 - fc) + sample(r0, c1) * fc
    bottom = sample(r1, c0) * (1 - fc) + sample(r1, c1) * fc
    return (top * (1 - fr) + bottom * fr).round().clamp(0, 255).to(torch.uint8)
