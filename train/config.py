"""The training configuration: dataclasses loaded from YAML, every key checked.

A config file has the sections below (all optional but ``model`` and ``data``); an unknown key anywhere, or a
value of the wrong kind, stops the run before anything is built, with the section, the key and the valid
choices in the message. Relative paths in ``model``, ``output`` and ``data.root`` are taken relative to the
config file; paths given on the command line (``--set``, ``--vae`` ...) relative to the working directory.
The ``data`` section is handed to ``train.dataset.build_dataset`` as a plain dict (that module checks its keys).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joygen_core.errors import JoyGenError


class ConfigError(JoyGenError):
    """A training config file or a command-line override is invalid."""


# Loss presets. paper: section 4.5 (l1 = 2 on latents, l2 = 1 on pixels). code: the public train_joygen.py
# (1 x latent + 2 x pixel, the pixel term on the lower half of the face only).
LOSS_PRESETS = {
    "paper": {"latent_weight": 2.0, "pixel_weight": 1.0, "pixel_region": "full"},
    "code": {"latent_weight": 1.0, "pixel_weight": 2.0, "pixel_region": "lower_half"},
}


@dataclass
class ModelConfig:
    init: str = "scratch"  # scratch | joygen | musetalk
    unet: str | None = None  # joygen / musetalk: the diffusers UNet folder to start from
    unet_config: str | None = None  # scratch: a diffusers UNet config.json
    vae: str | None = None  # the frozen sd-vae-ft-mse folder
    vae_config: str | None = None  # smoke runs only: a random frozen VAE built from this config.json


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max gradient norm; null = no clipping


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | cosine
    warmup_steps: int = 0  # linear warm-up from 0 (official LambdaLR convention)
    min_lr: float = 0.0  # cosine: the lr reached at max_steps


@dataclass
class LossConfig:
    preset: str | None = "paper"  # paper | code | null (then give all three below)
    latent_weight: float | None = None  # l1 (overrides the preset)
    pixel_weight: float | None = None  # l2 (overrides the preset)
    pixel_region: str | None = None  # full | lower_half (the sample's mask)


@dataclass
class TrainConfig:
    batch_size: int = 16  # per process (GPU)
    grad_accum: int = 1
    max_steps: int = 1000  # optimiser steps
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    num_workers: int = 0  # DataLoader workers per process
    cpu: bool = False  # force the CPU even where a GPU is present
    gradient_checkpointing: bool = False  # UNet and VAE decoder: less memory, ~30% slower


@dataclass
class OutputConfig:
    dir: str = "runs/joygen"
    checkpoint_every: int = 5000  # steps; a checkpoint is also written at the last step
    keep_last: int = 3  # older checkpoints are deleted; 0 keeps all
    log_every: int = 10  # steps between TensorBoard / console records
    tensorboard: bool = True


@dataclass
class ValidationConfig:
    every: int = 5000  # steps; 0 = never
    samples: int = 4  # first samples of the split, one grid row each
    split: str = "val"  # the split passed to build_dataset


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def loss_weights(self) -> tuple[float, float, str]:
        """(latent weight, pixel weight, pixel region) after the preset is applied."""
        return self.loss.latent_weight, self.loss.pixel_weight, self.loss.pixel_region


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_CLASSES = {"model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "loss": LossConfig,
                    "train": TrainConfig, "output": OutputConfig, "validation": ValidationConfig}
PATH_KEYS = {("model", "unet"), ("model", "unet_config"), ("model", "vae"), ("model", "vae_config"),
             ("output", "dir")}
# Resolved by load_config like the keys above (relative to the file / the working directory); not checked here.
DATA_PATH_KEYS = {("data", "root")}
CHOICES = {("model", "init"): ("scratch", "joygen", "musetalk"), ("optim", "name"): ("adam", "adamw"),
           ("schedule", "name"): ("constant", "cosine"), ("loss", "preset"): ("paper", "code", None),
           ("loss", "pixel_region"): ("full", "lower_half", None),
           ("train", "mixed_precision"): ("no", "fp16", "bf16")}


def _unknown(key: str, where: str, valid) -> ConfigError:
    return ConfigError(f"unknown config key '{key}' in {where}; valid keys: {', '.join(sorted(valid))}")


def _coerce(section: str, name: str, typ: str, value: Any) -> Any:
    """Check one value against its field's annotation (kept as a string by ``from __future__``)."""
    where = f"{section}.{name}"
    optional = "None" in typ
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} must not be null")
    if typ.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if typ.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if typ.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if typ.startswith("str"):
        if value is False and (section, name) == ("train", "mixed_precision"):
            return "no"  # YAML 1.1 reads an unquoted `no` as false
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    if typ.startswith("list[float]"):
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of numbers; got {value!r}")
        return [float(v) for v in value]
    raise AssertionError(f"unhandled field type {typ} for {where}")


def config_from_dict(raw: dict | None, base_dir: Path | str | None = None) -> Config:
    """Build and check a :class:`Config` from a parsed YAML mapping; relative paths resolved against ``base_dir``."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a mapping of sections; got {type(raw).__name__}")
    for key in raw:
        if key not in SECTIONS:
            raise _unknown(str(key), "the top level", SECTIONS)
    cfg = Config()
    for section, cls in _SECTION_CLASSES.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping; got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise _unknown(str(key), f"section '{section}'", fields)
            value = _coerce(section, key, str(fields[key].type), value)
            if (section, key) in PATH_KEYS and value is not None and base_dir is not None:
                value = str((Path(base_dir) / Path(value).expanduser()).resolve())
            kwargs[key] = value
        setattr(cfg, section, cls(**kwargs))
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section 'data' must be a mapping (passed to build_dataset); got {data!r}")
    cfg.data = dict(data)
    _finish(cfg)
    return cfg


def _finish(cfg: Config) -> None:
    """Apply the loss preset and check values that depend on each other."""
    for (section, key), choices in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            shown = ", ".join("null" if c is None else c for c in choices)
            raise ConfigError(f"{section}.{key} is {value!r}; choose one of: {shown}")
    loss = cfg.loss
    preset = LOSS_PRESETS.get(loss.preset, {})
    for key in ("latent_weight", "pixel_weight", "pixel_region"):
        if getattr(loss, key) is None:
            if key not in preset:
                raise ConfigError(f"loss.{key} is not set and loss.preset is null: set loss.preset (paper | code) "
                                  f"or give loss.latent_weight, loss.pixel_weight and loss.pixel_region")
            setattr(loss, key, preset[key])
    if loss.latent_weight < 0 or loss.pixel_weight < 0 or loss.latent_weight + loss.pixel_weight == 0:
        raise ConfigError("loss weights must be >= 0 and not both 0")
    m = cfg.model
    if m.init == "scratch" and not m.unet_config:
        raise ConfigError("model.init is scratch: give model.unet_config (a diffusers UNet config.json)")
    if m.init in ("joygen", "musetalk") and not m.unet:
        raise ConfigError(f"model.init is {m.init}: give model.unet (the {m.init} UNet folder to start from)")
    if bool(m.vae) == bool(m.vae_config):
        raise ConfigError("give exactly one of model.vae (the sd-vae-ft-mse folder) and model.vae_config "
                          "(a random VAE for smoke runs); set the other to null")
    o = cfg.optim
    if o.lr <= 0 or len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas) or o.eps <= 0 or o.weight_decay < 0:
        raise ConfigError(f"optim: lr must be > 0, betas two numbers in [0,1), eps > 0, weight_decay >= 0; got {o}")
    if o.grad_clip is not None and o.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip must be > 0 or null; got {o.grad_clip}")
    t = cfg.train
    for key in ("batch_size", "grad_accum", "max_steps"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1; got {getattr(t, key)}")
    if t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0; got {t.num_workers}")
    s = cfg.schedule
    if s.warmup_steps < 0 or s.min_lr < 0:
        raise ConfigError("schedule.warmup_steps and schedule.min_lr must be >= 0")
    if s.name == "cosine" and s.min_lr > o.lr:
        raise ConfigError(f"schedule.min_lr ({s.min_lr}) is above optim.lr ({o.lr})")
    out = cfg.output
    if out.checkpoint_every < 1 or out.keep_last < 0 or out.log_every < 1:
        raise ConfigError("output.checkpoint_every and output.log_every must be >= 1, output.keep_last >= 0")
    v = cfg.validation
    if v.every < 0 or v.samples < 0:
        raise ConfigError("validation.every and validation.samples must be >= 0")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` (value in YAML syntax: ``1e-4``, ``null``, ``[0.9, 0.99]``) -> (path, value)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"override '{text}': name a section and a key, e.g. optim.lr=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({exc})") from exc
    return path, parsed


def load_config(path: Path | str, overrides: list[str] | None = None) -> Config:
    """Read a YAML training config, apply ``section.key=value`` overrides, check everything."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"training config {path} is not valid YAML: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"training config {path} must be a mapping of sections; got {type(raw).__name__}")
    base = path.parent.resolve()
    # Paths in the file are relative to the file; make them absolute before command-line values join in.
    for section, key in PATH_KEYS | DATA_PATH_KEYS:
        values = raw.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = str((base / Path(values[key]).expanduser()).resolve())
    for text in overrides or []:
        keys, value = parse_override(text)
        if tuple(keys) in PATH_KEYS | DATA_PATH_KEYS and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())
        node = raw
        for k in keys[:-1]:
            if k not in node or node[k] is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': {k} is not a section")
        node[keys[-1]] = value
    try:
        return config_from_dict(raw, base_dir=None)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
