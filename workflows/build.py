"""Writes the shipped workflows (UI format here, API format in api/) from the specs below and the live node definitions.

Run from the repository root after changing a node's inputs: ``python3 workflows/build.py``.
Widget order, extras and socket lists come from the node classes themselves (and, for ComfyUI core
nodes, from the table in tests/workflow_check.py), so the JSON follows the definitions;
tests/test_workflows.py then checks the files independently.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]  # the test helpers, and the library they import

from workflow_check import CORE_NODES, NodeDef, defs_from_classes, ui_graph  # noqa: E402

from conftest import _import_pack  # noqa: E402

CORE_TITLES = {"LoadVideo": "Load Video", "LoadAudio": "Load Audio", "GetVideoComponents": "Get Video Components",
               "CreateVideo": "Create Video", "SaveVideo": "Save Video", "PreviewImage": "Preview Image"}
CORE_VERSION = "0.8.0"
PACK_ID, PACK_VERSION = "joygen-lipsync", "0.1.0"
FRONTEND_VERSION = "1.35.9"
VIDEO_FILE, AUDIO_FILE = "talking_face.mp4", "speech.wav"  # placeholders the user replaces (workflows/README.md)
DRIVER_FILE = "driver.mp4"  # the video-driven workflow's driver (mouth and speech)

# Official bundle names (joygen_core.weights.MANIFEST) as the loaders' defaults.
LOADERS = {
    "JoyGenLoad3DMMModels": {"bfm": "BFM/BFM_model_front.mat", "regressor": "face_recon_feat0.2_augment/epoch_20.pth",
                             "device": "auto"},
    "JoyGenLoadAudio2Motion": {"checkpoint": "audio2motion/240210_real3dportrait_orig/audio2secc_vae/"
                                             "model_ckpt_steps_400000.ckpt",
                               "hubert": "audio2motion/hubert", "device": "auto"},
    "JoyGenLoadWhisper": {"model": "whisper/tiny.pt", "device": "auto"},
    "JoyGenLoadEditModels": {"unet": "joygen", "vae": "sd-vae-ft-mse", "device": "auto", "dtype": "auto"},
    "JoyGenLoadFaceParser": {"model": "face-parse-bisent/79999_iter.pth", "device": "auto"},
}


@dataclass
class N:
    id: int
    type: str
    pos: tuple[float, float]
    values: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    width: float = 320
    height: float | None = None  # None: from the node's sockets and widgets


@dataclass
class Spec:
    name: str
    note: str
    nodes: list[N]
    links: list[tuple[int, str, int, str]]  # from node, output name, to node, input name
    groups: list[tuple[str, list[int], str]] = field(default_factory=list)


def _loader(nid: int, node_type: str, pos: tuple[float, float]) -> N:
    return N(nid, node_type, pos, dict(LOADERS[node_type]))


COLUMN = 380  # one column per step: every link runs left to right, into a later column
X = [COLUMN * i for i in range(10)]
LOWER = 500  # the second row of steps starts below the first row's groups


def _inputs_and_models(loaders: list[tuple[int, str]]) -> tuple[list[N], list[int]]:
    """The model loaders in two columns under the inputs (x[0], x[1]), in the order given."""
    nodes, ys = [], [840, 840]
    for k, (nid, node_type) in enumerate(loaders):
        col = 0 if k < (len(loaders) + 1) // 2 else 1
        nodes.append(_loader(nid, node_type, (X[col], ys[col])))
        ys[col] += {"JoyGenLoad3DMMModels": 182, "JoyGenLoadEditModels": 156,
                    "JoyGenLoadAudio2Motion": 130}.get(node_type, 104) + 40
    return nodes, [nid for nid, _ in loaders]


def composable(audio_only: bool = False) -> Spec:
    """Core LoadVideo / GetVideoComponents / LoadAudio -> the JoyGen steps -> CreateVideo / SaveVideo.

    With depth: audio to motion -> Adjust Motion -> Render Depth, and Plot Motion (the adjusted and the raw
    motion, and the video's own mouth) -> Preview Image.
    """
    x = X
    loaders = [(4, "JoyGenLoad3DMMModels")] + ([] if audio_only else [(5, "JoyGenLoadAudio2Motion")]) + [
        (6, "JoyGenLoadWhisper"), (7, "JoyGenLoadEditModels"), (8, "JoyGenLoadFaceParser")]
    models, model_ids = _inputs_and_models(loaders)
    e = 5 if audio_only else 7  # the edit column: after the mouth depth
    nodes = [
        N(1, "LoadVideo", (x[0], 0), {"file": VIDEO_FILE}, "Load Video (face to edit)"),
        N(2, "LoadAudio", (x[0], 400), {"audio": AUDIO_FILE}, "Load Audio (driving speech)"),
        N(3, "GetVideoComponents", (x[1], 0)),
        *models,
        N(9, "JoyGen3DMMReconstruct", (x[2], 0), {"face_policy": "largest", "smooth": False}),
        N(10, "JoyGenFitLength", (x[3], 0), {"mode": "pingpong"}),
        N(12, "JoyGenAudioFeatures", (x[4], LOWER + (300 if not audio_only else 0))),
        N(14, "JoyGenEdit", (x[e], 0), {"blend": "parsing", "audio_only": audio_only, "reference": "same frame"}),
        N(15, "CreateVideo", (x[e + 1], 0), {"fps": 25.0}),
        N(16, "SaveVideo", (x[e + 2], 0), {"filename_prefix": f"joygen/{'audio_only' if audio_only else 'composable'}",
                                            "format": "auto", "codec": "auto"}, width=360),
    ]
    links = [
        (1, "VIDEO", 3, "video"),
        (3, "images", 9, "images"), (4, "recon_models", 9, "recon_models"), (3, "fps", 9, "fps"),
        (3, "images", 10, "images"), (3, "fps", 10, "fps"), (2, "AUDIO", 10, "audio"),
        (9, "face_track", 10, "face_track"),
        (6, "whisper", 12, "whisper"), (2, "AUDIO", 12, "audio"), (3, "fps", 12, "fps"),
        (10, "frame_count", 12, "frame_count"),
        (10, "images", 14, "images"), (10, "face_track", 14, "face_track"), (7, "edit_models", 14, "edit_models"),
        (12, "audio_features", 14, "audio_features"), (8, "face_parser", 14, "face_parser"),
        (14, "images", 15, "images"), (3, "fps", 15, "fps"), (2, "AUDIO", 15, "audio"),
        (15, "VIDEO", 16, "video"),
    ]
    groups = [("Inputs (replace the file names)", [1, 2, 3], "#3f789e"),
              ("Models (models/joygen)", model_ids, "#8A8"),
              ("Per video: face track, fitted to the audio", [9, 10], "#b58b2a"),
              ("Per audio: features" + ("" if audio_only else ", motion, mouth depth and a plot of the mouth"),
               [12] + ([] if audio_only else [11, 18, 13, 19, 17, 20]), "#a1309b"),
              ("Edit and save", [14, 15, 16], "#88A")]
    if not audio_only:
        nodes += [
            N(11, "JoyGenAudio2Motion", (x[4], LOWER), {"seed": 0, "temperature": 0.2, "mouth_amp": 0.45}),
            N(18, "JoyGenAdjustMotion", (x[5], LOWER), {"amplitude": 1.0, "smoothing_hz": 0.0, "shift_frames": 0.0}),
            N(13, "JoyGenRenderDepth", (x[6], LOWER), {"backend": "auto"}),
            N(19, "JoyGenPlotMotion", (x[6], LOWER + 220)),
            N(17, "PreviewImage", (x[7], LOWER), title="Preview mouth depth", width=300, height=200),
            N(20, "PreviewImage", (x[7], LOWER + 240), title="Preview mouth opening", width=500, height=240),
        ]
        links += [
            (5, "audio2motion", 11, "audio2motion"), (2, "AUDIO", 11, "audio"), (3, "fps", 11, "fps"),
            (10, "frame_count", 11, "frame_count"),
            (11, "motion", 18, "motion"),
            (10, "face_track", 13, "face_track"), (4, "recon_models", 13, "recon_models"), (18, "motion", 13, "motion"),
            (13, "mouth_depth", 14, "mouth_depth"), (13, "mouth_depth", 17, "images"),
            (18, "motion", 19, "motion"), (11, "motion", 19, "motion_b"), (10, "face_track", 19, "face_track"),
            (4, "recon_models", 19, "recon_models"), (19, "plot", 20, "images"),
        ]
    if audio_only:
        name = "joygen_audio_only"
        note = ("**JoyGen, audio-only editing**: the composable graph without audio-to-motion and depth. "
                "JoyGen Edit runs with `audio_only` on (a black depth map), so only the Whisper features drive "
                "the mouth.\n\n" + _COMMON_NOTE)
    else:
        name = "joygen_composable"
        note = ("**JoyGen lip sync, step by step**: face track (3DMM) of the video, fitted to the speech's "
                "length; audio to motion -> Adjust Motion (mouth amplitude, smoothing in Hz, shift in frames; "
                "the defaults change nothing) -> mouth depth; Whisper audio features; one UNet step per frame, "
                "blended back; Create Video with the driving speech. Plot Motion shows the mouth opening over "
                "time: adjusted (blue), as predicted (orange), the video's own mouth (green).\n\n" + _COMMON_NOTE)
    nodes.append(N(99, "MarkdownNote", (x[0], 1360 if audio_only else 1500), {"text": note}, "Read me", width=340))
    return Spec(name, note, sorted(nodes, key=lambda n: n.id), links, groups)


def video_driven() -> Spec:
    """A driver video's mouth drives another video: its face track -> Motion from Video -> Render Depth -> Edit,
    with the driver's speech for the Whisper features and the sound."""
    x = X
    models, model_ids = _inputs_and_models([(4, "JoyGenLoad3DMMModels"), (6, "JoyGenLoadWhisper"),
                                            (7, "JoyGenLoadEditModels"), (8, "JoyGenLoadFaceParser")])
    nodes = [
        N(1, "LoadVideo", (x[0], 0), {"file": VIDEO_FILE}, "Load Video (face to edit)"),
        N(2, "LoadVideo", (x[0], 400), {"file": DRIVER_FILE}, "Load Video (driver: mouth and speech)"),
        N(3, "GetVideoComponents", (x[1], 0), title="Get Video Components (face to edit)"),
        N(21, "GetVideoComponents", (x[1], 400), title="Get Video Components (driver)"),
        *models,
        N(9, "JoyGen3DMMReconstruct", (x[2], 0), {"face_policy": "largest", "smooth": False}),
        N(10, "JoyGenFitLength", (x[3], 0), {"mode": "pingpong"}),
        N(22, "JoyGen3DMMReconstruct", (x[2], LOWER), {"face_policy": "largest", "smooth": False},
          "JoyGen 3DMM Reconstruct (driver)"),
        N(23, "JoyGenMotionFromVideo", (x[4], LOWER), {"target_fps": 25.0, "frame_count": 0, "source_fps": 0.0}),
        N(12, "JoyGenAudioFeatures", (x[4], 0)),
        N(13, "JoyGenRenderDepth", (x[5], LOWER), {"backend": "auto"}),
        N(19, "JoyGenPlotMotion", (x[5], LOWER + 200)),
        N(17, "PreviewImage", (x[6], LOWER), title="Preview mouth depth", width=300, height=200),
        N(20, "PreviewImage", (x[6], LOWER + 240), title="Preview mouth opening", width=500, height=240),
        N(14, "JoyGenEdit", (x[6], 0), {"blend": "parsing", "audio_only": False, "reference": "same frame"}),
        N(15, "CreateVideo", (x[7], 0), {"fps": 25.0}),
        N(16, "SaveVideo", (x[8], 0), {"filename_prefix": "joygen/video_driven", "format": "auto", "codec": "auto"},
          width=360),
    ]
    links = [
        (1, "VIDEO", 3, "video"), (2, "VIDEO", 21, "video"),
        (3, "images", 9, "images"), (4, "recon_models", 9, "recon_models"), (3, "fps", 9, "fps"),
        (3, "images", 10, "images"), (3, "fps", 10, "fps"), (21, "audio", 10, "audio"),
        (9, "face_track", 10, "face_track"),
        (21, "images", 22, "images"), (4, "recon_models", 22, "recon_models"), (21, "fps", 22, "fps"),
        (22, "face_track", 23, "face_track"), (3, "fps", 23, "target_fps"), (10, "frame_count", 23, "frame_count"),
        (6, "whisper", 12, "whisper"), (21, "audio", 12, "audio"), (3, "fps", 12, "fps"),
        (10, "frame_count", 12, "frame_count"),
        (10, "face_track", 13, "face_track"), (4, "recon_models", 13, "recon_models"), (23, "motion", 13, "motion"),
        (13, "mouth_depth", 17, "images"),
        (23, "motion", 19, "motion"), (22, "face_track", 19, "face_track"), (4, "recon_models", 19, "recon_models"),
        (19, "plot", 20, "images"),
        (10, "images", 14, "images"), (10, "face_track", 14, "face_track"), (7, "edit_models", 14, "edit_models"),
        (12, "audio_features", 14, "audio_features"), (13, "mouth_depth", 14, "mouth_depth"),
        (8, "face_parser", 14, "face_parser"),
        (14, "images", 15, "images"), (3, "fps", 15, "fps"), (21, "audio", 15, "audio"),
        (15, "VIDEO", 16, "video"),
    ]
    groups = [("Inputs (replace the file names)", [1, 2, 3, 21], "#3f789e"),
              ("Models (models/joygen)", model_ids, "#8A8"),
              ("Video to edit: face track, fitted to the driver's length", [9, 10], "#b58b2a"),
              ("Driver's speech: features", [12], "#a1309b"),
              ("Driver's mouth: face track -> motion", [22, 23], "#2a8b8b"),
              ("Mouth depth and a plot of the mouth", [13, 19, 17, 20], "#a1309b"),
              ("Edit and save", [14, 15, 16], "#88A")]
    note = ("**JoyGen, video-driven editing**: the mouth of a driver video drives the face of another. The "
            "driver's face track (3DMM) gives its 64 expression coefficients per frame; Motion from Video re-times "
            "them to the edited video's fps and length (frames where the driver shows no face are filled from their "
            "neighbours; its `info` output says what was done); they are rendered as mouth depth on the edited "
            "video's faces. The driver's speech gives the Whisper features and the sound, and the edited video is "
            "fitted to its length. Plot Motion compares the motion with the driver's own mouth.\n\n"
            f"Replace `{VIDEO_FILE}` (a video with one visible face, to edit) and `{DRIVER_FILE}` (someone speaking, "
            "with sound) with your own files. The loaders default to the official `pretrained_models` bundle in "
            "`ComfyUI/models/joygen/`; see the pack's README.")
    nodes.append(N(99, "MarkdownNote", (x[0], 1360), {"text": note}, "Read me", width=340))
    return Spec("joygen_video_driven", note, sorted(nodes, key=lambda n: n.id), links, groups)


def all_in_one() -> Spec:
    """Core LoadVideo + LoadAudio + the loaders -> JoyGen Lip Sync -> SaveVideo."""
    nodes = [
        N(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}, "Load Video (face to edit)"),
        N(2, "LoadAudio", (0, 420), {"audio": AUDIO_FILE}, "Load Audio (driving speech)"),
        _loader(3, "JoyGenLoad3DMMModels", (380, 0)),
        _loader(4, "JoyGenLoadWhisper", (380, 240)),
        _loader(5, "JoyGenLoadEditModels", (380, 400)),
        _loader(6, "JoyGenLoadAudio2Motion", (380, 620)),
        _loader(7, "JoyGenLoadFaceParser", (380, 840)),
        N(8, "JoyGenLipSync", (780, 0), {"length_mode": "pingpong", "blend": "parsing", "seed": 0}, width=360),
        N(9, "SaveVideo", (1200, 0), {"filename_prefix": "joygen/lipsync", "format": "auto", "codec": "auto"},
          width=360),
    ]
    links = [
        (1, "VIDEO", 8, "video"), (2, "AUDIO", 8, "audio"), (3, "recon_models", 8, "recon_models"),
        (4, "whisper", 8, "whisper"), (5, "edit_models", 8, "edit_models"), (6, "audio2motion", 8, "audio2motion"),
        (7, "face_parser", 8, "face_parser"), (8, "video", 9, "video"),
    ]
    note = ("**JoyGen lip sync, all in one**: the whole job in one node, streamed from the video file in "
            "chunks with a per-video cache (new audio for the same video skips the face track). Unplug "
            "audio2motion for audio-only editing.\n\n" + _COMMON_NOTE)
    nodes.append(N(99, "MarkdownNote", (0, 760), {"text": note}, "Read me", width=340))
    groups = [("Inputs (replace the file names)", [1, 2], "#3f789e"),
              ("Models (models/joygen)", [3, 4, 5, 6, 7], "#8A8"), ("Lip sync and save", [8, 9], "#88A")]
    return Spec("joygen_all_in_one", note, nodes, links, groups)


_COMMON_NOTE = (f"Replace `{VIDEO_FILE}` (a video with one visible face) and `{AUDIO_FILE}` (the new speech) with "
                "your own files (upload them in the two Load nodes). The loaders default to the official "
                "`pretrained_models` bundle in `ComfyUI/models/joygen/`; see the pack's README.")

NOTE_DEF = NodeDef([], [])


def _widget_values(n: N, d: NodeDef) -> list[Any]:
    values: list[Any] = []
    for w in d.widgets:
        if w.name in n.values:
            v = n.values[w.name]
        elif "default" in w.opts:
            v = w.opts["default"]
        elif w.choices:
            v = w.choices[0]
        else:
            raise ValueError(f"{n.type}.{w.name} needs a value")
        values.append(v)
        if w.extras:
            if w.kind == "INT":
                values.append("fixed")  # reproducible runs: the seed does not change after each run
            else:
                values.extend(["image"] if w.extras == 1 else [None] * w.extras)  # upload widgets' values
    return values


def _size(d: NodeDef, n: N, linked_widgets: int) -> list[float]:
    if n.height is not None:
        return [n.width, n.height]
    rows = max(len(d.sockets) + linked_widgets, len(d.outputs))
    height = 30 + 22 * rows + 26 * len(d.widgets) + (230 if n.type in ("LoadVideo", "LoadAudio", "SaveVideo") else 0)
    return [n.width, height if n.type != "MarkdownNote" else 260]


def _order(spec: Spec) -> dict[int, int]:
    deps = {n.id: {a for a, _, b, _ in spec.links if b == n.id} for n in spec.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        for i in ready:
            order[i] = len(order)
    return order


def build_ui(spec: Spec, defs: dict[str, NodeDef]) -> dict:
    order = _order(spec)
    link_rows = []
    slot_of: dict[tuple[int, str], int] = {}
    node_json = {}
    by_id = {n.id: n for n in spec.nodes}
    linked = {(b, inp) for _, _, b, inp in spec.links}
    for n in spec.nodes:
        d = NOTE_DEF if n.type == "MarkdownNote" else defs[n.type]
        inputs = []
        for s in d.sockets:
            entry = {"name": s.name, "type": s.kind, "link": None}
            if not s.required:
                entry["shape"] = 7
            inputs.append(entry)
        for w in d.widgets:
            if (n.id, w.name) in linked:
                inputs.append({"name": w.name, "type": w.kind, "widget": {"name": w.name}, "link": None})
        for k, entry in enumerate(inputs):
            slot_of[(n.id, entry["name"])] = k
        outputs = [{"name": name, "type": kind, "links": None} for name, kind in d.outputs]
        props = {"Node name for S&R": n.type}
        if n.type in CORE_NODES:
            props.update({"cnr_id": "comfy-core", "ver": CORE_VERSION})
        elif n.type != "MarkdownNote":
            props.update({"cnr_id": PACK_ID, "ver": PACK_VERSION})
        node = {"id": n.id, "type": n.type, "pos": list(n.pos),
                "size": _size(d, n, sum(1 for w in d.widgets if (n.id, w.name) in linked)),
                "flags": {}, "order": order[n.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": props,
                "widgets_values": [n.values["text"]] if n.type == "MarkdownNote" else _widget_values(n, d)}
        if n.title:
            node["title"] = n.title
        node_json[n.id] = node
    for lid, (a, out_name, b, inp_name) in enumerate(spec.links, start=1):
        da = defs[by_id[a].type]
        a_slot = [name for name, _ in da.outputs].index(out_name)
        kind = da.outputs[a_slot][1]
        b_slot = slot_of[(b, inp_name)]
        node_json[b]["inputs"][b_slot]["link"] = lid
        out = node_json[a]["outputs"][a_slot]
        out["links"] = (out["links"] or []) + [lid]
        link_rows.append([lid, a, a_slot, b, b_slot, kind])
    groups = []
    for gid, (title, members, color) in enumerate(spec.groups, start=1):
        boxes = [(node_json[m]["pos"], node_json[m]["size"]) for m in members]
        x0 = min(p[0] for p, _ in boxes) - 20
        y0 = min(p[1] for p, _ in boxes) - 60
        x1 = max(p[0] + s[0] for p, s in boxes) + 20
        y1 = max(p[1] + s[1] for p, s in boxes) + 20
        groups.append({"id": gid, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                       "font_size": 24, "flags": {}})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{spec.name}")),
        "revision": 0,
        "last_node_id": max(node_json),
        "last_link_id": len(link_rows),
        "nodes": [node_json[i] for i in sorted(node_json)],
        "links": link_rows,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.6, "offset": [40, 120]}, "frontendVersion": FRONTEND_VERSION},
        "version": 0.4,
    }


def build_api(ui: dict, defs: dict[str, NodeDef], titles: dict[str, str]) -> dict:
    graph = ui_graph(ui, defs)
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    for nid, entry in graph.items():
        entry["_meta"] = {"title": by_id[nid].get("title") or titles[entry["class_type"]]}
    return graph


def build_all(out: Path) -> list[Path]:
    """Write every workflow into ``out`` (UI format) and ``out/api`` (API format); the files written."""
    pack = _import_pack()
    defs = {**CORE_NODES, **defs_from_classes(pack.NODE_CLASS_MAPPINGS)}
    titles = {**CORE_TITLES, **pack.NODE_DISPLAY_NAME_MAPPINGS}
    (out / "api").mkdir(parents=True, exist_ok=True)
    written = []
    for spec in (composable(), all_in_one(), composable(audio_only=True), video_driven()):
        ui = build_ui(spec, defs)
        api = build_api(ui, defs, titles)
        for path, data in ((out / f"{spec.name}.json", ui), (out / "api" / f"{spec.name}.json", api)):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in build_all(ROOT / "workflows"):
        print("wrote", p.relative_to(ROOT))
