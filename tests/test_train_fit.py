"""The trainer: overfitting, exact resume, checkpoints the editor loads, MuseTalk widening, config errors, atomicity."""

from __future__ import annotations

import errno
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from factory.edit import unet_config, write_unet, write_vae
from train import fit as fitmod
from train.config import ConfigError, config_from_dict, load_config
from train.fit import (
    CheckpointError,
    ResumableBatchSampler,
    build_unet,
    find_latest,
    fit,
    list_checkpoints,
    lr_factor,
)

SIZE = 64
CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
SMALL_UNET = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
ACCUM = {"batch_size": 1, "grad_accum": 2}  # 4 steps = 8 micro-batches = 2 epochs of 4 samples


class SyntheticClips(torch.utils.data.Dataset):
    """Samples with the train/dataset.py contract: smooth fixed faces, depth dropped at random (global torch RNG)."""

    def __init__(self, n: int = 4, size: int = SIZE, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        up = torch.nn.Upsample(size=(size, size), mode="bilinear", align_corners=False)
        self.target = up(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1)
        self.depth = up(torch.rand(n, 1, 4, 4, generator=g)).expand(-1, 3, -1, -1) * 2 - 1
        self.audio = torch.randn(n, 50, 384, generator=g)
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        t = self.target[i].clone()
        mask = torch.zeros(1, self.size, self.size)
        mask[:, self.size // 2:] = 1
        masked = t.clone()
        masked[:, self.size // 2:] = -1
        drop = bool(torch.rand(()) < 0.5)  # an augmentation: must repeat exactly after a resume
        depth = torch.full_like(t, -1.0) if drop else self.depth[i].clone()
        return {"target": t, "reference": self.target[(i + 1) % self.n].clone(), "masked": masked, "depth": depth,
                "audio": self.audio[i].clone(), "depth_dropped": torch.tensor(drop), "mask": mask}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_models")
    write_unet(root / "joygen", 0, **SMALL_UNET)
    write_unet(root / "musetalk", 3, in_channels=8, **SMALL_UNET)
    write_vae(root / "vae", 1)
    (root / "small_unet.json").write_text(json.dumps(unet_config(**SMALL_UNET)))
    return root


def make_config(models: Path, out: Path, **sections):
    raw = {"model": {"init": "joygen", "unet": str(models / "joygen"), "vae": str(models / "vae")},
           "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.01, "grad_clip": 1.0},
           "schedule": {"name": "cosine", "min_lr": 1e-4},
           "loss": {"preset": "code"},
           "train": {"batch_size": 2, "max_steps": 4, "cpu": True, "seed": 7},
           "output": {"dir": str(out), "checkpoint_every": 2, "keep_last": 0, "log_every": 1, "tensorboard": False},
           "validation": {"every": 0}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def uninterrupted(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_full")
    cfg = make_config(models, out, train=ACCUM, output={"tensorboard": True}, validation={"every": 4, "samples": 2})
    return fit(cfg, SyntheticClips(), SyntheticClips(2, seed=5))


def test_overfit_loss_falls(models, tmp_path):
    cfg = make_config(models, tmp_path, model={"init": "scratch", "unet": None,
                                               "unet_config": str(models / "small_unet.json")},
                      optim={"name": "adam", "lr": 1e-3, "grad_clip": None, "weight_decay": 0.0},
                      schedule={"name": "constant", "min_lr": 0.0},
                      loss={"preset": None, "latent_weight": 1.0, "pixel_weight": 0.1, "pixel_region": "full"},
                      train={"max_steps": 12}, output={"checkpoint_every": 1000})
    result = fit(cfg, SyntheticClips(2))
    first, last = result.records[0], result.records[-1]
    assert last["loss"] < 0.5 * first["loss"], [round(r["loss"], 4) for r in result.records]
    assert last["latent"] < 0.5 * first["latent"]


def test_resume_matches_uninterrupted(models, uninterrupted, tmp_path):
    full = uninterrupted.losses
    assert len(full) == 4 and all(torch.isfinite(torch.tensor(full)))
    cfg = make_config(models, tmp_path, train=ACCUM)  # no validation / TensorBoard: they must not change training
    killed = fit(cfg, SyntheticClips(), stop_at=2)  # "killed" after step 2's checkpoint
    assert killed.step == 2 and killed.losses == full[:2]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002"]
    resumed = fit(cfg, SyntheticClips(), resume="latest")
    assert resumed.start_step == 2 and [r["step"] for r in resumed.records] == [3, 4]
    assert resumed.losses == full[2:]  # bit-identical on the CPU
    assert [r["lr"] for r in resumed.records] == [r["lr"] for r in uninterrupted.records[2:]]
    # nothing left to do: a third start does no step
    again = fit(cfg, SyntheticClips(), resume="latest")
    assert again.records == [] and again.step == 4


def test_checkpoint_loads_in_the_editor(models, uninterrupted):
    from joygen_core.edit.editor import black_depth_latent, edit_faces, encode, to_vae_input
    from joygen_core.edit.models import load_edit_models

    ckpt = uninterrupted.last_checkpoint
    assert ckpt.name == "step_000004"
    assert {p.name for p in (ckpt / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    em = load_edit_models(ckpt / "unet", models / "vae", "cpu", torch.float32)
    faces = (torch.rand(2, SIZE, SIZE, 3) * 255).to(torch.uint8)
    masked = encode(em, to_vae_input(faces, lower_half_black=True))
    ref = encode(em, to_vae_input(faces))
    out = edit_faces(em, masked, ref, black_depth_latent(em, SIZE), torch.randn(2, 50, 384))
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == torch.uint8
    # the saved weights are the trained ones, not the initial ones
    init = load_edit_models(models / "joygen", models / "vae", "cpu", torch.float32).unet
    assert not torch.equal(em.unet.conv_in.weight, init.conv_in.weight)
    out_dir = uninterrupted.output_dir
    assert (out_dir / "validation" / "step_000004.png").is_file()
    assert list((out_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_musetalk_widening_keeps_musetalk_output(models, tmp_path):
    from joygen_core.edit.models import load_unet

    cfg = make_config(models, tmp_path, model={"init": "musetalk", "unet": str(models / "musetalk")})
    wide = build_unet(cfg).eval()
    narrow = load_unet(models / "musetalk", check=False)
    assert wide.config.in_channels == 12 and torch.equal(wide.conv_in.weight[:, 8:], torch.zeros_like(
        wide.conv_in.weight[:, 8:]))
    g = torch.Generator().manual_seed(0)
    x8, audio = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 50, 384, generator=g)
    t = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        ref = narrow(x8, t, encoder_hidden_states=audio).sample
        zero = wide(torch.cat([x8, torch.zeros(2, 4, 8, 8)], 1), t, encoder_hidden_states=audio).sample
        some = wide(torch.cat([x8, torch.randn(2, 4, 8, 8, generator=g)], 1), t, encoder_hidden_states=audio).sample
    torch.testing.assert_close(zero, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(some, ref, rtol=0, atol=1e-6)  # zero-initialised depth weights
    # a 12-channel UNet given as MuseTalk is refused
    bad = make_config(models, tmp_path, model={"init": "musetalk", "unet": str(models / "joygen")})
    with pytest.raises(ConfigError, match="12 input channels"):
        build_unet(bad)


def test_config_errors(models, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'lr_max' in section 'optim'; valid keys: .*betas"):
        make_config(models, tmp_path, optim={"lr_max": 1.0})
    with pytest.raises(ConfigError, match=r"unknown config key 'optimiser' in the top level; valid keys: .*optim"):
        config_from_dict({"optimiser": {}})
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        make_config(models, tmp_path, train={"batch_size": "16"})
    with pytest.raises(ConfigError, match="optim.name is 'sgd'; choose one of: adam, adamw"):
        make_config(models, tmp_path, optim={"name": "sgd"})
    with pytest.raises(ConfigError, match="exactly one of model.vae"):
        make_config(models, tmp_path, model={"vae_config": "x.json"})
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny_cpu.yaml").read_text() + "\nextra: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'extra'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        load_config(CONFIGS / "tiny_cpu.yaml", ["optim.lrr=1"])


def test_shipped_configs():
    paper = load_config(CONFIGS / "paper.yaml")
    assert (paper.optim.name, paper.optim.lr, paper.loss_weights) == ("adam", 1e-5, (2.0, 1.0, "full"))
    assert paper.train.batch_size == 16 and paper.train.mixed_precision in ("bf16", "fp16")
    code = load_config(CONFIGS / "code.yaml")
    assert (code.optim.name, code.optim.betas, code.optim.weight_decay, code.optim.grad_clip) == (
        "adamw", [0.9, 0.99], 0.01, 1.0)
    assert (code.schedule.name, code.schedule.min_lr, code.loss_weights) == ("cosine", 5e-6, (1.0, 2.0, "lower_half"))
    assert code.output.checkpoint_every == 5000
    tiny = load_config(CONFIGS / "tiny_cpu.yaml", ["train.max_steps=3"])
    assert tiny.train.cpu and tiny.train.mixed_precision == "no" and tiny.train.max_steps == 3
    assert Path(tiny.model.vae_config) == CONFIGS / "tiny_vae.json"  # relative to the config file
    # cosine: full lr after warm-up, min_lr at the end
    assert lr_factor(code, 0) == 1.0 and abs(lr_factor(code, 200000) * 1e-5 - 5e-6) < 1e-15


def test_checkpoint_write_is_atomic(models, tmp_path, monkeypatch):
    cfg = make_config(models, tmp_path, train={"max_steps": 4}, output={"checkpoint_every": 1})
    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint: half written, then the disk is full
                Path(f).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(fitmod.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left.*step_000001 is intact"):
        fit(cfg, SyntheticClips())
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]
    # a process killed mid-write leaves a hidden temporary folder or an incomplete one: never picked up
    (root / ".tmp-step_000003" / "unet").mkdir(parents=True)
    (root / "step_000005" / "unet").mkdir(parents=True)
    (root / "step_000005" / "unet" / "config.json").write_text("{}")
    assert find_latest(tmp_path) == root / "step_000001"
    monkeypatch.setattr(fitmod.torch, "save", real_save)
    resumed = fit(cfg, SyntheticClips(), resume="latest")
    assert resumed.start_step == 1 and resumed.step == 4
    assert not (root / ".tmp-step_000003").exists()
    with pytest.raises(CheckpointError, match="not a complete trainer checkpoint"):
        fit(cfg, SyntheticClips(), resume=root / "step_000005")


def test_sampler_resumes_and_shards():
    full = ResumableBatchSampler(10, 2, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(12)]  # crosses two epoch boundaries (5 batches per epoch)
    it = iter(ResumableBatchSampler(10, 2, seed=3, start=7))
    assert [next(it) for _ in range(5)] == first[7:]
    assert sorted(i for b in first[:5] for i, _, _ in b) == list(range(10))  # one epoch = every sample once
    assert {e for b in first for _, e, _ in b} == {0, 1, 2}
    assert first[:5] != first[5:10]  # a new order each epoch
    ranks = [iter(ResumableBatchSampler(10, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    shards = [[next(r) for _ in range(2)] for r in ranks]  # 2 global batches per epoch
    idx = sorted(i for s in shards for b in s for i, _, _ in b)
    assert idx == sorted(set(idx)) and len(idx) == 8
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        ResumableBatchSampler(3, 2, seed=0, world_size=2)


def test_cli_runs_the_tiny_config(models, tmp_path, monkeypatch, capsys, caplog):
    from train.__main__ import main

    fake = types.ModuleType("train.dataset")
    fake.build_dataset = lambda data_cfg, split="train": SyntheticClips(2 if split == "val" else 4)
    monkeypatch.setitem(sys.modules, "train.dataset", fake)
    args = ["fit", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--max-steps", "2", "--output", str(tmp_path / "run"),
            "--vae", str(models / "vae"), "--set", "output.checkpoint_every=1", "--set", "validation.every=2"]
    assert main(args) == 0
    assert "trained steps 1..2" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000001", "step_000002"]
    assert (tmp_path / "run" / "validation" / "step_000002.png").is_file()
    assert main([*args, "--resume", "latest", "--max-steps", "3"]) == 0
    assert find_latest(tmp_path / "run").name == "step_000003"
    assert main(["fit", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", "optim.lrr=1"]) == 2
    # logged as an error: on stderr when the CLI configured logging, in caplog when pytest already had
    assert "unknown config key 'lrr'" in capsys.readouterr().err + caplog.text


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    from joygen_core.weights import load_checkpoint
    from train.fit import rng_state, set_rng_state

    random.random(), np.random.rand(), torch.rand(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt"))  # weights_only load: tensors and plain values only
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
