"""BiSeNet face parsing: ``face-parse-bisent/79999_iter.pth``, a plain state dict in the official layout.

Full size (13.3M values, 53 MB float32, as the official file): random He-initialised convolutions,
BN in its freshly initialised state, written in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def parser_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the official keys, shapes and dtypes (float32, int64 BN counters)."""
    from joygen_core.edit.parsing import BiSeNet

    with torch.device("meta"):  # shapes only: filling the tensors directly is faster than nn init
        shapes = {k: v.shape for k, v in BiSeNet().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(80000, dtype=torch.int64)  # about what 79999 iterations leave
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            state[k] = torch.ones(shape)
        elif k.endswith(("running_mean", ".bias")):
            state[k] = torch.zeros(shape)
        else:  # conv weights: He init over fan-in keeps activations in range through the ResNet
            fan_in = shape[1] * shape[2] * shape[3]
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def write(root: Path, rng: np.random.Generator) -> None:
    folder = Path(root) / "face-parse-bisent"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(parser_state(int(rng.integers(0, 2**31))), folder / "79999_iter.pth")
