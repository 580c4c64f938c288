"""The shipped workflows fit the live node definitions, and the check catches broken workflows.

Definitions: the pack's node classes as imported by ComfyUI (``pack``) plus the core nodes' table in
workflow_check.py. The loaders' file drop-downs list what is in the model folder, so their values
are checked against the official bundle names (joygen_core.weights.MANIFEST); the slow case checks
them against a real folder in the official layout instead.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from workflow_check import CORE_NODES, check_api, check_ui, defs_from_classes

from joygen_core.score import SYNCNET_FILE, SYNCNET_KEY
from joygen_core.weights import MANIFEST_BY_KEY

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "workflows"
NAMES = ("joygen_composable", "joygen_all_in_one", "joygen_audio_only", "joygen_video_driven")

# loader input -> manifest entries whose official paths it may name
OFFICIAL_KEYS = {
    ("JoyGenLoad3DMMModels", "bfm"): ("bfm", "bfm09"),
    ("JoyGenLoad3DMMModels", "regressor"): ("face_recon",),
    ("JoyGenLoadAudio2Motion", "checkpoint"): ("a2m",),
    ("JoyGenLoadAudio2Motion", "hubert"): ("hubert",),
    ("JoyGenLoadWhisper", "model"): ("whisper",),
    ("JoyGenLoadEditModels", "unet"): ("joygen_unet",),
    ("JoyGenLoadEditModels", "vae"): ("vae",),
    ("JoyGenLoadFaceParser", "model"): ("face_parse",),
}
OFFICIAL = {k: {MANIFEST_BY_KEY[key].path for key in keys} for k, keys in OFFICIAL_KEYS.items()}
# SyncNet (the evaluation's network) is not in the JoyGen bundle: its place in the model folder is the score's own
OFFICIAL[("JoyGenLoadSyncNet", "model")] = (
    {MANIFEST_BY_KEY[SYNCNET_KEY].path} if SYNCNET_KEY in MANIFEST_BY_KEY else {SYNCNET_FILE})


def _load(name: str, api: bool = False) -> dict:
    return json.loads((FOLDER / ("api" if api else "") / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def defs(pack):
    return {**CORE_NODES, **defs_from_classes(pack.NODE_CLASS_MAPPINGS)}


def test_shipped_set():
    assert sorted(p.stem for p in FOLDER.glob("*.json")) == sorted(NAMES)
    assert sorted(p.stem for p in (FOLDER / "api").glob("*.json")) == sorted(NAMES)


def test_overrides_cover_the_model_drop_downs(defs, monkeypatch, tmp_path):
    """Every loader drop-down filled from the model folder has official names to check against, and only those."""
    monkeypatch.setenv("JOYGEN_MODELS", str(tmp_path / "empty"))
    from joygen_pack import nodes

    fresh = defs_from_classes(nodes.NODE_CLASS_MAPPINGS)
    from_folder = {(t, i.name) for t, d in fresh.items() for i in d.widgets
                   if i.kind == "COMBO" and i.choices and i.choices[0].startswith("(put")}
    assert from_folder == set(OFFICIAL)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_fits_definitions(name, defs):
    ui, api = _load(name), _load(name, api=True)
    assert check_ui(ui, defs, OFFICIAL) == []
    assert check_api(api, ui, defs, OFFICIAL) == []


def test_workflow_contents(defs):
    """The graphs are the ones described in workflows/README.md."""
    types = {n: {node["type"] for node in _load(n)["nodes"]} for n in NAMES}
    core_io = {"LoadVideo", "LoadAudio", "SaveVideo"}
    assert core_io | {"GetVideoComponents", "CreateVideo", "JoyGenAudio2Motion", "JoyGenRenderDepth",
                      "JoyGenEdit"} <= types["joygen_composable"]
    assert core_io | {"JoyGenLipSync"} <= types["joygen_all_in_one"]
    assert "JoyGenEdit" not in types["joygen_all_in_one"]
    assert not {"JoyGenAudio2Motion", "JoyGenRenderDepth", "JoyGenLoadAudio2Motion"} & types["joygen_audio_only"]
    edit = next(n for n in _load("joygen_audio_only", api=True).values() if n["class_type"] == "JoyGenEdit")
    assert edit["inputs"]["audio_only"] is True
    edit = next(n for n in _load("joygen_composable", api=True).values() if n["class_type"] == "JoyGenEdit")
    assert edit["inputs"]["audio_only"] is False and isinstance(edit["inputs"]["mouth_depth"], list)


def _by_type(api: dict, node_type: str) -> list[tuple[str, dict]]:
    return [(nid, n) for nid, n in api.items() if n["class_type"] == node_type]


def test_composable_adjusts_and_plots_the_motion():
    """Audio2Motion -> Adjust Motion (defaults: unchanged) -> Render Depth; Plot Motion -> Preview Image."""
    api = _load("joygen_composable", api=True)
    ((a2m, _),) = _by_type(api, "JoyGenAudio2Motion")
    ((adjust, adj),) = _by_type(api, "JoyGenAdjustMotion")
    ((_, depth),) = _by_type(api, "JoyGenRenderDepth")
    ((plot, plt),) = _by_type(api, "JoyGenPlotMotion")
    assert adj["inputs"]["motion"] == [a2m, 0] and depth["inputs"]["motion"] == [adjust, 0]
    assert (adj["inputs"]["amplitude"], adj["inputs"]["smoothing_hz"], adj["inputs"]["shift_frames"]) == (1.0, 0, 0)
    assert plt["inputs"]["motion"] == [adjust, 0] and plt["inputs"]["motion_b"] == [a2m, 0]
    assert plt["inputs"]["recon_models"][0] == depth["inputs"]["recon_models"][0]
    assert any(n["inputs"]["images"] == [plot, 0] for _, n in _by_type(api, "PreviewImage"))


def test_video_driven_takes_mouth_and_speech_from_the_driver():
    api = _load("joygen_video_driven", api=True)
    assert not _by_type(api, "LoadAudio") and not _by_type(api, "JoyGenAudio2Motion")
    videos = {nid: n for nid, n in _by_type(api, "LoadVideo")}
    driver_load = next(nid for nid, n in videos.items() if n["inputs"]["file"] == "driver.mp4")
    parts = {n["inputs"]["video"][0]: nid for nid, n in _by_type(api, "GetVideoComponents")}
    driver, target = parts[driver_load], next(v for k, v in parts.items() if k != driver_load)
    recon = {n["inputs"]["images"][0]: nid for nid, n in _by_type(api, "JoyGen3DMMReconstruct")}
    ((motion_id, motion),) = _by_type(api, "JoyGenMotionFromVideo")
    assert motion["inputs"]["face_track"] == [recon[driver], 0]
    assert motion["inputs"]["target_fps"] == [target, 2]  # the edited video's fps
    ((_, fit),) = _by_type(api, "JoyGenFitLength")
    ((fit_id, _),) = _by_type(api, "JoyGenFitLength")
    assert fit["inputs"]["audio"] == [driver, 1] and motion["inputs"]["frame_count"] == [fit_id, 2]
    ((depth_id, depth),) = _by_type(api, "JoyGenRenderDepth")
    assert depth["inputs"]["motion"] == [motion_id, 0] and depth["inputs"]["face_track"] == [fit_id, 1]
    ((_, feats),) = _by_type(api, "JoyGenAudioFeatures")
    ((_, create),) = _by_type(api, "CreateVideo")
    ((_, edit),) = _by_type(api, "JoyGenEdit")
    assert feats["inputs"]["audio"] == [driver, 1] and create["inputs"]["audio"] == [driver, 1]
    assert edit["inputs"]["mouth_depth"] == [depth_id, 0] and edit["inputs"]["audio_only"] is False


def _rect(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y, x + w, y + h


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", NAMES)
def test_layout_left_to_right_with_separate_groups(name):
    """Every link runs into a node further right; no two nodes or groups overlap; a node sits in one group or none."""
    ui = _load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    rects = {nid: _rect(n) for nid, n in nodes.items()}
    for link in ui["links"]:
        a, b = rects[link[1]], rects[link[3]]
        assert a[2] < b[0], f"{name}: link {link} runs from node {link[1]} to node {link[3]}, not to the right"
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            assert not _overlap(rects[a], rects[b]), f"{name}: nodes {a} and {b} overlap"
    boxes = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                           g["bounding"][1] + g["bounding"][3])) for g in ui["groups"]]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            assert not _overlap(a, b), f"{name}: groups {ta!r} and {tb!r} overlap"
    for nid, r in rects.items():
        inside = [t for t, g in boxes if g[0] <= r[0] and g[1] <= r[1] and r[2] <= g[2] and r[3] <= g[3]]
        touching = [t for t, g in boxes if _overlap(r, g)]
        assert touching == inside and len(inside) <= 1, f"{name}: node {nid} is in {inside}, touches {touching}"


def test_build_reproduces_shipped_files(tmp_path):
    """workflows/build.py (the generator) is in step with the shipped JSON."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("workflows_build", FOLDER / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        written = module.build_all(tmp_path)
    finally:
        del sys.modules[spec.name]
    assert len(written) == 2 * len(NAMES)
    for path in written:
        shipped = FOLDER / path.relative_to(tmp_path)
        assert json.loads(path.read_text()) == json.loads(shipped.read_text()), shipped


# ---------------------------------------------------------------- the check catches broken copies


def _node(ui, node_type):
    return next(n for n in ui["nodes"] if n["type"] == node_type)


def _link_into(ui, node_type, input_name):
    node = _node(ui, node_type)
    lid = next(s["link"] for s in node["inputs"] if s["name"] == input_name)
    return next(link for link in ui["links"] if link[0] == lid)


def _rename_choice(ui):
    _node(ui, "JoyGenEdit")["widgets_values"][0] = "bisenet"


def _link_type(ui):
    _link_into(ui, "JoyGenEdit", "mouth_depth")[5] = "MASK"


def _wrong_source(ui):
    """Feed the face track into mouth_depth, consistently (link type and output lists follow)."""
    link = _link_into(ui, "JoyGenEdit", "mouth_depth")
    old = next(n for n in ui["nodes"] if n["id"] == link[1])
    old["outputs"][link[2]]["links"].remove(link[0])
    recon = _node(ui, "JoyGen3DMMReconstruct")
    link[1], link[2], link[5] = recon["id"], 0, "JOYGEN_FACE_TRACK"
    recon["outputs"][0]["links"].append(link[0])


def _out_of_range(ui):
    values = _node(ui, "JoyGenAudio2Motion")["widgets_values"]
    values[values.index("fixed") - 1] = -1  # the seed


def _float_for_bool(ui):
    edit = _node(ui, "JoyGenEdit")["widgets_values"]
    edit[1] = 0


def _missing_required(ui):
    link = _link_into(ui, "JoyGenEdit", "edit_models")
    ui["links"].remove(link)
    _node(ui, "JoyGenEdit")["inputs"][link[4]]["link"] = None
    src = next(n for n in ui["nodes"] if n["id"] == link[1])
    src["outputs"][link[2]]["links"].remove(link[0])


def _dropped_control_value(ui):
    _node(ui, "JoyGenAudio2Motion")["widgets_values"].remove("fixed")


def _unknown_type(ui):
    _node(ui, "JoyGenRenderDepth")["type"] = "JoyGenRenderDepthV2"


def _bad_model_name(ui):
    _node(ui, "JoyGenLoadWhisper")["widgets_values"][0] = "whisper/base.pt"


BREAKS = {
    "renamed choice": (_rename_choice, "widget blend"),
    "link type": (_link_type, "type 'MASK'"),
    "wrong source": (_wrong_source, "JOYGEN_FACE_TRACK"),
    "seed out of range": (_out_of_range, "below the minimum"),
    "number for a boolean": (_float_for_bool, "audio_only"),
    "missing required link": (_missing_required, "required input 'edit_models'"),
    "dropped control value": (_dropped_control_value, "widget values"),
    "unknown node": (_unknown_type, "unknown node type"),
    "unofficial model name": (_bad_model_name, "whisper/base.pt"),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_check_catches_broken_ui(case, defs):
    ui = copy.deepcopy(_load("joygen_composable"))
    breaker, expected = BREAKS[case]
    breaker(ui)
    problems = check_ui(ui, defs, OFFICIAL)
    assert any(expected in p for p in problems), problems


def test_check_catches_definition_changes(defs):
    """A node that renames a choice or gains a widget no longer fits the shipped workflow."""
    ui = _load("joygen_composable")
    renamed = copy.deepcopy(defs)
    blend = renamed["JoyGenEdit"].input("blend")
    blend.choices = ("bisenet",) + blend.choices[1:]
    assert any("widget blend" in p for p in check_ui(ui, renamed, OFFICIAL))
    grown = copy.deepcopy(defs)
    grown["JoyGenFitLength"].inputs.insert(2, copy.deepcopy(grown["JoyGenFitLength"].input("mode")))
    grown["JoyGenFitLength"].inputs[2].name = "mode2"
    assert any("JoyGenFitLength" in p and "widget values" in p for p in check_ui(ui, grown, OFFICIAL))
    retyped = copy.deepcopy(defs)
    retyped["JoyGenEdit"].input("mouth_depth").kind = "JOYGEN_MOUTH_DEPTH"
    assert any("mouth_depth" in p for p in check_ui(ui, retyped, OFFICIAL))


def test_check_catches_api_disagreement(defs):
    ui = _load("joygen_composable")
    api = _load("joygen_composable", api=True)
    edit_id = str(_node(ui, "JoyGenEdit")["id"])
    changed = copy.deepcopy(api)
    changed[edit_id]["inputs"]["batch_size"] = 4
    assert any(f"api node {edit_id}" in p for p in check_api(changed, ui, defs, OFFICIAL))
    unlinked = copy.deepcopy(api)
    del unlinked[edit_id]["inputs"]["edit_models"]
    problems = check_api(unlinked, ui, defs, OFFICIAL)
    assert any("required input 'edit_models' is missing" in p for p in problems), problems
    relinked = copy.deepcopy(api)
    relinked[edit_id]["inputs"]["mouth_depth"] = [str(_node(ui, "JoyGen3DMMReconstruct")["id"]), 0]
    assert any("linked to a JOYGEN_FACE_TRACK output" in p for p in check_api(relinked, None, defs, OFFICIAL))
    extra = copy.deepcopy(api)
    extra["999"] = {"class_type": "SaveVideo", "inputs": {}}
    assert any("node ids" in p for p in check_api(extra, ui, defs, OFFICIAL))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_workflow_fits_a_real_model_folder(name, models_dir, monkeypatch):
    """With models in the official layout, the loaders' own drop-downs accept the workflows' names."""
    monkeypatch.setenv("JOYGEN_MODELS", str(models_dir))
    from joygen_pack import nodes

    defs = {**CORE_NODES, **defs_from_classes(nodes.NODE_CLASS_MAPPINGS)}
    ui, api = _load(name), _load(name, api=True)
    assert check_ui(ui, defs) == []
    assert check_api(api, ui, defs) == []
