"""The Deep3DFaceRecon coefficient regressor: ResNet-50 + seven 1x1 heads -> 257 BFM coefficients.

Official (Deep3DFaceRecon ``models/networks.py`` ``ReconNetWrapper``): torchvision-layout ResNet-50
without its fc, global average pool, then 1x1 convs with bias for id 80, exp 64, tex 80, angle 3,
gamma 27, translation xy 2, translation z 1. Input RGB [B,3,224,224] in 0..1, no normalisation.
The released file ``face_recon_feat0.2_augment/epoch_20.pth`` holds ``{'net_recon': state_dict, ...}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from ..weights import check_state_dict, load_checkpoint

HEADS = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, txy, tz


class ReconNet(nn.Module):
    """ResNet-50 backbone (``backbone.*``) and seven 1x1 conv heads (``final_layers.0..6``)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        backbone = resnet50(weights=None)
        del backbone.fc  # official: use_last_fc=False, the backbone ends at the average pool
        self.backbone = backbone
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, n, kernel_size=1, bias=True) for n in HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,224,224] RGB 0..1 -> [B,257] coefficients."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.avgpool(b.layer4(b.layer3(b.layer2(b.layer1(x)))))
        return torch.cat([head(x) for head in self.final_layers], dim=1).flatten(1)


def load_regressor(path: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> ReconNet:
    """Load the official regressor checkpoint strictly (the ``net_recon`` entry, or a bare state dict)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, dict) and "net_recon" in ckpt:
        state = ckpt["net_recon"]
    elif isinstance(ckpt, dict) and any(str(k).startswith("backbone.") for k in ckpt):
        state = ckpt
    else:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelFileError(f"{path} is not a Deep3DFaceRecon checkpoint: expected a dict with 'net_recon' "
                             f"(face_recon_feat0.2_augment/epoch_20.pth); found {keys}.")
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: 'net_recon' is a {type(state).__name__}, not a state dict.")
    model = ReconNet()
    check_state_dict(state, model, path, what="Deep3DFaceRecon regressor (net_recon)")
    model.load_state_dict(state, strict=True)
    # channels-last: faster convolutions on CPU (oneDNN) and on GPU tensor cores, same numbers
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def regress(model: ReconNet, crops: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Coefficients [B,257] float32 (CPU) for crops [B,3,224,224] in 0..1, in batches on the model's device."""
    p = next(model.parameters())
    out = [model(crops[i:i + batch_size].to(p.device, p.dtype).contiguous(memory_format=torch.channels_last))
           .float().cpu() for i in range(0, crops.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 257)
