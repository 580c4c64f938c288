"""The editing models: the sd-vae-ft-mse ``AutoencoderKL`` and the JoyGen ``UNet2DConditionModel`` (diffusers).

Both come from diffusers ``save_pretrained`` folders (``config.json`` + weights). We build the model from
its config and load the weights ourselves, so that every file goes through the safe loader
(safetensors, or ``torch.load(weights_only=True)``) and a wrong folder gets an error naming the first
mismatch: a MuseTalk UNet (8 input channels) instead of JoyGen's 12, a missing or foreign key.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..weights import check_state_dict, clean_message, load_checkpoint, read_config  # train.fit: read_config

log = logging.getLogger(__name__)

UNET_IN_CHANNELS = 12  # masked target 4 + reference 4 + mouth depth 4
MUSETALK_IN_CHANNELS = 8  # masked target 4 + reference 4
AUDIO_DIM = 384  # Whisper-tiny d_model
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
# Old diffusers attention names, still in the published sd-vae-ft-mse weights.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_RE = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")


@dataclass
class EditModels:
    """The JOYGEN_EDIT_MODELS handle: VAE and UNet on one device, in one compute dtype."""

    vae: torch.nn.Module
    unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False  # inputs handed to the VAE in channels-last layout (see optimize_edit_models)

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def __repr__(self) -> str:
        extra = (", channels_last" if self.channels_last else "") + (
            ", compiled" if getattr(self.unet, "_compiled_call_impl", None) is not None else "")
        return f"EditModels(device={self.device}, dtype={self.dtype}{extra})"


def weight_file(folder: Path | str, what: str) -> Path:
    """The weights of a diffusers folder: safetensors first, then the legacy .bin."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ModelFileError(
        f"{folder} holds no {what} weights: expected one of {', '.join(WEIGHT_NAMES)} beside config.json."
    )


def rename_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map old diffusers attention names (``attentions.0.query``) onto the current ones (``to_q``).

    The published sd-vae-ft-mse files predate the rename; diffusers converts them the same way on load.
    """
    if not any(_OLD_ATTENTION_RE.search(k) for k in state):
        return state
    return {_OLD_ATTENTION_RE.sub(lambda m: m.group(1) + _OLD_ATTENTION[m.group(2)] + ".", k): v
            for k, v in state.items()}


def _config_kwargs(cls, config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _build(cls, config: dict, folder: Path, what: str) -> torch.nn.Module:
    """Build ``cls`` from ``config`` with empty weights and fill them from the folder's weight file."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=False):
            model = cls.from_config(_config_kwargs(cls, config))
    except Exception as exc:
        raise ModelFileError(f"{folder}/config.json does not describe a valid {what} ({clean_message(exc)}).") from exc
    path = weight_file(folder, what)
    state = rename_legacy_keys(load_checkpoint(path))
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} does not hold a state dict ({type(state).__name__}).")
    check_state_dict(state, model, path, what=what)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _to(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(device, dtype)`` without diffusers' notice about fp32-kept modules (these models have none)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        return model.to(device, dtype)
    finally:
        dlog.set_verbosity(level)


def check_unet_config(config: dict, folder: Path | str) -> None:
    """The JoyGen UNet takes 12 input channels and 384-d audio tokens; say clearly what else was given."""
    cls = config.get("_class_name", "UNet2DConditionModel")
    if cls != "UNet2DConditionModel":
        raise ModelFileError(f"{folder} holds a {cls}, not the JoyGen UNet2DConditionModel.")
    cin = config.get("in_channels")
    if cin == MUSETALK_IN_CHANNELS:
        raise ModelFileError(
            f"{folder} is a MuseTalk UNet (8 input channels: masked target + reference). JoyGen's UNet takes 12 "
            "(plus the mouth depth): put the joygen folder of the official bundle in models/joygen. To start "
            "training from MuseTalk, use `python -m train fit` with init: musetalk (it widens the input layer)."
        )
    if cin != UNET_IN_CHANNELS:
        raise ModelFileError(f"{folder}: the UNet has {cin} input channels; JoyGen's has {UNET_IN_CHANNELS}.")
    if config.get("cross_attention_dim") != AUDIO_DIM:
        raise ModelFileError(f"{folder}: cross_attention_dim is {config.get('cross_attention_dim')}; JoyGen's "
                             f"UNet attends to {AUDIO_DIM}-d Whisper-tiny features.")


def load_unet(folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              *, check: bool = True):
    """The JoyGen editing UNet from its diffusers folder (``joygen/``), strict, on ``device`` in ``dtype``."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    config = read_config(folder, "JoyGen UNet")
    if check:
        check_unet_config(config, folder)
    return _to(_build(UNet2DConditionModel, config, folder, "UNet"), device, dtype)


def load_vae(folder: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The image VAE (``sd-vae-ft-mse/``), strict, old attention names accepted, on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    config = read_config(folder, "VAE")
    cls = config.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ModelFileError(f"{folder} holds a {cls}, not the sd-vae-ft-mse AutoencoderKL.")
    return _to(_build(AutoencoderKL, config, folder, "VAE"), device, dtype)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the official runs the UNet in fp32, MuseTalk in fp16: same pictures), else fp32."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def optimize_edit_models(models: EditModels, *, channels_last: bool = False, compile: bool = False) -> EditModels:
    """Speed options for the VAE and the UNet, in place: ``channels_last`` (NHWC weights and activations: faster
    convolutions with cuDNN / oneDNN, the same numbers up to float rounding) and ``compile`` (``torch.compile`` of
    each network's forward: the first batch pays the compile, minutes on a CPU; every later batch of the same
    shape runs the fused graph). Both off by default: eager NCHW is what the numerical tests pin."""
    if channels_last:
        models.vae.to(memory_format=torch.channels_last)
        models.unet.to(memory_format=torch.channels_last)
        models.unet.joygen_channels_last = True  # read by editor.predict_latents
        models.channels_last = True
    if compile:
        # nn.Module.compile keeps the module (and its state-dict keys, which fingerprints and savers read)
        for net in (models.vae.encoder, models.vae.decoder, models.vae.quant_conv, models.vae.post_quant_conv,
                    models.unet):
            if net is not None:
                net.compile(dynamic=False)
    return models


def load_edit_models(unet_folder: Path | str, vae_folder: Path | str, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None, *, channels_last: bool = False,
                     compile: bool = False) -> EditModels:
    """The VAE and the UNet on ``device`` in ``dtype`` (default: :func:`default_dtype`); ``channels_last`` and
    ``compile``: see :func:`optimize_edit_models`."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bfloat16 is not supported on this GPU; using float16")
        dtype = torch.float16
    models = EditModels(vae=load_vae(vae_folder, device, dtype), unet=load_unet(unet_folder, device, dtype),
                        device=device, dtype=dtype)
    return optimize_edit_models(models, channels_last=channels_last, compile=compile)
