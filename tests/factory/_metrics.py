"""Small random-weight evaluation networks in their official file formats (not part of the joygen bundle).

The leading underscore keeps this module out of ``make_models_folder``: these files live wherever the
user keeps them and are given to ``python -m train evaluate`` by path.

Convolutions and linear layers get He-normal weights so activations keep their scale through the deep
networks (PyTorch's default init shrinks the Inception's 2048-d features to ~1e-8, which would make
any FID look like 0); BatchNorm statistics are perturbed so a mis-wired layer changes the output.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _randomise(module: nn.Module, rng: np.random.Generator) -> None:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, np.float32))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(t(rng.standard_normal(m.weight.shape) * math.sqrt(2.0 / fan_in)))
                if m.bias is not None:
                    m.bias.copy_(t(rng.standard_normal(m.bias.shape) * 0.05))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(t(rng.uniform(0.8, 1.2, n)))
                m.bias.copy_(t(rng.normal(0.0, 0.05, n)))
                m.running_mean.copy_(t(rng.normal(0.0, 0.05, n)))
                m.running_var.copy_(t(rng.uniform(0.8, 1.2, n)))


def write_fid_inception(path: Path, rng: np.random.Generator) -> Path:
    """``pt_inception-2015-12-05-6726825d.pth``: a plain torch.save'd state dict of the FID Inception
    (torchvision key names, ``fc`` with 1008 classes, no auxiliary head)."""
    from train.metrics.fid import FIDInception

    model = FIDInception()
    _randomise(model, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_syncnet(path: Path, rng: np.random.Generator, *, legacy: bool = True) -> Path:
    """``syncnet_v2.model``: a plain state dict of SyncNet ``S``. ``legacy`` writes it as the released
    file was made (pre-zip torch serialisation, no BatchNorm ``num_batches_tracked`` counters)."""
    from train.metrics.syncnet import SyncNet

    model = SyncNet()
    _randomise(model, rng)
    state = model.state_dict()
    if legacy:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path
