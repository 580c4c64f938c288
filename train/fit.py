"""The trainer of JoyGen's editing UNet (``python -m train fit --config FILE``).

One step, per sample (paper section 4.5; REFERENCE.md section 7): the frozen VAE encodes the masked target,
the reference, the mouth depth and the target (posterior mean, no grad); the UNet predicts the target latent
from concat(masked, reference, depth) and the audio tokens in one forward at timestep 0; the loss is
``latent_weight * L1(latent) + pixel_weight * L1(pixel)``, the pixel term decoded through the frozen VAE decoder
(with grad), over the whole face or only its lower half (the sample's mask, the public code's choice).

Runs on ``accelerate``: mixed precision, gradient accumulation and multi-GPU / multi-node (``accelerate launch
-m train fit ...``) come from the config and the launcher, not from code changes. Checkpoints
(``<output>/checkpoints/step_XXXXXX/``) hold ``unet/`` in diffusers ``save_pretrained`` format (what the editing
node loads) plus the optimiser, schedule, gradient scaler, every RNG state and the data position, so a resumed
run repeats the uninterrupted one exactly. They are written into a hidden folder and renamed when complete.

Differences from the public ``train_joygen.py`` on purpose: the depth really reaches the model (the dataset
displaces and drops it; the public code's missing displacement function silently disabled it), the VAE
encodes with the posterior mean (the public code samples, unseeded), and samples are drawn by a seeded
resumable sampler, each with its own augmentation seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from joygen_core.edit.editor import predict_latents, unet_input
from joygen_core.edit.models import (
    MUSETALK_IN_CHANNELS,
    UNET_IN_CHANNELS,
    check_unet_config,
    load_unet,
    load_vae,
    read_config,
)
from joygen_core.errors import JoyGenError
from joygen_core.weights import load_checkpoint

from .config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

SAMPLE_KEYS = ("target", "reference", "masked", "depth", "audio", "mask")
CHECKPOINT_RE = re.compile(r"^step_(\d{6,})$")
STATE_FILE = "trainer_state.json"  # written last: a folder without it is not a checkpoint
VALIDATION_STREAM = 1 << 30  # the "epoch" of the fixed validation samples' seeds, apart from training epochs


class CheckpointError(JoyGenError):
    """A checkpoint cannot be written or read (disk full, missing files, a different run)."""


class DatasetContractError(JoyGenError):
    """The dataset's samples do not follow the trainer's contract (keys, shapes)."""


@dataclass
class FitResult:
    """What a run did: one record per optimiser step it ran, the step it ended at, its last checkpoint."""

    records: list[dict] = field(default_factory=list)
    step: int = 0
    start_step: int = 0
    output_dir: Path | None = None
    last_checkpoint: Path | None = None

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


# ----------------------------------------------------------------------------------------------- data order


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of ``epoch``'s order (independent of workers/resume)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableBatchSampler:
    """Endless seeded batches: each epoch a fresh permutation, cut into global batches of ``batch_size x world``.

    Process ``rank`` takes its slice of every global batch; the sampler starts at global batch ``start`` so a
    resumed run reads exactly what the uninterrupted one would have. Yields ``[(index, epoch, sample_seed), ...]``.
    The incomplete last global batch of an epoch is dropped (official: ``drop_last=True``).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_epoch = num_samples // (batch_size * world_size)
        if self.per_epoch < 1:
            raise ConfigError(f"the dataset has {num_samples} samples, fewer than one global batch "
                              f"(train.batch_size {batch_size} x {world_size} processes)")

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self):
        b = self.start
        epoch, order = None, None
        while True:
            e, pos = divmod(b, self.per_epoch)
            if e != epoch:
                epoch, order = e, self.order(e)
            lo = (pos * self.world_size + self.rank) * self.batch_size
            yield [(int(order[lo + j]), e, sample_seed(self.seed, e, lo + j)) for j in range(self.batch_size)]
            b += 1


class SeededSamples(torch.utils.data.Dataset):
    """Reads ``dataset[index]`` with python/numpy/torch RNGs seeded for that sample, then restores them.

    So augmentations (depth displacement and drop, crops, jitter) repeat whatever the worker count or a
    resume, and reading samples in the main process leaves the training RNG stream untouched. A dataset with
    its own seeded draws and ``set_epoch`` (train/dataset.py) is told the sample's epoch, in whichever worker.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        index, epoch, seed = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)


def check_batch(batch: Any) -> None:
    """Name the first way a batch breaks the sample contract (see train/dataset.py)."""
    if not isinstance(batch, dict):
        raise DatasetContractError(f"dataset samples must be dicts; got {type(batch).__name__}")
    missing = [k for k in SAMPLE_KEYS if k not in batch]
    if missing:
        raise DatasetContractError(f"dataset samples lack {', '.join(missing)}; they need {', '.join(SAMPLE_KEYS)}")
    t = batch["target"]
    if t.ndim != 4 or t.shape[1] != 3:
        raise DatasetContractError(f"sample 'target' must be [3,H,W]; got {list(t.shape[1:])}")
    for k in ("reference", "masked", "depth"):
        if batch[k].shape != t.shape:
            raise DatasetContractError(f"sample '{k}' is {list(batch[k].shape[1:])}, 'target' {list(t.shape[1:])}")
    if batch["mask"].shape[1:] != (1, *t.shape[2:]):
        raise DatasetContractError(f"sample 'mask' must be [1,H,W]; got {list(batch['mask'].shape[1:])}")
    a = batch["audio"]
    if a.ndim != 3:
        raise DatasetContractError(f"sample 'audio' must be [tokens, dim] (e.g. [50,384]); got {list(a.shape[1:])}")
    if t.shape[2] % 8 or t.shape[3] % 8:
        raise DatasetContractError(f"the face crops are {t.shape[2]}x{t.shape[3]}; the VAE needs sides divisible by 8")


# --------------------------------------------------------------------------------------------------- models


def _read_unet_config(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        return read_config(p, "UNet config")
    if not p.is_file():
        raise ConfigError(f"model.unet_config {p} does not exist")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.unet_config {p} is not valid JSON ({exc})") from exc


def widen_musetalk(unet8: torch.nn.Module) -> torch.nn.Module:
    """A MuseTalk UNet (8 input channels) -> JoyGen's 12: every weight copied, the 4 depth channels of conv_in zero.

    With zero depth weights the widened UNet computes exactly what MuseTalk did, whatever the depth input.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cin = unet8.config.in_channels
    if cin != MUSETALK_IN_CHANNELS:
        raise ConfigError(f"model.init is musetalk but the UNet has {cin} input channels, not "
                          f"{MUSETALK_IN_CHANNELS}; for a 12-channel JoyGen UNet use model.init: joygen")
    config = {k: v for k, v in dict(unet8.config).items() if not k.startswith("_")}
    config["in_channels"] = UNET_IN_CHANNELS
    check_unet_config(config, "the widened MuseTalk UNet")
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(config)
    state = {k: v.detach().clone() for k, v in unet8.state_dict().items()}
    w = state["conv_in.weight"]
    wide = torch.zeros(w.shape[0], UNET_IN_CHANNELS, *w.shape[2:], dtype=w.dtype)
    wide[:, :MUSETALK_IN_CHANNELS] = w
    state["conv_in.weight"] = wide
    unet.load_state_dict(state, strict=True, assign=True)
    return unet


def build_unet(cfg: Config) -> torch.nn.Module:
    """The trainable UNet as ``model.init`` says: from a config (seeded), the JoyGen folder, or a widened MuseTalk."""
    from diffusers import UNet2DConditionModel

    m = cfg.model
    if m.init == "scratch":
        config = _read_unet_config(m.unet_config)
        check_unet_config(config, m.unet_config)
        torch.manual_seed(cfg.train.seed)
        unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    elif m.init == "joygen":
        unet = load_unet(m.unet)
    else:
        unet = widen_musetalk(load_unet(m.unet, check=False))
    return unet.float().train().requires_grad_(True)


def build_vae(cfg: Config) -> torch.nn.Module:
    """The frozen VAE: the sd-vae-ft-mse folder, or (smoke runs) a seeded random one from ``model.vae_config``."""
    from diffusers import AutoencoderKL

    if cfg.model.vae:
        vae = load_vae(cfg.model.vae)
    else:
        p = Path(cfg.model.vae_config)
        try:
            config = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.vae_config {p} is not a readable JSON file ({exc})") from exc
        gen_state = torch.get_rng_state()
        torch.manual_seed(cfg.train.seed + 1)
        vae = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        torch.set_rng_state(gen_state)
        log.warning("model.vae_config: using a RANDOM frozen VAE (%s); only for smoke runs", p)
    return vae.float().eval().requires_grad_(False)


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optim
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def lr_factor(cfg: Config, step: int) -> float:
    """The lr multiplier after ``step`` optimiser steps: linear warm-up, then constant or cosine to min_lr."""
    s, lr = cfg.schedule, cfg.optim.lr
    if step < s.warmup_steps:
        return step / max(1, s.warmup_steps)
    if s.name == "constant":
        return 1.0
    span = max(1, cfg.train.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    floor = s.min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))


# ----------------------------------------------------------------------------------------------- the step


def encode_latents(vae, images: torch.Tensor, scale: float) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(images).latent_dist.mean.float() * scale


def compute_loss(unet, vae, batch: dict, cfg: Config, scale: float) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch and its terms (detached floats) as ``{"latent", "pixel"}``."""
    b = batch["target"].shape[0]
    both = torch.cat([batch["masked"], batch["reference"], batch["depth"], batch["target"]])
    masked, reference, depth, target = encode_latents(vae, both, scale).split(b)
    pred = predict_latents(unet, unet_input(masked, reference, depth), batch["audio"]).float()
    latent = (pred - target).abs().mean()
    lw, pw, region = cfg.loss_weights
    if pw > 0:
        image = vae.decode(pred / scale).sample.float()
        if image.shape != batch["target"].shape:
            raise DatasetContractError(f"the VAE decodes {list(image.shape[1:])} from these latents but the "
                                       f"targets are {list(batch['target'].shape[1:])}")
        diff = (image - batch["target"].float()).abs()
        if region == "lower_half":
            weight = batch["mask"].float().expand_as(diff)
            pixel = (diff * weight).sum() / weight.sum().clamp_min(1.0)
        else:
            pixel = diff.mean()
    else:
        pixel = torch.zeros((), device=latent.device)
    loss = lw * latent + pw * pixel
    return loss, {"latent": latent.detach(), "pixel": pixel.detach()}


# ----------------------------------------------------------------------------------------------- RNG state


def rng_state() -> dict:
    """Every RNG the process uses, as tensors/ints only (loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "pos": int(pos), "has_gauss": int(has_gauss),
                                                    "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning("resume: the checkpoint has %d CUDA RNG states, this machine %d GPUs; CUDA RNG not restored",
                        len(states), torch.cuda.device_count())


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first: ``step_XXXXXX`` folders holding the state file and ``unet/``."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / "unet" / "config.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_latest(output_dir: Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def save_checkpoint(accelerator, unet, optimizer, scheduler, cfg: Config, output_dir: Path, step: int,
                    data_position: int) -> Path:
    """Write ``checkpoints/step_XXXXXX`` atomically: into ``.tmp-step_XXXXXX``, synced, then renamed.

    A crash or a full disk leaves at most the hidden temporary folder, which no resume picks up and the next
    run deletes; the previous checkpoints stay intact.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as exc:
            error = exc
    accelerator.wait_for_everyone()
    try:
        if error is None:
            torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    except OSError as exc:
        error = exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and error is None:
        try:
            accelerator.unwrap_model(unet).save_pretrained(tmp / "unet", safe_serialization=True)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            state = {"step": step, "data_position": data_position, "batch_size": cfg.train.batch_size,
                     "grad_accum": cfg.train.grad_accum, "world_size": accelerator.num_processes,
                     "seed": cfg.train.seed, "config": cfg.to_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            _fsync_tree(tmp)
            if final.exists():  # a re-run over the same step: replace the old copy only once the new one is whole
                old = root / f".old-step_{step:06d}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException as exc:  # noqa: B036 - clean up after anything, re-raised below
            error = exc
            shutil.rmtree(tmp, ignore_errors=True)
    ok = torch.tensor([0.0 if error is not None else 1.0], device=accelerator.device)
    ok = accelerator.gather(ok).min().item() if accelerator.num_processes > 1 else ok.item()
    if error is not None or ok < 1:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = find_latest(output_dir)
        if isinstance(error, OSError) or error is None:
            raise CheckpointError(
                f"could not write checkpoint step {step} to {final} ({error or 'failed on another process'}); "
                f"the previous checkpoint {previous or '(none)'} is intact. Free disk space and resume with "
                f"--resume latest.") from error
        raise error
    if accelerator.is_main_process and cfg.output.keep_last > 0:
        for old in list_checkpoints(output_dir)[:-cfg.output.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    log.info("saved checkpoint %s", final)
    return final


def resolve_resume(resume: str | Path | None, output_dir: Path) -> Path | None:
    """``latest`` -> the newest complete checkpoint of the run (None: start fresh); a path -> that checkpoint."""
    if resume is None:
        return None
    if str(resume) == "latest":
        latest = find_latest(output_dir)
        if latest is None:
            log.info("--resume latest: no checkpoint in %s yet; starting from step 0", checkpoint_dir(output_dir))
        return latest
    path = Path(resume)
    if not (path / STATE_FILE).is_file() or not (path / "unet" / "config.json").is_file():
        raise CheckpointError(f"{path} is not a complete trainer checkpoint (it needs {STATE_FILE} and unet/); "
                              f"give a checkpoints/step_XXXXXX folder or 'latest'")
    return path


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / STATE_FILE} is unreadable ({exc})") from exc


# ----------------------------------------------------------------------------------------------- validation


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1,1] [B,3,H,W] -> uint8 [B,H,W,3] (official rounding)."""
    return ((x.float().clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def validation_grid(unet, vae, batch: dict, scale: float) -> tuple[np.ndarray, dict]:
    """Rows = samples; columns masked | reference | depth | prediction | target. Also the validation L1 terms."""
    b = batch["target"].shape[0]
    both = torch.cat([batch["masked"], batch["reference"], batch["depth"], batch["target"]])
    masked, reference, depth, target = encode_latents(vae, both, scale).split(b)
    pred = predict_latents(unet, unet_input(masked, reference, depth), batch["audio"]).float()
    image = vae.decode(pred / scale).sample.float()
    terms = {"latent": (pred - target).abs().mean().item(), "pixel": (image - batch["target"]).abs().mean().item()}
    cols = [batch["masked"], batch["reference"], batch["depth"], image, batch["target"]]
    tiles = np.concatenate([_to_uint8(c) for c in cols], axis=2)  # [B,H,5W,3]
    return tiles.reshape(-1, *tiles.shape[2:]), terms


def run_validation(accelerator, unet, vae, val_batch: dict, scale: float, output_dir: Path, step: int) -> Path:
    from PIL import Image

    model = accelerator.unwrap_model(unet)
    model.eval()
    try:
        with accelerator.autocast():
            grid, terms = validation_grid(model, vae, val_batch, scale)
    finally:
        model.train()
    path = Path(output_dir) / "validation" / f"step_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    accelerator.log({"val/latent_l1": terms["latent"], "val/pixel_l1": terms["pixel"]}, step=step)
    if accelerator.trackers:
        try:
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("val/grid", grid, global_step=step, dataformats="HWC")
        except (ValueError, AttributeError):
            pass
    log.info("validation step %d: latent L1 %.5f, pixel L1 %.5f -> %s", step, terms["latent"], terms["pixel"], path)
    return path


def _collate(samples: list[dict]) -> dict:
    return torch.utils.data.default_collate(samples)


# --------------------------------------------------------------------------------------------------- fit


def fit(config: Config, dataset=None, val_dataset=None, *, resume: str | Path | None = None,
        stop_at: int | None = None) -> FitResult:
    """Train the editing UNet as ``config`` says; returns the per-step records.

    ``dataset`` / ``val_dataset``: map-style datasets of sample dicts (the contract of ``train/dataset.py``);
    built with ``build_dataset(config.data, split)`` when omitted. ``resume``: ``"latest"`` or a checkpoint
    folder. ``stop_at``: stop after that step without a final checkpoint, as a killed run would (tests; the
    schedule still follows ``train.max_steps``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = config
    output_dir = Path(cfg.output.dir)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                              gradient_accumulation_steps=cfg.train.grad_accum, cpu=cfg.train.cpu,
                              log_with="tensorboard" if cfg.output.tensorboard else None,
                              project_dir=str(output_dir))
    try:
        return _fit(accelerator, cfg, output_dir, dataset, val_dataset, resume, stop_at, set_seed)
    finally:
        accelerator.end_training()


def _fit(accelerator, cfg: Config, output_dir: Path, dataset, val_dataset, resume, stop_at, set_seed) -> FitResult:
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir(output_dir).glob(".tmp-step_*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        import yaml

        (output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    ckpt = resolve_resume(resume, output_dir)
    state = read_state(ckpt) if ckpt is not None else None
    if ckpt is None and list_checkpoints(output_dir) and accelerator.is_main_process:
        log.warning("%s already holds checkpoints; starting again from step 0 and replacing them as this run "
                    "reaches their steps (use --resume latest to continue instead)", checkpoint_dir(output_dir))

    if dataset is None:
        from .dataset import build_dataset

        dataset = build_dataset(cfg.data, "train")
    if val_dataset is None and cfg.validation.every > 0 and cfg.validation.samples > 0 and accelerator.is_main_process:
        from .dataset import build_dataset

        val_dataset = build_dataset(cfg.data, cfg.validation.split)

    # Model: from the checkpoint when resuming (its unet/ is the full model), else as model.init says.
    unet = load_unet(ckpt / "unet").float().train().requires_grad_(True) if ckpt is not None else build_unet(cfg)
    vae = build_vae(cfg)
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    vae.to(accelerator.device)
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    optimizer = make_optimizer(cfg, [p for p in unet.parameters() if p.requires_grad])
    scheduler = make_scheduler(cfg, optimizer)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    start_step, position = 0, 0
    if state is not None:
        if state.get("seed") != cfg.train.seed:
            raise CheckpointError(f"{ckpt} was written with train.seed {state.get('seed')}, this config has "
                                  f"{cfg.train.seed}: a resume must use the run's own seed")
        if (state.get("batch_size"), state.get("world_size")) != (cfg.train.batch_size, accelerator.num_processes):
            log.warning("resume: batch size x processes changed (%s x %s -> %s x %s); the data order will not "
                        "match the original run", state.get("batch_size"), state.get("world_size"),
                        cfg.train.batch_size, accelerator.num_processes)
        optimizer.load_state_dict(load_checkpoint(ckpt / "optimizer.pt"))
        scheduler.load_state_dict(load_checkpoint(ckpt / "scheduler.pt"))
        if accelerator.scaler is not None and (ckpt / "scaler.pt").is_file():
            accelerator.scaler.load_state_dict(load_checkpoint(ckpt / "scaler.pt"))
        start_step, position = int(state["step"]), int(state["data_position"])
        log.info("resumed from %s at step %d", ckpt, start_step)

    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed,
                                    accelerator.process_index, accelerator.num_processes, start=position)
    loader = torch.utils.data.DataLoader(
        SeededSamples(dataset), batch_sampler=sampler, num_workers=cfg.train.num_workers, collate_fn=_collate,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.train.seed))  # its base-seed draw leaves the global RNG alone
    val_batch = None
    if val_dataset is not None and len(val_dataset) == 0:
        log.warning("the validation split '%s' is empty: no validation images", cfg.validation.split)
    elif val_dataset is not None and cfg.validation.every > 0 and cfg.validation.samples > 0:
        n = min(cfg.validation.samples, len(val_dataset))
        vs = SeededSamples(val_dataset)
        val_batch = _collate([vs[(i, 0, sample_seed(cfg.train.seed, VALIDATION_STREAM, i))] for i in range(n)])
        val_batch = {k: v.to(accelerator.device) for k, v in val_batch.items()}

    if cfg.output.tensorboard:
        accelerator.init_trackers("tensorboard")
    if ckpt is not None:
        rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(load_checkpoint(rng_file))
        else:
            log.warning("resume: %s has no RNG state for process %d", ckpt, accelerator.process_index)

    result = FitResult(step=start_step, start_step=start_step, output_dir=output_dir, last_checkpoint=ckpt)
    max_steps, accum = cfg.train.max_steps, cfg.train.grad_accum
    step = start_step
    if accelerator.is_main_process:
        log.info("training from step %d to %d: %d samples, batch %d x %d processes x %d accumulation",
                 start_step, max_steps, len(dataset), cfg.train.batch_size, accelerator.num_processes, accum)
    batches = iter(loader)
    checked = False
    while step < max_steps and (stop_at is None or step < stop_at):
        totals = torch.zeros(3, device=accelerator.device)
        for _ in range(accum):
            batch = next(batches)
            position += 1
            if not checked:
                check_batch(batch)
                checked = True
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(unet):
                with accelerator.autocast():
                    loss, terms = compute_loss(unet, vae, batch, cfg, scale)
                if not torch.isfinite(loss):
                    raise JoyGenError(f"the loss became {loss.item()} at step {step + 1}; lower optim.lr or use "
                                      f"mixed_precision bf16/no")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.grad_clip is not None:
                    accelerator.clip_grad_norm_(unet.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            totals += torch.stack([loss.detach().float(), terms["latent"].float(), terms["pixel"].float()])
        lr = float(optimizer.param_groups[0]["lr"])  # the lr this step used
        if not optimizer.step_was_skipped:  # fp16 overflow: the scaler skipped this step; keep the schedule aligned
            scheduler.step()
        step += 1
        mean = accelerator.reduce(totals / accum, "mean") if accelerator.num_processes > 1 else totals / accum
        rec = {"step": step, "loss": float(mean[0]), "latent": float(mean[1]), "pixel": float(mean[2]),
               "lr": lr}
        result.records.append(rec)
        result.step = step
        if step % cfg.output.log_every == 0 or step == max_steps:
            accelerator.log({"loss/total": rec["loss"], "loss/latent_l1": rec["latent"],
                             "loss/pixel_l1": rec["pixel"], "lr": rec["lr"]}, step=step)
            if accelerator.is_main_process:
                log.info("step %d/%d  loss %.5f  latent %.5f  pixel %.5f  lr %.3g", step, max_steps, rec["loss"],
                         rec["latent"], rec["pixel"], rec["lr"])
        if val_batch is not None and accelerator.is_main_process and (
                step % cfg.validation.every == 0 or step == max_steps):
            run_validation(accelerator, unet, vae, val_batch, scale, output_dir, step)
        if step % cfg.output.checkpoint_every == 0 or step == max_steps:
            result.last_checkpoint = save_checkpoint(accelerator, unet, optimizer, scheduler, cfg, output_dir, step,
                                                     position)
    return result


# ----------------------------------------------------------------------------------------------- CLI


def add_fit_command(subparsers) -> argparse.ArgumentParser:
    """Register ``fit`` on an argparse sub-parser set (``python -m train fit ...``)."""
    p = subparsers.add_parser(
        "fit", help="train the editing UNet from a YAML config",
        description="Train JoyGen's editing UNet. Multi-GPU / multi-node: accelerate launch -m train fit ...")
    p.add_argument("--config", required=True, help="YAML training config (train/configs/*.yaml)")
    p.add_argument("--resume", help="'latest' (the newest checkpoint of the run, if any) or a checkpoint folder")
    p.add_argument("--max-steps", type=int, help="override train.max_steps (also the cosine schedule's length)")
    p.add_argument("--output", help="override output.dir")
    p.add_argument("--vae", help="override model.vae (the sd-vae-ft-mse folder; clears model.vae_config)")
    p.add_argument("--init-unet", help="override model.unet (the joygen / musetalk UNet folder to start from)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (YAML value), e.g. --set optim.lr=1e-4 --set data.root=clips")
    p.set_defaults(func=run_fit)
    return p


def run_fit(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.output:
        overrides.append(f"output.dir={args.output}")
    if args.vae:
        overrides += [f"model.vae={args.vae}", "model.vae_config=null"]
    if args.init_unet:
        overrides.append(f"model.unet={args.init_unet}")
    cfg = load_config(args.config, overrides)
    result = fit(cfg, resume=args.resume)
    if result.records:
        print(f"trained steps {result.start_step + 1}..{result.step}: loss {result.records[0]['loss']:.5f} -> "
              f"{result.records[-1]['loss']:.5f}; last checkpoint {result.last_checkpoint}")
    else:
        print(f"nothing to train: already at step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0
