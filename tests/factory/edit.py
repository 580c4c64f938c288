"""The editing models in the official diffusers folders, small and random.

- ``joygen/``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` as ``save_pretrained`` writes them, with
  the official UNet's structure (12 input channels, 384-d cross-attention, 3 cross-attention down blocks + a
  plain one, 2 layers per block, 8 heads) at small widths (8 norm groups).
- ``sd-vae-ft-mse/``: an ``AutoencoderKL`` with the official block layout (4 levels: 256 -> 32 latents,
  4 latent channels) at small widths and one layer per block, its weights written under the old attention names
  (``attentions.0.query``) as the published file has them.
- ``musetalk_unet/`` (outside the official layout, only for tests): an 8-channel MuseTalk-style UNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

UNET_SMALL = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [16, 32, 32, 32], "center_input_sample": False,
    "cross_attention_dim": 384, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                     "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 12, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 8, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE_SMALL = {
    "act_fn": "silu", "block_out_channels": [8, 16, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3,
    "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def unet_config(**over) -> dict:
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0.dev0", **UNET_SMALL, **over}


def write_unet(folder: Path, seed: int = 0, **over) -> Path:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    cfg = unet_config(**over)
    model = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    with torch.no_grad():  # a random UNet whose output stays in the VAE's latent range
        model.conv_out.weight.mul_(0.2)
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def write_vae(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = AutoencoderKL.from_config(VAE_SMALL)
    state = {}
    for k, v in model.state_dict().items():
        for new, old in OLD_NAMES.items():
            k = k.replace(f".{new}.", f".{old}.")
        state[k] = v.contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2",
                                                    **VAE_SMALL}, indent=2))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def write(root: Path, rng: np.random.Generator) -> None:
    seed = int(rng.integers(0, 2**31))
    write_unet(root / "joygen", seed)
    write_vae(root / "sd-vae-ft-mse", seed + 1)
