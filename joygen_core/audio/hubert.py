"""HuBERT-large features for audio-to-motion (Real3DPortrait convention), with transformers' HubertModel.

Official (``extract_hubert.py``): the Wav2Vec2 processor normalises the whole clip to zero mean / unit variance,
then the model runs on clips of 320*1000 samples (+80 so each gives exactly 1000 frames), the remainder last;
the result has ``(N-80)//320`` frames of ``last_hidden_state`` (1024-d, 50 Hz).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..weights import load_pretrained

log = logging.getLogger(__name__)

STRIDE = 320  # product of the conv feature extractor strides
KERNEL = 400  # receptive field of the conv feature extractor
CLIP = STRIDE * 1000  # official chunk: 1000 output frames


def load_hubert(folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """An HF HuBERT folder (official ``audio2motion/hubert`` = facebook/hubert-large-ls960-ft) -> HubertModel.

    The folder's CTC head (``lm_head``) is not used; any other missing or unexpected weight is an error, and so
    is a damaged or unsafe weight file (named, see :func:`joygen_core.weights.load_pretrained`).
    """
    from transformers import HubertModel

    model, info = load_pretrained(HubertModel, folder, what="HuBERT", model_type="hubert",
                                  where="Expected the HF folder of facebook/hubert-large-ls960-ft at "
                                        "audio2motion/hubert/.")
    folder = Path(folder)
    missing = sorted(k for k in info.get("missing_keys", []) if "masked_spec_embed" not in k)
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if not k.startswith("lm_head"))
    mismatched = sorted(map(str, info.get("mismatched_keys", [])))
    if missing or unexpected or mismatched:
        raise ModelFileError(f"{folder} is not a valid HuBERT checkpoint: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}, shape mismatches {mismatched[:3]}.")
    model.config.do_normalize = _do_normalize(folder)
    return model.to(device=device, dtype=dtype).eval()


def _do_normalize(folder: Path) -> bool:
    """The processor's ``do_normalize`` (preprocessor_config.json; True for hubert-large-ls960-ft)."""
    cfg = folder / "preprocessor_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_normalize", True))
        except json.JSONDecodeError:
            log.warning("Unreadable %s; normalising the input as hubert-large-ls960-ft does", cfg)
    return True


def hubert_frames(num_samples: int) -> int:
    """Frames the official extraction returns for ``num_samples`` at 16 kHz: ``(N - 80) // 320`` (never < 0)."""
    return max((int(num_samples) - (KERNEL - STRIDE)) // STRIDE, 0)


def normalise_input(audio16k: torch.Tensor) -> torch.Tensor:
    """Wav2Vec2 feature extractor normalisation: ``(x - mean) / sqrt(var + 1e-7)`` over the clip, float32."""
    x = audio16k.to(torch.float32)
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


@torch.no_grad()
def hubert_features(model, audio16k: torch.Tensor, batch_size: int = 4, progress=None,
                    pad_to: int = 1) -> torch.Tensor:
    """16 kHz mono [T] -> HuBERT ``last_hidden_state`` [(T-80)//320, 1024] float32 on the CPU.

    Chunked as the official code (so long audio fits in memory and features match the training data);
    equal-length chunks are run as a batch. ``pad_to`` > 1: zero rows appended up to a multiple of it, as
    :func:`pad_frames` does, without a second copy.
    """
    p = next(model.parameters())
    n = int(audio16k.shape[0])
    expected = hubert_frames(n)
    dim = model.config.hidden_size
    rows = expected + (-expected) % pad_to if expected or pad_to == 1 else pad_to
    if expected == 0:
        return torch.zeros((rows, dim))
    x = normalise_input(audio16k) if getattr(model.config, "do_normalize", True) else audio16k.float()
    n_full = n // CLIP
    clips = [x[i * CLIP: i * CLIP + CLIP - STRIDE + KERNEL] for i in range(n_full)]
    rest = x[n_full * CLIP:]
    # full clips: equal length except possibly the last full one (which may be cut by the end of the audio)
    same = [c for c in clips if c.shape[0] == CLIP - STRIDE + KERNEL]
    odd = [c for c in clips if c.shape[0] != CLIP - STRIDE + KERNEL] + ([rest] if rest.shape[0] >= KERNEL else [])
    total = sum((c.shape[0] - KERNEL) // STRIDE + 1 for c in same + odd)
    feats = torch.empty((max(total, rows), dim))  # written in place: long audio holds one copy
    pos = done = 0
    chunks = len(same) + len(odd)
    for i in range(0, len(same), max(int(batch_size), 1)):
        batch = torch.stack(same[i: i + batch_size]).to(device=p.device, dtype=p.dtype)
        out = model(batch).last_hidden_state
        feats[pos: pos + out.shape[0] * out.shape[1]] = out.reshape(-1, dim).float().cpu()
        pos += out.shape[0] * out.shape[1]
        done += batch.shape[0]
        if progress is not None:
            progress(done, chunks)
    for c in odd:
        out = model(c[None].to(device=p.device, dtype=p.dtype)).last_hidden_state[0]
        feats[pos: pos + out.shape[0]] = out.float().cpu()
        pos += out.shape[0]
        done += 1
        if progress is not None:
            progress(done, chunks)
    if pos < expected:  # cannot happen with the official chunking; hold the last frame to be safe
        feats[pos:expected] = feats[pos - 1] if pos else 0.0
    feats[expected:rows] = 0.0
    return feats[:rows]


def pad_frames(feats: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Zero-pad frames to a multiple of ``multiple`` (official: A2M needs T50 % 8 == 0)."""
    extra = (-feats.shape[0]) % multiple
    if extra == 0 and feats.shape[0] > 0:
        return feats
    if feats.shape[0] == 0:
        extra = multiple
    return torch.cat([feats, feats.new_zeros((extra,) + tuple(feats.shape[1:]))], dim=0)
