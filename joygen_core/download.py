"""Optional download of the bundle pieces that are published on the Hugging Face hub.

Off by default: nothing in the library downloads unless a user runs ``python -m joygen_core download``.
The JoyGen UNet, the BFM, the regressor, the A2M model and BiSeNet are not on the hub; the command
says where to get them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError
from .weights import MANIFEST_BY_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubPiece:
    key: str
    repo_id: str
    target: str
    allow_patterns: tuple[str, ...]


HUB_PIECES: dict[str, HubPiece] = {
    "vae": HubPiece("vae", "stabilityai/sd-vae-ft-mse", "sd-vae-ft-mse", ("config.json", "*.safetensors")),
    "hubert": HubPiece("hubert", "facebook/hubert-large-ls960-ft", "audio2motion/hubert",
                       ("*.json", "*.txt", "*.safetensors", "pytorch_model.bin")),
    # HF layout of the same tiny weights; the Whisper loader accepts this folder in place of tiny.pt
    "whisper": HubPiece("whisper", "openai/whisper-tiny", "whisper/whisper-tiny",
                        ("config.json", "*.safetensors", "preprocessor_config.json")),
}


def download(root: Path | str, keys: list[str] | None = None) -> list[Path]:
    """Fetch the hub-published pieces into ``root`` (the joygen model folder); returns their folders."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelFileError("Downloading needs huggingface_hub (pip install huggingface_hub).") from exc
    root = Path(root)
    wanted = keys or list(HUB_PIECES)
    unknown = [k for k in wanted if k not in HUB_PIECES]
    if unknown:
        others = ", ".join(f"{k}: {MANIFEST_BY_KEY[k].source}" for k in unknown if k in MANIFEST_BY_KEY)
        raise ModelFileError(f"Not on the Hugging Face hub: {', '.join(unknown)}. {others}")
    done = []
    for key in wanted:
        piece = HUB_PIECES[key]
        dest = root / piece.target
        log.info("Downloading %s into %s", piece.repo_id, dest)
        snapshot_download(repo_id=piece.repo_id, local_dir=str(dest), allow_patterns=list(piece.allow_patterns))
        done.append(dest)
    return done
