"""Audio families in their official formats, random weights:

- ``whisper/tiny.pt``: OpenAI format ``{'dims', 'model_state_dict'}`` with the full tiny key set (encoder AND
  decoder, fp16 like the released file, full tiny dims).
- ``audio2motion/hubert/``: an HF folder as facebook/hubert-large-ls960-ft ships it (HubertForCTC
  ``pytorch_model.bin`` with legacy ``weight_g``/``weight_v`` keys, config, processor and tokenizer files) but
  small: 2 layers, yet 1024 wide as the audio-to-motion model needs.
- ``audio2motion/240210_real3dportrait_orig/audio2secc_vae/``: ``config.yaml`` + ``model_ckpt_steps_400000.ckpt``
  in the legacy (non-zip) torch container of a training run, with a numpy float64 in it.

The key tables here are written from the official module layouts, independently of joygen_core, so loading
them is a real test of the loaders' key mapping.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

WHISPER_TINY_DIMS = {"n_mels": 80, "n_vocab": 51865, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                     "n_audio_layer": 4, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}

A2M_DIR = "audio2motion/240210_real3dportrait_orig/audio2secc_vae"
A2M_CKPT = f"{A2M_DIR}/model_ckpt_steps_400000.ckpt"
HUBERT_DIR = "audio2motion/hubert"


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))


def _randn(g: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std


def _linear(g, out: int, inp: int, bias: bool = True) -> dict[str, torch.Tensor]:
    d = {"weight": _randn(g, out, inp, std=1 / math.sqrt(inp))}
    if bias:
        d["bias"] = _randn(g, out, std=0.02)
    return d


def _ln(g, n: int) -> dict[str, torch.Tensor]:
    return {"weight": 1 + _randn(g, n, std=0.1), "bias": _randn(g, n, std=0.05)}


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed audio positional table: sin | cos halves with geometric timescales up to 10000."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def whisper_state(g: torch.Generator, dims: dict) -> dict[str, torch.Tensor]:
    """Every key of OpenAI's ``Whisper`` state dict for ``dims`` (encoder ``encoder.*``, decoder ``decoder.*``)."""
    sd: dict[str, torch.Tensor] = {}

    def put(prefix: str, d: dict[str, torch.Tensor]) -> None:
        for k, v in d.items():
            sd[f"{prefix}.{k}"] = v

    def attn(prefix: str, n: int) -> None:
        put(f"{prefix}.query", _linear(g, n, n))
        put(f"{prefix}.key", _linear(g, n, n, bias=False))  # OpenAI: key has no bias
        put(f"{prefix}.value", _linear(g, n, n))
        put(f"{prefix}.out", _linear(g, n, n))

    n, m = dims["n_audio_state"], dims["n_mels"]
    sd["encoder.conv1.weight"] = _randn(g, n, m, 3, std=1 / math.sqrt(3 * m))
    sd["encoder.conv1.bias"] = _randn(g, n, std=0.02)
    sd["encoder.conv2.weight"] = _randn(g, n, n, 3, std=1 / math.sqrt(3 * n))
    sd["encoder.conv2.bias"] = _randn(g, n, std=0.02)
    sd["encoder.positional_embedding"] = _sinusoids(dims["n_audio_ctx"], n)
    for i in range(dims["n_audio_layer"]):
        p = f"encoder.blocks.{i}"
        attn(f"{p}.attn", n)
        put(f"{p}.attn_ln", _ln(g, n))
        put(f"{p}.mlp.0", _linear(g, 4 * n, n))
        put(f"{p}.mlp.2", _linear(g, n, 4 * n))
        put(f"{p}.mlp_ln", _ln(g, n))
    put("encoder.ln_post", _ln(g, n))
    t = dims["n_text_state"]
    sd["decoder.token_embedding.weight"] = _randn(g, dims["n_vocab"], t, std=0.02)
    sd["decoder.positional_embedding"] = _randn(g, dims["n_text_ctx"], t, std=0.01)
    for i in range(dims["n_text_layer"]):
        p = f"decoder.blocks.{i}"
        attn(f"{p}.attn", t)
        put(f"{p}.attn_ln", _ln(g, t))
        attn(f"{p}.cross_attn", t)
        put(f"{p}.cross_attn_ln", _ln(g, t))
        put(f"{p}.mlp.0", _linear(g, 4 * t, t))
        put(f"{p}.mlp.2", _linear(g, t, 4 * t))
        put(f"{p}.mlp_ln", _ln(g, t))
    put("decoder.ln", _ln(g, t))
    return sd


def write_whisper(root: Path, g: torch.Generator, dims: dict | None = None) -> Path:
    dims = dict(dims or WHISPER_TINY_DIMS)
    sd = {k: v.half() for k, v in whisper_state(g, dims).items()}  # the released tiny.pt is fp16
    path = root / "whisper" / "tiny.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": sd}, path)
    return path


def hubert_config(large: bool = False) -> dict:
    """facebook/hubert-large-ls960-ft's config; ``large=False`` keeps the layout but 2 layers and thin convs."""
    cfg = {
        "architectures": ["HubertForCTC"], "model_type": "hubert", "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu", "hidden_dropout": 0.1,
        "activation_dropout": 0.1, "attention_dropout": 0.1, "feat_proj_dropout": 0.1, "final_dropout": 0.1,
        "layerdrop": 0.1, "layer_norm_eps": 1e-5, "feat_extract_norm": "layer", "feat_extract_activation": "gelu",
        "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_bias": True, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": True, "apply_spec_augment": True, "mask_time_prob": 0.075, "mask_time_length": 10,
        "ctc_loss_reduction": "sum", "ctc_zero_infinity": False, "vocab_size": 32, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, "feat_proj_layer_norm": True, "initializer_range": 0.02,
    }
    if not large:
        cfg.update(num_hidden_layers=2, num_attention_heads=8, intermediate_size=512, conv_dim=[32] * 7,
                   num_conv_pos_embeddings=16)
    return cfg


def hubert_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released HubertForCTC ``pytorch_model.bin`` (layer-norm feature extractor, stable
    layer norm, legacy weight-norm names on the positional conv)."""
    h, ff, k = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_conv_pos_embeddings"]
    shapes: dict[str, tuple[int, ...]] = {"hubert.masked_spec_embed": (h,)}
    c_in = 1
    for i, (c, kk) in enumerate(zip(cfg["conv_dim"], cfg["conv_kernel"])):
        p = f"hubert.feature_extractor.conv_layers.{i}"
        shapes.update({f"{p}.conv.weight": (c, c_in, kk), f"{p}.conv.bias": (c,), f"{p}.layer_norm.weight": (c,),
                       f"{p}.layer_norm.bias": (c,)})
        c_in = c
    shapes.update({"hubert.feature_projection.layer_norm.weight": (c_in,),
                   "hubert.feature_projection.layer_norm.bias": (c_in,),
                   "hubert.feature_projection.projection.weight": (h, c_in),
                   "hubert.feature_projection.projection.bias": (h,),
                   "hubert.encoder.pos_conv_embed.conv.bias": (h,),
                   "hubert.encoder.pos_conv_embed.conv.weight_g": (1, 1, k),  # weight norm over dim 2
                   "hubert.encoder.pos_conv_embed.conv.weight_v": (h, h // cfg["num_conv_pos_embedding_groups"], k),
                   "hubert.encoder.layer_norm.weight": (h,), "hubert.encoder.layer_norm.bias": (h,)})
    for i in range(cfg["num_hidden_layers"]):
        p = f"hubert.encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({f"{p}.attention.{name}.weight": (h, h), f"{p}.attention.{name}.bias": (h,)})
        shapes.update({f"{p}.layer_norm.weight": (h,), f"{p}.layer_norm.bias": (h,),
                       f"{p}.feed_forward.intermediate_dense.weight": (ff, h),
                       f"{p}.feed_forward.intermediate_dense.bias": (ff,),
                       f"{p}.feed_forward.output_dense.weight": (h, ff), f"{p}.feed_forward.output_dense.bias": (h,),
                       f"{p}.final_layer_norm.weight": (h,), f"{p}.final_layer_norm.bias": (h,)})
    shapes.update({"lm_head.weight": (cfg["vocab_size"], h), "lm_head.bias": (cfg["vocab_size"],)})
    return shapes


def hubert_state(g: torch.Generator, cfg: dict) -> dict[str, torch.Tensor]:
    """Random weights for every key of :func:`hubert_shapes` (layer norms near 1, fan-in scaled weights)."""
    sd: dict[str, torch.Tensor] = {}
    for key, shape in hubert_shapes(cfg).items():
        name = key.rsplit(".", 1)[-1]
        if "layer_norm" in key and name == "weight":
            v = 1 + _randn(g, *shape, std=0.1)
        elif name == "weight_g":
            v = torch.rand(*shape, generator=g) * 2 + 2
        elif name == "bias" or "masked_spec_embed" in key:
            v = _randn(g, *shape, std=0.02)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            v = _randn(g, *shape, std=1 / math.sqrt(max(fan_in, 1)))
        sd[key] = v
    return sd


def write_hubert(root: Path, g: torch.Generator, large: bool = False) -> Path:
    folder = root / HUBERT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hubert_config(large)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.save(hubert_state(g, cfg), folder / "pytorch_model.bin")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0, "return_attention_mask": True, "sampling_rate": 16000}))
    letters = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "do_lower_case": False, "word_delimiter_token": "|", "tokenizer_class": "Wav2Vec2CTCTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return folder


# ------------------------------------------------------------------------------------------ audio to motion

A2M_CONFIG_YAML = """\
accumulate_grad_batches: 1
amp: false
audio_type: hubert
base_config:
- egs/egs_bases/audio2motion/vae.yaml
batch_size: 4
binary_data_dir: data/binary/th1kh
blink_mode: blink_unit
ds_name: null
init_from_ckpt: ''
lambda_kl: 0.02
lambda_l2_reg_exp: 0.1
lambda_mse_exp: 0.5
lambda_mse_lm3d: 0.5
lr: 0.0005
max_updates: 400000
motion_type: exp
ref_id_mode: first_frame
sample_min_length: 32
syncnet_ckpt_dir: ''
task_cls: tasks.os_avatar.audio2motion_task.Audio2MotionTask
use_eye_amp_embed: {eye}
use_flow: {flow}
use_kv_dataset: true
use_mouth_amp_embed: {mouth}
use_pitch: {pitch}
val_check_interval: 2000
work_dir: checkpoints/240210_real3dportrait_orig/audio2secc_vae
"""


def _wn_conv(g, prefix: str, out: int, inp: int, k: int, sd: dict) -> None:
    v = _randn(g, out, inp, k)
    sd[f"{prefix}.weight_g"] = (torch.rand(out, 1, 1, generator=g) * 0.5 + 0.25) * 1.0
    sd[f"{prefix}.weight_v"] = v
    sd[f"{prefix}.bias"] = _randn(g, out, std=0.05)


def _wavenet(g, prefix: str, hidden: int, k: int, layers: int, gin: int, sd: dict) -> None:
    _wn_conv(g, f"{prefix}.cond_layer", 2 * hidden * layers, gin, 1, sd)
    for i in range(layers):
        _wn_conv(g, f"{prefix}.in_layers.{i}", 2 * hidden, hidden, k, sd)
    for i in range(layers):
        _wn_conv(g, f"{prefix}.res_skip_layers.{i}", 2 * hidden if i < layers - 1 else hidden, hidden, 1, sd)


def _conv(g, prefix: str, out: int, inp: int, k: int, sd: dict, bias: bool = True, transposed: bool = False):
    shape = (inp, out, k) if transposed else (out, inp, k)
    sd[f"{prefix}.weight"] = _randn(g, *shape, std=1 / math.sqrt(inp * k))
    if bias:
        sd[f"{prefix}.bias"] = _randn(g, out, std=0.05)


def _bn(g, prefix: str, n: int, sd: dict) -> None:
    sd[f"{prefix}.weight"] = 1 + _randn(g, n, std=0.1)
    sd[f"{prefix}.bias"] = _randn(g, n, std=0.1)
    sd[f"{prefix}.running_mean"] = _randn(g, n, std=0.1)
    sd[f"{prefix}.running_var"] = torch.rand(n, generator=g) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(400000, dtype=torch.long)


def a2m_state(g: torch.Generator, use_pitch: bool = True, mouth: bool = True, eye: bool = False,
              flow: bool = True) -> dict[str, torch.Tensor]:
    """The official PitchContourVAEModel (or VAEModel) state dict, keys as in Real3DPortrait's modules."""
    f = 128 if use_pitch else 64
    sd: dict[str, torch.Tensor] = {}
    sd["blink_embed.weight"] = _randn(g, 2, f, std=f**-0.5)
    _conv(g, "mel_encoder.0", f, 1024, 3, sd, bias=False)
    _bn(g, "mel_encoder.1", f, sd)
    _conv(g, "mel_encoder.3", f, f, 3, sd, bias=False)
    if use_pitch:
        sd["pitch_embed.weight"] = _randn(g, 300, f, std=f**-0.5)
        _conv(g, "pitch_encoder.0", f, f, 3, sd, bias=False)
        _bn(g, "pitch_encoder.1", f, sd)
        _conv(g, "pitch_encoder.3", f, f, 3, sd, bias=False)
        cond = 3 * f
        if mouth:
            sd["mouth_amp_embed"] = _randn(g, f)
            cond += f
        if eye:
            sd["eye_amp_embed"] = _randn(g, f)
            cond += f
        sd["cond_proj.weight"] = _randn(g, f, cond, std=1 / math.sqrt(cond))
        sd["cond_proj.bias"] = _randn(g, f, std=0.05)
    _conv(g, "vae.g_pre_net.0", f, f, 8, sd)
    _conv(g, "vae.encoder.pre_net.0", 256, 64, 8, sd)
    _wavenet(g, "vae.encoder.wn", 256, 5, 8, f, sd)
    _conv(g, "vae.encoder.out_proj", 32, 256, 1, sd)
    if flow:
        for i in range(0, 8, 2):  # 4 couplings; the odd entries are parameter-free flips
            p = f"vae.prior_flow.flows.{i}"
            _conv(g, f"{p}.pre", 64, 8, 1, sd)
            _wavenet(g, f"{p}.enc", 64, 3, 4, f, sd)
            _conv(g, f"{p}.post", 8, 64, 1, sd)
    _conv(g, "vae.decoder.pre_net.0", 256, 16, 4, sd, transposed=True)
    _wavenet(g, "vae.decoder.wn", 256, 5, 4, f, sd)
    _conv(g, "vae.decoder.out_proj", 64, 256, 1, sd)
    return sd


def write_a2m(root: Path, g: torch.Generator, folder: str = A2M_DIR, use_pitch: bool = True, mouth: bool = True,
              eye: bool = False, flow: bool = True) -> Path:
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    yb = {True: "true", False: "false"}
    (out / "config.yaml").write_text(A2M_CONFIG_YAML.format(pitch=yb[use_pitch], mouth=yb[mouth], eye=yb[eye],
                                                            flow=yb[flow]))
    state = a2m_state(g, use_pitch, mouth, eye, flow)
    container = {
        "epoch": 57,
        "global_step": 400000,
        "checkpoint_callback_best": np.float64(0.0423),  # a training container holds numpy scalars
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1.5e-4, "betas": (0.9, 0.98), "eps": 1e-9,
                                                             "weight_decay": 0.0, "params": [0, 1, 2]}]}],
        "lr_schedulers": [],
        "state_dict": {"model": state},
    }
    path = out / "model_ckpt_steps_400000.ckpt"
    torch.save(container, path, _use_new_zipfile_serialization=False)
    return path


def write(root: Path, rng: np.random.Generator) -> None:
    g = _gen(rng)
    write_whisper(root, g)
    write_hubert(root, g)
    write_a2m(root, g)
