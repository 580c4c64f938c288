"""Audio to motion: Real3DPortrait's flow VAE predicting 64 BFM expression coefficients per frame.

The architecture is written from REFERENCE.md section 4; module and parameter names reproduce the keys of
the official ``audio2secc_vae/model_ckpt_steps_400000.ckpt`` (``state_dict['model']``) exactly, so the file
loads strictly. Only inference is implemented (the posterior encoder exists so the checkpoint loads).

Inputs are HuBERT-large features at 50 Hz ([B,T50,1024], T50 a multiple of 8) and the pitch contour in Hz
([B,T50]); output is expression coefficients at 25 Hz ([B,T50/2,64]).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..weights import check_state_dict, load_checkpoint

log = logging.getLogger(__name__)

# official pitch quantisation (Real3DPortrait utils/commons/pitch_utils.py): 256 mel-scale bins over 50..1100 Hz
F0_BINS = 256
F0_MIN, F0_MAX = 50.0, 1100.0
F0_MEL_MIN = 1127.0 * math.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * math.log(1.0 + F0_MAX / 700.0)


def f0_to_coarse(f0: torch.Tensor) -> torch.Tensor:
    """Pitch in Hz -> integer bins 1..255 (1 = unvoiced); official torch branch: round half up, ``(x+0.5).long()``."""
    f0_mel = 1127.0 * (1 + f0.to(torch.float32) / 700.0).log()  # same op order as the official, bin edges match
    voiced = f0_mel > 0
    f0_mel = torch.where(voiced, (f0_mel - F0_MEL_MIN) * (F0_BINS - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1, f0_mel)
    f0_mel = f0_mel.clamp(min=1.0, max=F0_BINS - 1)
    return (f0_mel + 0.5).long()


# ----------------------------------------------------------------------------------------------- layers


class WeightNormConv1d(nn.Module):
    """Conv1d with legacy weight norm over the output dimension (keys ``weight_g`` [O,1,1], ``weight_v``, ``bias``).

    Same maths as ``torch.nn.utils.weight_norm(conv, dim=0)``: ``w = g * v / ||v||`` per output channel.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1, padding: int = 0):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_ch, 1, 1))
        self.weight_v = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size) / math.sqrt(in_ch * kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.dilation = dilation
        self.padding = padding

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(1, 2), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, dilation=self.dilation, padding=self.padding)


class WaveNet(nn.Module):
    """Non-causal WaveNet stack (gated tanh*sigmoid units, conditioning through one 1x1 conv for all layers).

    Official ``WN``: layer i adds its first half of the residual/skip output to ``x``, the second half to the
    skip sum; the last layer's output goes to the skip sum only.
    """

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int = 0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("WaveNet kernel size must be odd")
        self.hidden = hidden
        self.n_layers = n_layers
        if gin_channels:
            self.cond_layer = WeightNormConv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate**i
            pad = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(WeightNormConv1d(hidden, 2 * hidden, kernel_size, dilation, pad))
            self.res_skip_layers.append(WeightNormConv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | float, g: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden
        out = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None and hasattr(self, "cond_layer") else None
        for i in range(self.n_layers):
            a = self.in_layers[i](x)
            if cond is not None:
                a = a + cond[:, 2 * h * i: 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


class CouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by a WaveNet of the first half."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WaveNet(hidden, kernel_size, 1, n_layers, gin_channels)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | float, g: torch.Tensor, reverse: bool) -> torch.Tensor:
        x0, x1 = x[:, : self.half], x[:, self.half:]
        m = self.post(self.enc(self.pre(x0) * mask, mask, g)) * mask
        x1 = (x1 - m) * mask if reverse else m + x1 * mask
        return torch.cat([x0, x1], dim=1)


class ChannelFlip(nn.Module):
    """Reverse the channel order (no parameters; keeps the official ``flows.{odd}`` numbering)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.flip(x, [1])


class PriorFlow(nn.Module):
    """Official ``ResidualCouplingBlock``: n_flows x (mean-only coupling, channel flip)."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, n_layers: int, n_flows: int, gin_channels: int):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(CouplingLayer(channels, hidden, kernel_size, n_layers, gin_channels))
            self.flows.append(ChannelFlip())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | float, g: torch.Tensor, reverse: bool = False):
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, mask, g, reverse)
        return x


class PosteriorEncoder(nn.Module):
    """Official ``FVAEEncoder`` (training only; present so the checkpoint loads strictly)."""

    def __init__(self, in_ch: int, hidden: int, latent: int, kernel_size: int, n_layers: int, gin: int, stride: int):
        super().__init__()
        self.pre_net = nn.Sequential(nn.Conv1d(in_ch, hidden, stride * 2, stride, stride // 2))
        self.wn = WaveNet(hidden, kernel_size, 1, n_layers, gin)
        self.out_proj = nn.Conv1d(hidden, latent * 2, 1)


class Decoder(nn.Module):
    """Official ``FVAEDecoder``: transposed conv up by the stride, WaveNet conditioned at 25 Hz, 1x1 to 64."""

    def __init__(self, latent: int, hidden: int, out_ch: int, kernel_size: int, n_layers: int, gin: int, stride: int):
        super().__init__()
        self.pre_net = nn.Sequential(nn.ConvTranspose1d(latent, hidden, stride, stride))
        self.wn = WaveNet(hidden, kernel_size, 1, n_layers, gin)
        self.out_proj = nn.Conv1d(hidden, out_ch, 1)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x = self.pre_net(z)
        return self.out_proj(self.wn(x, 1.0, g))


class FlowVAE(nn.Module):
    """Official ``FVAE`` (latent 16, hidden 256, kernel 5, encoder 8 / decoder 4 layers, stride 4, flow prior)."""

    def __init__(self, gin: int, in_out: int = 64, hidden: int = 256, latent: int = 16, kernel_size: int = 5,
                 enc_layers: int = 8, dec_layers: int = 4, stride: int = 4, use_prior_flow: bool = True,
                 flow_hidden: int = 64, flow_kernel: int = 3, flow_layers: int = 4, n_flows: int = 4):
        super().__init__()
        self.latent = latent
        self.stride = stride
        self.g_pre_net = nn.Sequential(nn.Conv1d(gin, gin, stride * 2, stride, stride // 2))
        self.encoder = PosteriorEncoder(in_out, hidden, latent, kernel_size, enc_layers, gin, stride)
        self.use_prior_flow = use_prior_flow
        if use_prior_flow:
            self.prior_flow = PriorFlow(latent, flow_hidden, flow_kernel, flow_layers, n_flows, gin)
        self.decoder = Decoder(latent, hidden, in_out, kernel_size, dec_layers, gin, stride)

    def infer(self, g: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``g`` [B,C,T25] conditioning, ``noise`` [B,16,T25/4] (already scaled by temperature) -> [B,64,T25]."""
        g_sqz = self.g_pre_net(g)
        z = noise.to(g)
        if self.use_prior_flow:
            z = self.prior_flow(z, 1.0, g_sqz, reverse=True)
        return self.decoder(z, g)

    def latent_length(self, t25: int) -> int:
        """Frames of the squeezed latent for ``t25`` conditioning frames (output length of ``g_pre_net``)."""
        return (t25 + 2 * (self.stride // 2) - 2 * self.stride) // self.stride + 1


def _conv_encoder(in_ch: int, feat: int) -> nn.Sequential:
    # official: Conv1d(k3, pad 1, no bias) - BatchNorm - GELU - Conv1d(k3, pad 1, no bias)
    return nn.Sequential(nn.Conv1d(in_ch, feat, 3, 1, 1, bias=False), nn.BatchNorm1d(feat), nn.GELU(),
                         nn.Conv1d(feat, feat, 3, 1, 1, bias=False))


@dataclass
class A2MConfig:
    """The switches of the official ``config.yaml`` that change the architecture."""

    use_pitch: bool = True
    use_mouth_amp_embed: bool = True
    use_eye_amp_embed: bool = False
    use_flow: bool = True
    audio_type: str = "hubert"

    @classmethod
    def from_hparams(cls, hp: dict) -> A2MConfig:
        return cls(use_pitch=hp.get("use_pitch", False) is True,
                   use_mouth_amp_embed=bool(hp.get("use_mouth_amp_embed", False)),
                   use_eye_amp_embed=bool(hp.get("use_eye_amp_embed", False)),
                   use_flow=bool(hp.get("use_flow", True)),
                   audio_type=str(hp.get("audio_type", "hubert")))


class PitchContourVAEModel(nn.Module):
    """HuBERT + pitch (+ blink, mouth amplitude) conditioned flow VAE; official feature width 128."""

    feat_dim = 128

    def __init__(self, config: A2MConfig, audio_dim: int = 1024, out_dim: int = 64):
        super().__init__()
        f = self.feat_dim
        self.config = config
        self.blink_embed = nn.Embedding(2, f)
        self.mel_encoder = _conv_encoder(audio_dim, f)
        self.pitch_embed = nn.Embedding(300, f)
        self.pitch_encoder = _conv_encoder(f, f)
        cond_dim = 3 * f
        if config.use_mouth_amp_embed:
            self.mouth_amp_embed = nn.Parameter(torch.randn(f))
            cond_dim += f
        if config.use_eye_amp_embed:
            self.eye_amp_embed = nn.Parameter(torch.randn(f))
            cond_dim += f
        self.cond_proj = nn.Linear(cond_dim, f)
        self.vae = FlowVAE(gin=f, in_out=out_dim, use_prior_flow=config.use_flow)

    def condition(self, hubert: torch.Tensor, f0: torch.Tensor, mouth_amp: float = 0.45,
                  eye_amp: float = 1.0) -> torch.Tensor:
        """[B,T50,1024] features + [B,T50] pitch (Hz) -> conditioning [B,128,T25]."""
        # official: F.interpolate(scale 0.5, nearest) on 50 Hz inputs == keep even frames
        mel = hubert[:, ::2]
        f0 = f0[:, ::2]
        blink = torch.zeros(f0.shape, dtype=torch.long, device=f0.device)  # official inference: no blink
        feats = [self.mel_encoder(mel.transpose(1, 2)),
                 self.pitch_encoder(self.pitch_embed(f0_to_coarse(f0)).transpose(1, 2)),
                 self.blink_embed(blink).transpose(1, 2)]
        b, _, t = feats[0].shape
        if self.config.use_mouth_amp_embed:
            feats.append((mouth_amp * self.mouth_amp_embed)[None, :, None].expand(b, -1, t))
        if self.config.use_eye_amp_embed:
            feats.append((eye_amp * self.eye_amp_embed)[None, :, None].expand(b, -1, t))
        cond = torch.cat(feats, dim=1).transpose(1, 2)
        return self.cond_proj(cond).transpose(1, 2)

    def infer(self, hubert: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor, mouth_amp: float = 0.45,
              eye_amp: float = 1.0) -> torch.Tensor:
        """Expression coefficients [B,T25,64] from features, pitch and the prior noise [B,16,T25/4]."""
        g = self.condition(hubert, f0, mouth_amp, eye_amp)
        return self.vae.infer(g, noise).transpose(1, 2)


class VAEModel(nn.Module):
    """HuBERT-only conditioned flow VAE (official ``VAEModel``, feature width 64, linear 50->25 Hz)."""

    feat_dim = 64

    def __init__(self, config: A2MConfig, audio_dim: int = 1024, out_dim: int = 64):
        super().__init__()
        self.config = config
        self.blink_embed = nn.Embedding(2, self.feat_dim)  # in the checkpoint, unused by the official forward
        self.mel_encoder = _conv_encoder(audio_dim, self.feat_dim)
        self.vae = FlowVAE(gin=self.feat_dim, in_out=out_dim, use_prior_flow=config.use_flow)

    def condition(self, hubert: torch.Tensor, f0: torch.Tensor | None = None, mouth_amp: float = 0.45,
                  eye_amp: float = 1.0) -> torch.Tensor:
        # official: F.interpolate(scale 0.5, mode='linear') (mean of frame pairs)
        mel = F.interpolate(hubert.transpose(1, 2), scale_factor=0.5, mode="linear")
        return self.mel_encoder(mel)

    def infer(self, hubert: torch.Tensor, f0: torch.Tensor | None, noise: torch.Tensor, mouth_amp: float = 0.45,
              eye_amp: float = 1.0) -> torch.Tensor:
        return self.vae.infer(self.condition(hubert), noise).transpose(1, 2)


A2MModel = PitchContourVAEModel | VAEModel


# ----------------------------------------------------------------------------------------------- loading


def read_config(config_yaml: Path | str) -> dict:
    """The official hyper-parameter dump (``yaml.safe_load``; never executes anything)."""
    import yaml

    path = Path(config_yaml)
    if not path.is_file():
        raise ModelFileError(f"Audio-to-motion config {path} does not exist; it sits beside the .ckpt in the "
                             "official bundle (audio2motion/240210_real3dportrait_orig/audio2secc_vae/config.yaml).")
    try:
        hp = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ModelFileError(f"Audio-to-motion config {path} is not valid YAML ({exc}).") from exc
    if not isinstance(hp, dict):
        raise ModelFileError(f"Audio-to-motion config {path} must be a mapping of settings.")
    return hp


def build_a2m(hp: dict) -> A2MModel:
    """The model class the config selects (official: ``use_pitch`` -> PitchContourVAEModel, else VAEModel)."""
    cfg = A2MConfig.from_hparams(hp)
    if cfg.audio_type != "hubert":
        raise ModelFileError(f"Audio-to-motion config uses audio_type={cfg.audio_type!r}; only 'hubert' "
                             "(the released JoyGen / Real3DPortrait model) is supported.")
    return PitchContourVAEModel(cfg) if cfg.use_pitch else VAEModel(cfg)


def load_a2m(ckpt: Path | str, config_yaml: Path | str | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> A2MModel:
    """Load the official A2M checkpoint strictly from ``state_dict['model']`` (legacy container, numpy scalars ok).

    ``config_yaml`` defaults to ``config.yaml`` beside the checkpoint. Wrong class or shapes raise a
    ModelFileError naming the keys.
    """
    ckpt = Path(ckpt)
    config_yaml = Path(config_yaml) if config_yaml is not None else ckpt.with_name("config.yaml")
    hp = read_config(config_yaml)
    data = load_checkpoint(ckpt, allow_numpy_scalars=True)
    if not isinstance(data, dict):
        raise ModelFileError(f"{ckpt} is not an audio-to-motion training checkpoint (expected a dict).")
    state = data.get("state_dict", data)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    else:
        raise ModelFileError(f"{ckpt} has no state_dict['model'] (keys: {sorted(data)[:8]}); expected the official "
                             "Real3DPortrait audio2secc_vae checkpoint.")
    # Official inference builds the flow prior whatever ``use_flow`` says; the weights decide here too.
    has_flow = any(k.startswith("vae.prior_flow.") for k in state)
    if bool(hp.get("use_flow", True)) != has_flow:
        log.warning("%s: config.yaml says use_flow=%s but the checkpoint %s flow-prior weights; following the "
                    "checkpoint", config_yaml, hp.get("use_flow", True), "has" if has_flow else "has no")
    model = build_a2m(dict(hp, use_flow=has_flow))
    check_state_dict(state, model, ckpt, what=f"audio-to-motion {type(model).__name__} (config {config_yaml.name})")
    model.load_state_dict(state, strict=True)
    log.info("Loaded %s from %s", type(model).__name__, ckpt)
    return model.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------------- inference


def prior_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The prior sample, reproducible on any device.

    Official: ``torch.manual_seed(seed)`` then ``Normal(0,1).sample(shape)`` on the CPU generator, i.e.
    ``torch.normal`` from a freshly seeded CPU stream; a private generator gives the same numbers without
    touching the global RNG.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.normal(torch.zeros(shape), torch.ones(shape), generator=gen)


@torch.no_grad()
def predict_expressions(model: A2MModel, hubert: torch.Tensor, f0: torch.Tensor | None, *, seed: int = 0,
                        temperature: float = 0.2, mouth_amp: float = 0.45, eye_amp: float = 1.0) -> torch.Tensor:
    """[T50,1024] HuBERT features (T50 a multiple of 8) + [T50] pitch (Hz) -> expressions [T50/2, 64] at 25 fps."""
    p = next(model.parameters())
    if hubert.shape[0] % 8:
        raise ValueError(f"HuBERT frames must be a multiple of 8 (official padding); got {hubert.shape[0]}")
    h = hubert.to(device=p.device, dtype=p.dtype)[None]
    f = None if f0 is None else f0.to(device=p.device, dtype=torch.float32)[None]
    if f is None and isinstance(model, PitchContourVAEModel):
        raise ValueError("This audio-to-motion model needs the pitch contour (use_pitch: true).")
    t25 = h.shape[1] // 2
    noise = prior_noise((1, model.vae.latent, model.vae.latent_length(t25)), seed) * float(temperature)
    out = model.infer(h, f, noise.to(device=p.device, dtype=p.dtype), mouth_amp=float(mouth_amp),
                      eye_amp=float(eye_amp))
    return out[0].float().cpu()


def resample_motion(exp25: torch.Tensor, fps: float, num_frames: int, src_fps: float = 25.0) -> torch.Tensor:
    """Expressions at ``src_fps`` -> ``num_frames`` frames at ``fps`` by linear interpolation in time.

    Frame i of the video is at time i/fps; beyond the last predicted frame the last value is held. At 25 fps
    this is the identity on the first ``num_frames`` frames (the official pipeline runs at 25 fps).
    """
    n = int(num_frames)
    if n <= 0:
        return exp25.new_zeros((0, exp25.shape[1]))
    if exp25.shape[0] == 0:
        return exp25.new_zeros((n, exp25.shape[1]))
    pos = torch.arange(n, dtype=torch.float64) * (float(src_fps) / float(fps))
    pos = pos.clamp(max=exp25.shape[0] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=exp25.shape[0] - 1)
    w = (pos - lo.to(torch.float64)).to(exp25.dtype)[:, None]
    return exp25[lo] * (1 - w) + exp25[hi] * w


def audio_to_motion(model: A2MModel, hubert, audio16k: torch.Tensor, fps: float, num_frames: int, *,
                    seed: int = 0, temperature: float = 0.2, mouth_amp: float = 0.45,
                    hubert_batch_size: int = 4, progress=None):
    """16 kHz audio -> :class:`Motion` with ``num_frames`` expression frames at ``fps``.

    ``audio16k``: [T] mono, or [C, T] as the official 16 kHz WAV (:func:`joygen_core.audio.prepare.to_motion_16k`):
    HuBERT reads its first channel, the pitch tracker the mean of its channels, as the official readers do.

    Official pipeline (Real3DPortrait / JoyGen ``inference_audio2motion.py``): HuBERT features zero-padded to a
    multiple of 8 frames, pitch fitted to them, one prior sample ``N(0,1) * temperature`` from the seeded CPU
    generator, flow reversed, decoded at 25 fps. Then resampled to the video's fps and frame count.
    """
    from ..audio.hubert import hubert_features
    from ..audio.pitch import fit_to, pitch_contour
    from .types import Motion

    if fps is None or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"fps must be a positive number; got {fps!r}")
    audio16k = torch.as_tensor(audio16k, dtype=torch.float32)
    if audio16k.ndim == 2 and audio16k.shape[0] > 1:
        first, mean = audio16k[0], audio16k.mean(0)
    else:
        first = mean = audio16k.reshape(-1)
    steps = [1]  # HuBERT's chunks, then one step for pitch + flow: the last report is (steps, steps)
    hubert_progress = None
    if progress is not None:
        def hubert_progress(done: int, total: int) -> None:
            steps[0] = total + 1
            progress(done, total + 1)

    feats = hubert_features(hubert, first, batch_size=hubert_batch_size, progress=hubert_progress, pad_to=8)
    f0 = fit_to(pitch_contour(mean), feats.shape[0]) if isinstance(model, PitchContourVAEModel) else None
    exp25 = predict_expressions(model, feats, f0, seed=seed, temperature=temperature, mouth_amp=mouth_amp)
    if progress is not None:
        progress(steps[0], steps[0])
    exp = resample_motion(exp25, float(fps), int(num_frames))
    meta = {"seed": int(seed), "temperature": float(temperature), "mouth_amp": float(mouth_amp),
            "frames_25fps": int(exp25.shape[0]), "audio_seconds": first.shape[0] / 16000.0}
    return Motion(exp=exp.contiguous(), fps=float(fps), meta=meta)
