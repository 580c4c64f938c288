"""Training end to end on a real clip: prepare, dataset, tiny CPU fit (the loss falls), the checkpoint in the nodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


def test_prepare_fit_and_edit_with_the_checkpoint(face_video, models_dir, tmp_path, monkeypatch, pack):
    from joygen_core.face.track import FaceTrack
    from joygen_core.video.convert import uint8_to_image
    from joygen_core.video.io import read_frames
    from train import prepare as P
    from train.config import load_config
    from train.dataset import build_dataset
    from train.fit import fit

    models = P.load_prepare_models(models_dir)
    # the whole clip: runs of 5+ one-face frames exist whichever near-threshold false faces x264's run-to-run
    # noise lets MTCNN see in the guitar below the face
    summary = P.prepare([face_video], tmp_path / "prepared", models=models, min_clip_frames=5,
                        max_frames_per_video=None, batch_size=16, progress=False)
    assert summary["clips_written"] >= 1
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", overrides=[
        f"data.root={tmp_path / 'prepared'}", f"output.dir={tmp_path / 'run'}", "train.max_steps=30",
        "output.checkpoint_every=30", "validation.every=0", "output.tensorboard=false", "output.log_every=1"])
    dataset = build_dataset(cfg.data, "train")
    assert len(dataset) >= 10
    result = fit(cfg)
    losses = [r["loss"] for r in result.records]
    assert len(losses) == 30 and result.step == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses

    # the saved UNet, dropped into a model folder, loads in JoyGen Load Edit Models and edits in JoyGen Edit
    root = tmp_path / "models"
    shutil.copytree(result.last_checkpoint / "unet", root / "my_run" / "unet")
    shutil.copytree(models_dir / "sd-vae-ft-mse", root / "sd-vae-ft-mse")
    monkeypatch.setenv("JOYGEN_MODELS", str(root))
    from joygen_pack.nodes.edit import JoyGenEdit, JoyGenLoadEditModels

    assert "my_run/unet" in JoyGenLoadEditModels.INPUT_TYPES()["required"]["unet"][0]
    (edit_models,) = JoyGenLoadEditModels().load("my_run/unet", "sd-vae-ft-mse", "cpu", "float32")
    frames = torch.from_numpy(read_frames(face_video, max_frames=2))
    track = FaceTrack.empty(2, tuple(frames.shape[1:3]))
    track.detected[:] = True
    track.box[:] = torch.tensor([100, 60, 260, 250])
    (out,) = JoyGenEdit().edit(uint8_to_image(frames), track, edit_models, torch.randn(2, 50, 384), "box", True)
    changed = (out - uint8_to_image(frames)).abs().amax(-1) > 0
    assert changed[:, 155:250, 100:260].any() and not changed[:, :155].any() and not changed[:, :, 260:].any()
