"""Writes a models folder in the exact official layout with small random-initialised weights.

Each module here handles one model family and defines ``write(root: Path, rng: numpy Generator) -> None``
writing that family's files in their official formats under ``root``. ``make_models_folder`` runs all of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import torch


def families() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def make_models_folder(root: Path, only: list[str] | None = None, seed: int = 0) -> Path:
    """Write every family (or ``only`` those) under ``root`` and return it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in families():
        if only is not None and name not in only:
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        torch.manual_seed(seed)
        module.write(root, np.random.default_rng(seed))
    return root
