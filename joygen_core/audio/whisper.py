"""Whisper-tiny audio features for the editing UNet (MuseTalk convention, as JoyGen uses it).

- log-mel: OpenAI ``log_mel_spectrogram`` (400-point periodic Hann STFT, hop 160, power, Slaney mel 80 bins,
  log10 clamped at 1e-10, floor at max-8 over the whole clip, (x+4)/4); the STFT runs in blocks of frames.
- encoder: transformers' WhisperEncoder, loaded from the official OpenAI ``whisper/tiny.pt`` (keys mapped) or
  an HF ``openai/whisper-tiny`` folder. Five hidden states per 20 ms row: the embedding output and each block's
  output before the final layer norm -> [T50, 5, 384].
- 30 s windows (3000 mel frames, zero-padded when shorter, as the official); long audio in overlapping
  windows blended without a seam (see :mod:`.windows`).
- per video frame at any fps: rows ``c-4 .. c+5`` around ``c = int(i*50/fps)`` -> [50, 384], plus the
  sinusoidal positional encoding the UNet was trained with.
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..weights import check_state_dict, load_checkpoint, load_pretrained
from .windows import blend_weights, frame_windows, plan_windows

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_MEL = 3000  # 30 s of mel frames: the only input length the encoder accepts
FEATURE_DIM = 384  # whisper-tiny d_model == the UNet's cross_attention_dim
N_STATES = 5


# ----------------------------------------------------------------------------------------------- log-mel


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int = N_MELS) -> torch.Tensor:
    """[n_mels, 201] Slaney-scale, Slaney-normalised filters (== librosa.filters.mel(sr=16000, n_fft=400))."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                         mel_scale="slaney")
    return torch.from_numpy(fb.T.copy()).to(torch.float32)


def log_mel_spectrogram(audio16k: torch.Tensor, n_mels: int = N_MELS, block: int = 6000) -> torch.Tensor:
    """16 kHz mono [N] -> [n_mels, N // 160] normalised log-mel, as OpenAI's ``log_mel_spectrogram``.

    The STFT runs ``block`` frames at a time on the reflect-padded signal (the frames of ``center=True``), so
    long audio never holds its whole complex spectrum; only the mel rows are kept for the whole-clip floor.
    """
    audio = audio16k.to(torch.float32).reshape(-1)
    n_frames = audio.shape[0] // HOP
    if audio.shape[0] <= N_FFT // 2:  # reflect padding needs more samples than half a window
        audio = torch.nn.functional.pad(audio, (0, N_FFT // 2 + 1 - audio.shape[0]))
    padded = torch.nn.functional.pad(audio[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    window = torch.hann_window(N_FFT, device=audio.device)
    filters = _mel_filters(n_mels).to(audio.device)
    mel = torch.empty((n_mels, n_frames), dtype=torch.float32, device=audio.device)
    step = max(int(block), 1)
    for t0 in range(0, n_frames, step):  # official: the STFT's last frame is dropped
        t1 = min(t0 + step, n_frames)
        stft = torch.stft(padded[t0 * HOP: (t1 - 1) * HOP + N_FFT], N_FFT, HOP, window=window, center=False,
                          return_complex=True)
        mel[:, t0:t1] = filters @ (stft.abs() ** 2)
    log_spec = mel.clamp_(min=1e-10).log10_()
    if log_spec.numel():
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------------------------- loading

_BLOCK_MAP = {
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_BLOCK_RE = re.compile(r"^encoder\.blocks\.(\d+)\.(attn\.query|attn\.key|attn\.value|attn\.out|attn_ln|mlp\.0|mlp\.2|"
                       r"mlp_ln)\.(weight|bias)$")
_TOP_MAP = {"encoder.conv1.weight": "conv1.weight", "encoder.conv1.bias": "conv1.bias",
            "encoder.conv2.weight": "conv2.weight", "encoder.conv2.bias": "conv2.bias",
            "encoder.positional_embedding": "embed_positions.weight",
            "encoder.ln_post.weight": "layer_norm.weight", "encoder.ln_post.bias": "layer_norm.bias"}


def openai_to_hf_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OpenAI Whisper ``model_state_dict`` -> transformers WhisperEncoder keys; also the keys that are neither
    encoder nor decoder (unexpected). Decoder keys are expected in the official file and not used."""
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key in _TOP_MAP:
            out[_TOP_MAP[key]] = value
            continue
        m = _BLOCK_RE.match(key)
        if m:
            out[f"layers.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}.{m.group(3)}"] = value
        elif not key.startswith("decoder."):
            unexpected.append(key)
    return out, unexpected


def _encoder_config(n_mels: int, n_ctx: int, d_model: int, heads: int, layers: int):
    from transformers import WhisperConfig

    return WhisperConfig(num_mel_bins=n_mels, max_source_positions=n_ctx, d_model=d_model,
                         encoder_attention_heads=heads, encoder_layers=layers, encoder_ffn_dim=4 * d_model,
                         decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * d_model,
                         activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _load_openai(path: Path):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    data = load_checkpoint(path)
    if not isinstance(data, dict) or "dims" not in data or "model_state_dict" not in data:
        raise ModelFileError(f"{path} is not an OpenAI Whisper checkpoint (expected a dict with 'dims' and "
                             "'model_state_dict', like the official whisper/tiny.pt).")
    dims = dict(data["dims"])
    try:
        cfg = _encoder_config(int(dims["n_mels"]), int(dims["n_audio_ctx"]), int(dims["n_audio_state"]),
                              int(dims["n_audio_head"]), int(dims["n_audio_layer"]))
    except KeyError as exc:
        raise ModelFileError(f"{path}: 'dims' lacks {exc}; not an OpenAI Whisper checkpoint.") from exc
    state, unexpected = openai_to_hf_encoder(data["model_state_dict"])
    if unexpected:
        raise ModelFileError(f"{path} is not a valid Whisper checkpoint: {len(unexpected)} unexpected keys "
                             f"(e.g. {unexpected[:5]}).")
    encoder = WhisperEncoder(cfg)
    check_state_dict(state, encoder, path, what="Whisper encoder (OpenAI format)")
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return encoder


def _load_hf_folder(folder: Path):
    from transformers import WhisperModel

    model, info = load_pretrained(WhisperModel, folder, what="Whisper", model_type="whisper",
                                  where="Expected the official whisper/tiny.pt or an HF openai/whisper-tiny folder.")
    missing = sorted(k for k in info.get("missing_keys", []) if k.startswith("encoder."))
    mismatched = sorted(map(str, info.get("mismatched_keys", [])))
    if missing or mismatched:
        raise ModelFileError(f"{folder} is not a valid Whisper model: missing encoder weights {missing[:5]}, "
                             f"shape mismatches {mismatched[:3]}.")
    return model.get_encoder()


def load_whisper_encoder(path_or_folder: Path | str, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32):
    """The Whisper encoder (transformers ``WhisperEncoder``, eval) from ``whisper/tiny.pt`` or an HF folder."""
    path = Path(path_or_folder)
    if path.is_dir():
        encoder = _load_hf_folder(path)
    elif path.is_file():
        encoder = _load_openai(path)
    else:
        raise ModelFileError(f"Whisper model {path} does not exist. Expected the official whisper/tiny.pt "
                             "(or an HF openai/whisper-tiny folder).")
    cfg = encoder.config
    if cfg.d_model != FEATURE_DIM or cfg.max_source_positions * 2 != WINDOW_MEL or cfg.num_mel_bins != N_MELS:
        raise ModelFileError(f"{path} is Whisper with d_model {cfg.d_model}, {cfg.max_source_positions} positions, "
                             f"{cfg.num_mel_bins} mels; JoyGen's UNet was trained on whisper-tiny (384, 1500, 80).")
    return encoder.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------------- features


@torch.no_grad()
def encoder_states(encoder, mel: torch.Tensor) -> torch.Tensor:
    """[B, 80, 3000] log-mel -> [B, 1500, 5, 384]: embedding output and each block's output (pre final norm).

    transformers returns the last block's state after ``layer_norm`` in ``hidden_states``; the official
    MuseTalk encoder keeps it before, so the last block's raw output is taken with a forward hook.
    """
    captured: list[torch.Tensor] = []

    def hook(_module, _inp, out):
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = encoder.layers[-1].register_forward_hook(hook)
    try:
        p = next(encoder.parameters())
        out = encoder(mel.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
    finally:
        handle.remove()
    states = list(out.hidden_states[: len(encoder.layers)]) + [captured[-1]]
    return torch.stack(states, dim=2)


def whisper_hidden_states(encoder, audio16k: torch.Tensor, hop_seconds: float = 20.0, batch_size: int = 4,
                          progress=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """16 kHz mono [N] -> [N // 320, 5, 384] on the CPU in ``dtype`` (at least one row).

    Up to 30 s: one zero-padded window, the official result. Longer: 30 s windows every ``hop_seconds``
    (the last ends at the end of the audio), blended continuously where they overlap. The blend is summed in
    float32 over the rows a later window may still reach, and each row is written out in ``dtype`` once no
    later window reaches it, so long audio holds one copy of the result, in the caller's precision.
    """
    audio = audio16k.to(torch.float32).reshape(-1)
    if audio.shape[0] < 2 * HOP:  # shorter than one feature row: pad with silence to one row
        audio = torch.nn.functional.pad(audio, (0, 2 * HOP - audio.shape[0]))
    p = next(encoder.parameters())
    mel = log_mel_spectrogram(audio.to(p.device))
    rows = mel.shape[1] // 2
    hop = max(2, int(round(hop_seconds * SAMPLE_RATE / HOP / 2)) * 2)
    windows = plan_windows(2 * rows, WINDOW_MEL, min(hop, WINDOW_MEL), align=2)
    weights = blend_weights(windows, 2 * rows, scale=2)
    out = torch.zeros((rows, N_STATES, FEATURE_DIM), dtype=dtype)
    open_rows = torch.zeros((0, N_STATES, FEATURE_DIM))  # float32 sums of rows [first, first + len)
    first = 0

    def close_rows(upto: int) -> None:
        nonlocal open_rows, first
        k = upto - first
        if k > 0:
            out[first:upto] = open_rows[:k]
            open_rows, first = open_rows[k:], upto

    for i in range(0, len(windows), max(int(batch_size), 1)):
        chunk = windows[i: i + batch_size]
        # an odd trailing mel frame yields no row of its own but is part of the official input (it reaches the
        # last row through the convs and every row through attention): keep it wherever the window has room
        ends = [e + 1 if e == 2 * rows < mel.shape[1] and e - s < WINDOW_MEL else e for s, e in chunk]
        batch = torch.stack([torch.nn.functional.pad(mel[:, s:e], (0, WINDOW_MEL - (e - s)))
                             for (s, _), e in zip(chunk, ends)])
        states = encoder_states(encoder, batch).float().cpu()
        for j, (s, _e) in enumerate(chunk):
            w = weights[i + j]
            r0 = s // 2
            close_rows(r0)  # windows start in order: rows before this one's start are complete
            grow = r0 + w.shape[0] - first - open_rows.shape[0]
            if grow > 0:
                open_rows = torch.cat([open_rows, open_rows.new_zeros((grow, N_STATES, FEATURE_DIM))])
            open_rows[r0 - first: r0 - first + w.shape[0]] += states[j, : w.shape[0]] * w[:, None, None]
        del states, batch
        if progress is not None:
            progress(min(i + batch_size, len(windows)), len(windows))
    close_rows(rows)
    return out


@lru_cache(maxsize=4)
def positional_encoding(length: int = 50, dim: int = FEATURE_DIM) -> torch.Tensor:
    """[length, dim] sinusoidal encoding added to the UNet's audio tokens (sin on even dims, cos on odd)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def frame_features(states: torch.Tensor, fps: float, num_frames: int, add_encoding: bool = True) -> torch.Tensor:
    """[T50, 5, 384] hidden states -> [num_frames, 50, 384]: 10 rows around each frame, layer-minor order."""
    if fps is None or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"fps must be a positive number; got {fps!r}")
    idx = frame_windows(num_frames, fps, states.shape[0])
    feats = states[idx].reshape(int(num_frames), 10 * states.shape[1], states.shape[2])
    if add_encoding:
        feats = feats + positional_encoding(feats.shape[1], feats.shape[2])
    return feats


def whisper_features(encoder, audio16k: torch.Tensor, fps: float, num_frames: int, *, hop_seconds: float = 20.0,
                     batch_size: int = 4, progress=None) -> torch.Tensor:
    """16 kHz mono audio -> per-frame UNet conditioning [num_frames, 50, 384] (positional encoding added).

    Frames past the end of the audio repeat its last rows (official clamping).
    """
    states = whisper_hidden_states(encoder, audio16k, hop_seconds=hop_seconds, batch_size=batch_size,
                                   progress=progress)
    return frame_features(states, fps, int(num_frames))
