"""What a ComfyUI user sees while nodes run: one bar over a job, the stage named, previews, interruption between
batches, images shown in the node, device menus of this machine. ComfyUI's services are stood in for by small fakes
with the same call signatures (comfy.utils.ProgressBar, model_management, folder_paths)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch


class Interrupted(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


class FakeComfy:
    """ProgressBar, model_management and folder_paths as the adapter calls them; records what it was sent."""

    def __init__(self, root):
        self.updates: list[tuple[int, int, object]] = []
        self.texts: list[str] = []
        self.calls = 0
        self.interrupt_after: int | None = None
        fake = self

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total = total

            def update_absolute(self, value, total=None, preview=None):
                fake.updates.append((value, total, preview))

        self.utils = SimpleNamespace(ProgressBar=ProgressBar)
        self.model_management = SimpleNamespace(
            throw_exception_if_processing_interrupted=self._poll, get_torch_device=lambda: torch.device("cpu"),
            unet_offload_device=lambda: torch.device("cpu"), free_memory=lambda *a, **k: None)
        self.temp = root / "temp"
        self.temp.mkdir()

        def save_path(prefix, output_dir, width=0, height=0):
            existing = [f for f in os.listdir(output_dir) if f.startswith(prefix)]
            return output_dir, prefix, len(existing) + 1, "", prefix

        self.folder_paths = SimpleNamespace(
            get_temp_directory=lambda: str(self.temp), get_output_directory=lambda: str(root / "output"),
            get_user_directory=lambda: str(root / "user"), get_save_image_path=save_path,
            get_folder_paths=lambda name: [str(root / "models")])

    def _poll(self):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise Interrupted("interrupted")


@pytest.fixture
def comfy(pack, monkeypatch, tmp_path):
    from joygen_pack.nodes import comfy as adapter

    fake = FakeComfy(tmp_path)
    monkeypatch.setattr(adapter, "comfy_utils", fake.utils)
    monkeypatch.setattr(adapter, "model_management", fake.model_management)
    monkeypatch.setattr(adapter, "folder_paths", fake.folder_paths)
    monkeypatch.setattr(adapter, "_send_text", lambda text, node_id: fake.texts.append(text))
    monkeypatch.setattr(adapter, "_node_id", lambda: "7")
    return fake


def test_one_bar_over_the_stages_with_lazy_previews(comfy):
    from joygen_pack.nodes.comfy import ComfyProgress

    now = [0.0]
    bar = ComfyProgress({"a": 1.0, "b": 3.0}, preview_interval=1.0, clock=lambda: now[0])
    built = []

    def preview():
        built.append(1)
        return np.full((40, 60, 3), 200, np.uint8)

    for stage, total in (("a", 4), ("b", 8)):
        for done in range(total + 1):
            now[0] += 0.5
            bar(stage, done, total, preview=preview)
    values = [v for v, _, _ in comfy.updates]
    assert len(values) == 5 + 9 and all(t == ComfyProgress.STEPS for _, t, _ in comfy.updates)
    assert values == sorted(values) and values[-1] == ComfyProgress.STEPS
    assert values[4] == ComfyProgress.STEPS // 4  # stage a is a quarter of the weight
    sent = [p for _, _, p in comfy.updates if p is not None]
    assert len(sent) == len(built) and 4 <= len(built) <= 8  # at most one per second of the 7 s run
    kind, image, size = sent[0]
    assert kind == "JPEG" and image.size == (60, 40) and size == 512  # as samplers' latent previews
    assert comfy.texts[0].startswith("a: 0/4") and any(t.startswith("b:") for t in comfy.texts)
    assert comfy.calls == 14  # interruption polled at every report


def test_interrupt_stops_at_the_next_report(comfy):
    from joygen_pack.nodes.comfy import ComfyProgress

    bar = ComfyProgress({"edit": 1.0})
    comfy.interrupt_after = 2
    bar("edit", 0, 10)
    bar("edit", 1, 10)
    with pytest.raises(Interrupted):
        bar("edit", 2, 10)
    assert len(comfy.updates) == 2


def test_outside_comfyui_a_terminal_bar_and_no_previews(pack):
    from joygen_pack.nodes.comfy import ComfyProgress

    bar = ComfyProgress({"edit": 1.0})
    built = []
    bar("edit", 1, 2, preview=lambda: built.append(1))
    bar("edit", 2, 2, preview=lambda: built.append(1))
    bar.close()
    assert built == [] and bar.shown == 2 and bar.fraction == 1.0


def test_ui_images_few_small_in_temp(comfy):
    from joygen_pack.nodes.comfy import ui_images, with_ui

    frames = torch.rand(30, 900, 600, 3)
    entries = ui_images(frames, "JoyGen_test", count=4)
    assert len(entries) == 4 and all(e["type"] == "temp" and e["subfolder"] == "" for e in entries)
    from PIL import Image

    for e in entries:
        with Image.open(comfy.temp / e["filename"]) as im:
            assert max(im.size) == 512 and im.size == (341, 512)
    shown = with_ui(("x",), torch.zeros(2, 8, 8, 3))
    assert shown["result"] == ("x",) and len(shown["ui"]["images"]) == 2


def test_ui_images_nothing_outside_comfyui(pack):
    from joygen_pack.nodes.comfy import ui_images

    assert ui_images(torch.zeros(2, 8, 8, 3)) == []


def test_device_menus_list_only_present_devices(pack, monkeypatch):
    from joygen_pack.nodes import NODE_CLASS_MAPPINGS
    from joygen_pack.nodes import comfy as adapter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert adapter.devices() == ["auto", "cpu"]
    loaders = [cls for cls in NODE_CLASS_MAPPINGS.values() if "device" in cls.INPUT_TYPES()["required"]]
    assert len(loaders) == 6
    for cls in loaders:
        assert cls.INPUT_TYPES()["required"]["device"][0] == ["auto", "cpu"]
        assert cls.VALIDATE_INPUTS(device="cpu") is True
        # a workflow saved on a GPU machine, opened here: one clear message instead of "not in list"
        problem = cls.VALIDATE_INPUTS(device="cuda")
        assert isinstance(problem, str) and "'cuda' is not available" in problem and "auto" in problem
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert adapter.devices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert adapter.devices() == ["auto", "cpu", "cuda", "mps"]


def test_reconstruct_node_shows_its_overlay(comfy, models_dir, face_frames):
    from joygen_pack.nodes.reconstruct import JoyGen3DMMReconstruct, JoyGenLoad3DMMModels

    comfy.folder_paths.get_folder_paths = lambda name: [str(models_dir)]
    (models,) = JoyGenLoad3DMMModels().load("BFM/BFM_model_front.mat", "face_recon_feat0.2_augment/epoch_20.pth",
                                            "cpu")
    images = torch.from_numpy(face_frames[:6]).float() / 255
    out = JoyGen3DMMReconstruct().run_node(images=images, recon_models=models, face_policy="largest", smooth=False,
                                           batch_size=2)
    track, preview = out["result"]
    assert len(track) == 6 and preview.shape == images.shape
    assert len(out["ui"]["images"]) == 4
    values = [v for v, _, _ in comfy.updates]
    assert len(values) >= 4 and values == sorted(values) and values[-1] == 1000  # detection + per-batch regression
