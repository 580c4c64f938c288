"""The pack as ComfyUI sees it: every node module imports, and every node follows the pack's conventions."""

from __future__ import annotations

import sys
import types

import pytest
import torch


def test_pack_imports_without_comfyui(pack):
    from joygen_pack import nodes

    assert nodes.IMPORT_ERRORS == {}, nodes.IMPORT_ERRORS
    assert "JoyGenFitLength" in pack.NODE_CLASS_MAPPINGS
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)


def _all_inputs(cls):
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            yield section, name, value


def test_every_node_follows_conventions(pack):
    core_types = {"IMAGE", "MASK", "AUDIO", "VIDEO", "INT", "FLOAT", "STRING", "BOOLEAN", "LATENT"}
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("JoyGen"), node_id
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("JoyGen "), node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert cls.CATEGORY.startswith("JoyGen"), node_id
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), node_id
        for kind in cls.RETURN_TYPES:
            assert kind in core_types or kind.startswith("JOYGEN_"), (node_id, kind)
        for _, name, value in _all_inputs(cls):
            kind, opts = value[0], (value[1] if len(value) > 1 else {})
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, str):
                assert kind in core_types or kind.startswith("JOYGEN_") or kind == "*", (node_id, name, kind)


def test_fit_length_node_with_audio(pack):
    from joygen_pack.nodes.video import JoyGenFitLength

    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 3) / 4
    audio = {"waveform": torch.zeros(1, 1, 16000 * 2), "sample_rate": 16000}
    out, track, n = JoyGenFitLength().fit(images, "pingpong", 5.0, audio=audio)
    assert n == 10 and out.shape[0] == 10 and track is None
    assert (out[:, 0, 0, 0] * 4).round().tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1]


def test_model_folder_registered_with_comfyui(monkeypatch, tmp_path, pack):
    """With a (stand-in) folder_paths present, the pack registers models/joygen and resolves through it."""
    import importlib

    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")
    fake.folder_names_and_paths = {}
    fake.get_folder_paths = lambda name: list(fake.folder_names_and_paths[name][0])
    fake.get_output_directory = lambda: str(tmp_path / "output")
    fake.get_temp_directory = lambda: str(tmp_path / "temp")
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    comfy = importlib.import_module("joygen_pack.nodes.comfy")
    comfy = importlib.reload(comfy)
    try:
        comfy.register_model_folder()
        assert fake.folder_names_and_paths["joygen"][0] == [str(tmp_path / "models" / "joygen")]
        assert (tmp_path / "models" / "joygen").is_dir()
        (tmp_path / "models" / "joygen" / "whisper").mkdir()
        (tmp_path / "models" / "joygen" / "whisper" / "tiny.pt").write_bytes(b"x")
        assert comfy.model_store().path("whisper").name == "tiny.pt"
        # extra_model_paths.yaml adds paths to the same entry before our import: they are kept
        fake.folder_names_and_paths["joygen"] = (["/extra/joygen"], set())
        comfy.register_model_folder()
        assert fake.folder_names_and_paths["joygen"][0][1] == "/extra/joygen"
    finally:
        monkeypatch.delitem(sys.modules, "folder_paths")
        importlib.reload(comfy)
    assert comfy.folder_paths is None


@pytest.mark.parametrize("bad", ["../x", "/abs/file"])
def test_adapter_store_refuses_escapes(pack, bad):
    from joygen_core.errors import UnsafePathError
    from joygen_pack.nodes.comfy import model_store

    with pytest.raises(UnsafePathError):
        model_store().path(bad)


def test_one_name_per_node_in_tooltips_and_descriptions(pack):
    """Every "JoyGen <Name>" a tooltip or description mentions is a node's display name (the menu's words)."""
    import re

    names = sorted(pack.NODE_DISPLAY_NAME_MAPPINGS.values(), key=len, reverse=True) + ["JoyGen UNet"]  # a model
    texts = []
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        texts.append((node_id, getattr(cls, "DESCRIPTION", "")))
        texts += [(f"{node_id}.{name}", (value[1] if len(value) > 1 else {}).get("tooltip", ""))
                  for _, name, value in _all_inputs(cls)]
    bad = [(where, text[m.start():m.start() + 40]) for where, text in texts
           for m in re.finditer(r"JoyGen (?=[A-Z0-9])", text) if not any(text.startswith(n, m.start()) for n in names)]
    assert bad == []
