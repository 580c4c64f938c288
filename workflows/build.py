"""Writes the shipped workflows (UI format here, API format in api/) from the specs below and the live node definitions.

Run from the repository root after changing a node's inputs: ``python3 workflows/build.py``.
Widget order, extras and socket lists come from the node classes themselves (and, for ComfyUI core
nodes, from the table in tests/workflow_check.py), so the JSON follows the definitions;
tests/test_workflows.py then checks the files independently.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]  # the test helpers, and the library they import

from workflow_check import (  # noqa: E402
    CANVAS,
    CHROME,
    CORE_NODES,
    TITLE_HEIGHT,
    NodeDef,
    defs_from_classes,
    ui_graph,
)

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
    pos: tuple[float, float]  # (column, y): the column's x comes from COLUMN_X
    values: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    width: float = 280
    height: float | None = None  # None: from the node's sockets and widgets


Link = tuple[int, str, int, str]  # from node, output name, to node, input name


@dataclass
class Spec:
    name: str
    note: str
    nodes: list[N]
    links: list[Link]
    groups: list[tuple[str, list[int], str]] = field(default_factory=list)
    # links drawn through native reroutes (points on the canvas, in order from the output), to keep long wires in
    # the free corridors between nodes; links of one output share their common first points
    routes: dict[Link, list[tuple[float, float]]] = field(default_factory=dict)


def _loader(nid: int, node_type: str, pos: tuple[float, float]) -> N:
    return N(nid, node_type, pos, dict(LOADERS[node_type]))


# Layout: one column per step of the data flow, so every link runs into a later column; the gap between columns
# holds the wires (and their reroutes). Groups are rectangles around whole steps, never sharing a column range and a
# row range at once.
WIDTH, GAP = 280, 120
COLUMN_X = [i * (WIDTH + GAP) for i in range(12)]
GROUP_PAD, GROUP_TITLE = 16, 44  # around the members; the group's title bar above them
# Load Video grows to show its video at the node's width (a 9:16 phone video: 572 high at 280 wide); room for that
VIDEO_HEIGHT = 580


def gap(column: int, y: float, dx: float = 0) -> tuple[float, float]:
    """A reroute point in the gap after ``column`` (its middle, moved by ``dx``)."""
    return (COLUMN_X[column] + WIDTH + GAP / 2 + dx, y)


def composable(audio_only: bool = False) -> Spec:
    """Core LoadVideo / GetVideoComponents / LoadAudio -> the JoyGen steps -> CreateVideo / SaveVideo.

    With depth: audio to motion -> Adjust Motion -> Render Depth, and Plot Motion (the adjusted and the raw
    motion, and the video's own mouth) -> Preview Image. The video's steps run along the top row, the speech's
    below them; long wires run in lanes above the top row and between the rows.
    """
    e = 5 if audio_only else 7  # the edit column: after the mouth depth
    A, M = VIDEO_HEIGHT + 70, VIDEO_HEIGHT + 500  # Load Audio's y; the loaders' y
    loaders = [_loader(4, "JoyGenLoad3DMMModels", (0, M))]
    if not audio_only:
        loaders.append(_loader(5, "JoyGenLoadAudio2Motion", (0, M + 250)))
    loaders += [_loader(6, "JoyGenLoadWhisper", (1, M)), _loader(7, "JoyGenLoadEditModels", (1, M + 170)),
                _loader(8, "JoyGenLoadFaceParser", (1, M + 390))]
    B = 360  # the speech row (the lanes from the loaders to the edit run above it)
    feats_y = B + 300 if not audio_only else B
    nodes = [
        N(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}, "Load Video (face to edit)", height=VIDEO_HEIGHT),
        N(2, "LoadAudio", (0, A), {"audio": AUDIO_FILE}, "Load Audio (driving speech)"),
        N(3, "GetVideoComponents", (1, 0)),
        *loaders,
        N(9, "JoyGen3DMMReconstruct", (2, 0), {"face_policy": "largest", "smooth": False}),
        N(10, "JoyGenFitLength", (3, 0), {"mode": "pingpong"}),
        N(12, "JoyGenAudioFeatures", (4, feats_y)),
        N(14, "JoyGenEdit", (e, 0), {"blend": "parsing", "audio_only": audio_only, "reference": "same frame"}),
        N(15, "CreateVideo", (e + 1, 0), {"fps": 25.0}),
        N(16, "SaveVideo", (e + 2, 0), {"filename_prefix": f"joygen/{'audio_only' if audio_only else 'composable'}",
                                         "format": "auto", "codec": "auto"}, width=300),
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
    top_fps, top_audio, top_images = -60, -90, -120  # lanes above the top row
    fps_lane = [gap(1, 54, -12), gap(1, top_fps, -12)]
    audio_lane = [gap(0, A + 14), gap(0, top_audio)]
    routes = {
        (3, "fps", 10, "fps"): fps_lane + [gap(2, top_fps)],
        (3, "fps", 12, "fps"): fps_lane + [gap(3, top_fps, -20)],
        (3, "fps", 15, "fps"): fps_lane + [gap(e, top_fps)],
        (2, "AUDIO", 10, "audio"): audio_lane + [gap(2, top_audio, 12)],
        (2, "AUDIO", 12, "audio"): audio_lane + [gap(3, top_audio, -8)],
        (2, "AUDIO", 15, "audio"): audio_lane + [gap(e, top_audio, 12)],
        (3, "images", 10, "images"): [gap(1, 14, 12), gap(1, top_images, 12), gap(2, top_images, -12)],
        (4, "recon_models", 9, "recon_models"): [gap(0, M + 14, 20), gap(0, 560, 20), gap(1, 560, 20),
                                                  gap(1, 34, 20)],
        (6, "whisper", 12, "whisper"): [gap(1, M + 14), gap(1, feats_y + 14), gap(3, feats_y + 14, 30)],
        (7, "edit_models", 14, "edit_models"): [gap(1, M + 184, -20), gap(1, 250, -20), gap(e - 1, 250, 20),
                                                gap(e - 1, 54, 20)],
        (8, "face_parser", 14, "face_parser"): [gap(1, M + 404, -30), gap(1, 266, -30), gap(e - 1, 266, 30),
                                                gap(e - 1, 114, 30)],
        (12, "audio_features", 14, "audio_features"): [gap(4, feats_y + 14, -30), gap(4, 74, -30)],
    }
    groups = [("Inputs (replace the file names)", [1, 2, 3], "#3f789e"),
              ("Models (models/joygen)", [n.id for n in loaders] + [99], "#8A8"),
              ("Face track, fitted to the speech", [9, 10], "#b58b2a"),
              ("Speech: features" + ("" if audio_only else ", motion, mouth depth and a plot of the mouth"),
               [12] + ([] if audio_only else [11, 18, 13, 19]), "#a1309b"),
              ("Edit and save", [14, 15, 16], "#88A")]
    if not audio_only:
        nodes += [
            N(11, "JoyGenAudio2Motion", (4, B), {"seed": 0, "temperature": 0.2, "mouth_amp": 0.45}),
            N(18, "JoyGenAdjustMotion", (5, B), {"amplitude": 1.0, "smoothing_hz": 0.0, "shift_frames": 0.0}),
            N(13, "JoyGenRenderDepth", (6, B), {"backend": "auto"}),
            N(19, "JoyGenPlotMotion", (6, B + 200)),
            N(17, "PreviewImage", (7, 480), title="Preview mouth depth", width=280, height=200),
            N(20, "PreviewImage", (7, 740), title="Preview mouth opening", width=400, height=200),
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
        recon_lane = [gap(0, M + 14, 20), gap(0, 560, 20), gap(1, 560, 20), gap(1, 880, 40), gap(5, 880, -20)]
        routes.update({
            (3, "fps", 11, "fps"): fps_lane + [gap(3, top_fps, -20)],
            (2, "AUDIO", 11, "audio"): audio_lane + [gap(3, top_audio, -8)],
            (5, "audio2motion", 11, "audio2motion"): [gap(0, M + 264, 30), gap(0, 600, 30), gap(3, 600, 10),
                                                      gap(3, B + 14, 10)],
            (10, "face_track", 13, "face_track"): [gap(5, 34, 20)],
            (10, "face_track", 19, "face_track"): [gap(5, 34, 20)],
            (4, "recon_models", 13, "recon_models"): recon_lane,
            (4, "recon_models", 19, "recon_models"): recon_lane,
            (11, "motion", 19, "motion_b"): [gap(4, B + 14, 20), gap(4, B + 200, 20)],
        })
        groups.append(("Previews", [17, 20], "#a1309b"))
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
    nodes.append(N(99, "MarkdownNote", (0, M + (500 if not audio_only else 250)), {"text": note}, "Read me"))
    return Spec(name, note, sorted(nodes, key=lambda n: n.id), links, groups, routes)


def video_driven() -> Spec:
    """A driver video's mouth drives another video: its face track -> Motion from Video -> Render Depth -> Edit,
    with the driver's speech for the Whisper features and the sound. The edited video's steps run along the top
    row, the driver's below them; long wires run in lanes above the top row and between the rows."""
    B = 380  # the driver's row
    feats_y = B + 330
    D, M = VIDEO_HEIGHT + 70, 2 * VIDEO_HEIGHT + 200  # the driver video's y; the loaders' y
    loaders = [_loader(4, "JoyGenLoad3DMMModels", (0, M)), _loader(6, "JoyGenLoadWhisper", (1, M)),
               _loader(7, "JoyGenLoadEditModels", (1, M + 170)), _loader(8, "JoyGenLoadFaceParser", (1, M + 390))]
    nodes = [
        N(1, "LoadVideo", (0, 0), {"file": VIDEO_FILE}, "Load Video (face to edit)", height=VIDEO_HEIGHT),
        N(2, "LoadVideo", (0, D), {"file": DRIVER_FILE}, "Load Video (driver: mouth and speech)",
          height=VIDEO_HEIGHT),
        N(3, "GetVideoComponents", (1, 0), title="Get Video Components (face to edit)"),
        N(21, "GetVideoComponents", (1, D), title="Get Video Components (driver)"),
        *loaders,
        N(9, "JoyGen3DMMReconstruct", (2, 0), {"face_policy": "largest", "smooth": False}),
        N(10, "JoyGenFitLength", (3, 0), {"mode": "pingpong"}),
        N(22, "JoyGen3DMMReconstruct", (2, B), {"face_policy": "largest", "smooth": False},
          "JoyGen 3DMM Reconstruct (driver)"),
        N(23, "JoyGenMotionFromVideo", (4, B), {"target_fps": 25.0, "frame_count": 0, "source_fps": 0.0}),
        N(12, "JoyGenAudioFeatures", (4, feats_y)),
        N(13, "JoyGenRenderDepth", (5, B), {"backend": "auto"}),
        N(19, "JoyGenPlotMotion", (5, B + 220)),
        N(17, "PreviewImage", (6, 500), title="Preview mouth depth", width=280, height=200),
        N(20, "PreviewImage", (6, 760), title="Preview mouth opening", width=400, height=200),
        N(14, "JoyGenEdit", (6, 0), {"blend": "parsing", "audio_only": False, "reference": "same frame"}),
        N(15, "CreateVideo", (7, 0), {"fps": 25.0}),
        N(16, "SaveVideo", (8, 0), {"filename_prefix": "joygen/video_driven", "format": "auto", "codec": "auto"},
          width=300),
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
    top_fps, top_audio, top_images = -60, -90, -120
    fps_lane = [gap(1, 54, -12), gap(1, top_fps, -12)]
    audio_lane = [gap(1, D + 34, 12), gap(1, top_audio, 12)]
    recon_lane = [gap(0, M + 14, 20), gap(0, 580, 20), gap(1, 580, -30), gap(1, 900, -30), gap(4, 900, -20)]
    routes = {
        (4, "recon_models", 9, "recon_models"): recon_lane[:3] + [gap(1, 34, -30)],
        (4, "recon_models", 22, "recon_models"): recon_lane[:3] + [gap(1, B + 34, -30)],
        (4, "recon_models", 13, "recon_models"): recon_lane,
        (4, "recon_models", 19, "recon_models"): recon_lane,
        (3, "images", 10, "images"): [gap(1, 14, 24), gap(1, top_images, 24), gap(2, top_images, -12)],
        (3, "fps", 10, "fps"): fps_lane + [gap(2, top_fps)],
        (3, "fps", 23, "target_fps"): fps_lane + [gap(3, top_fps, -20)],
        (3, "fps", 12, "fps"): fps_lane + [gap(3, top_fps, -20)],
        (3, "fps", 15, "fps"): fps_lane + [gap(6, top_fps)],
        (21, "audio", 10, "audio"): audio_lane + [gap(2, top_audio, 12)],
        (21, "audio", 12, "audio"): audio_lane + [gap(2, top_audio, 12), gap(2, feats_y + 34, 12)],
        (21, "audio", 15, "audio"): audio_lane + [gap(6, top_audio, 12)],
        (6, "whisper", 12, "whisper"): [gap(1, M + 14), gap(1, feats_y + 14), gap(3, feats_y + 14, 30)],
        (7, "edit_models", 14, "edit_models"): [gap(1, M + 184, -20), gap(1, 270, -20), gap(5, 270, 20),
                                                gap(5, 54, 20)],
        (8, "face_parser", 14, "face_parser"): [gap(1, M + 404, -40), gap(1, 286, -40), gap(5, 286, 30),
                                                gap(5, 114, 30)],
        (12, "audio_features", 14, "audio_features"): [gap(4, feats_y + 14, -30), gap(4, 74, -30)],
        (10, "face_track", 13, "face_track"): [gap(4, 34, 20)],
        (22, "face_track", 19, "face_track"): [gap(3, B + 14, 20), gap(3, B + 190, 20), gap(4, B + 190)],
    }
    groups = [("Inputs (replace the file names)", [1, 2, 3, 21], "#3f789e"),
              ("Models (models/joygen)", [4, 6, 7, 8, 99], "#8A8"),
              ("Video to edit: face track, fitted to the driver's length", [9, 10], "#b58b2a"),
              ("Driver: its mouth as motion, its speech as features; mouth depth and a plot", [22, 23, 12, 13, 19],
               "#a1309b"),
              ("Previews", [17, 20], "#a1309b"),
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
    nodes.append(N(99, "MarkdownNote", (0, M + 250), {"text": note}, "Read me"))
    return Spec("joygen_video_driven", note, sorted(nodes, key=lambda n: n.id), links, groups, routes)


def all_in_one() -> Spec:
    """Core LoadVideo + LoadAudio + the loaders -> JoyGen Lip Sync -> SaveVideo."""
    nodes = [
        _loader(3, "JoyGenLoad3DMMModels", (0, 0)),
        _loader(4, "JoyGenLoadWhisper", (0, 240)),
        _loader(5, "JoyGenLoadEditModels", (0, 400)),
        _loader(6, "JoyGenLoadAudio2Motion", (0, 620)),
        _loader(7, "JoyGenLoadFaceParser", (0, 810)),
        N(1, "LoadVideo", (1, 200), {"file": VIDEO_FILE}, "Load Video (face to edit)", height=VIDEO_HEIGHT),
        N(2, "LoadAudio", (1, 250 + VIDEO_HEIGHT), {"audio": AUDIO_FILE}, "Load Audio (driving speech)"),
        N(8, "JoyGenLipSync", (2, 0), {"length_mode": "pingpong", "blend": "parsing", "seed": 0}),
        N(9, "SaveVideo", (3, 0), {"filename_prefix": "joygen/lipsync", "format": "auto", "codec": "auto"},
          width=300),
    ]
    links = [
        (1, "VIDEO", 8, "video"), (2, "AUDIO", 8, "audio"), (3, "recon_models", 8, "recon_models"),
        (4, "whisper", 8, "whisper"), (5, "edit_models", 8, "edit_models"), (6, "audio2motion", 8, "audio2motion"),
        (7, "face_parser", 8, "face_parser"), (8, "video", 9, "video"),
    ]
    # the loaders' wires climb the gap between the loaders and the inputs, then run above Load Video
    routes = {(nid, out, 8, inp): [gap(0, y + 14, dx), gap(0, lane, dx), gap(1, lane)]
              for nid, out, inp, y, lane, dx in ((4, "whisper", "whisper", 240, 66, -24),
                                                 (5, "edit_models", "edit_models", 400, 80, -8),
                                                 (6, "audio2motion", "audio2motion", 620, 94, 8),
                                                 (7, "face_parser", "face_parser", 810, 108, 24))}
    note = ("**JoyGen lip sync, all in one**: the whole job in one node, streamed from the video file in "
            "chunks with a per-video cache (new audio for the same video skips the face track). Unplug "
            "audio2motion for audio-only editing.\n\n" + _COMMON_NOTE)
    nodes.append(N(99, "MarkdownNote", (2, 680), {"text": note}, "Read me", width=WIDTH * 2 + GAP))
    groups = [("Models (models/joygen)", [3, 4, 5, 6, 7], "#8A8"),
              ("Inputs (replace the file names)", [1, 2], "#3f789e"), ("Lip sync and save", [8, 9, 99], "#88A")]
    return Spec("joygen_all_in_one", note, nodes, links, groups, routes)


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
        node = {"id": n.id, "type": n.type, "pos": [COLUMN_X[int(n.pos[0])], n.pos[1]],
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
        x0 = min(p[0] for p, _ in boxes) - GROUP_PAD
        y0 = min(p[1] for p, _ in boxes) - TITLE_HEIGHT - GROUP_TITLE
        x1 = max(p[0] + s[0] for p, s in boxes) + GROUP_PAD
        y1 = max(p[1] + s[1] for p, s in boxes) + GROUP_PAD
        groups.append({"id": gid, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                       "font_size": 24, "flags": {}})
    reroutes, extensions = _reroutes(spec, link_rows)
    extra: dict[str, Any] = {"ds": _fit_view(groups, [r["pos"] for r in reroutes]), "frontendVersion": FRONTEND_VERSION}
    if reroutes:
        extra.update(reroutes=reroutes, linkExtensions=extensions)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{spec.name}")),
        "revision": 0,
        "last_node_id": max(node_json),
        "last_link_id": len(link_rows),
        "nodes": [node_json[i] for i in sorted(node_json)],
        "links": link_rows,
        "groups": groups,
        "config": {},
        "extra": extra,
        "version": 0.4,
    }


def _fit_view(groups: list[dict], points: list[list[float]]) -> dict:
    """The saved view (``extra.ds``): every group (and the reroutes' lanes, ``points``) whole on a 1600x900 canvas,
    clear of the frontend's bars (tests/workflow_check.py CHROME), at the largest scale that does it."""
    x0 = min(g["bounding"][0] for g in groups)
    y0 = min([g["bounding"][1] for g in groups] + [p[1] - 20 for p in points])
    x1 = max(g["bounding"][0] + g["bounding"][2] for g in groups)
    y1 = max(g["bounding"][1] + g["bounding"][3] for g in groups)
    left, top, right, bottom = CHROME
    width, height = CANVAS[0] - left - right - 20, CANVAS[1] - top - bottom - 20
    scale = math.floor(min(width / (x1 - x0), height / (y1 - y0), 1.0) * 100) / 100
    return {"scale": scale, "offset": [round((left + 10) / scale - x0, 1), round((top + 10) / scale - y0, 1)]}


def _reroutes(spec: Spec, link_rows: list[list]) -> tuple[list[dict], list[dict]]:
    """Native reroutes (``extra.reroutes``) for the routed links: one reroute per distinct point of an output's
    routes (links of one output share their common first points), each naming its parent and its links; a routed
    link names its last reroute (``extra.linkExtensions``)."""
    ids: dict[tuple, int] = {}
    reroutes: dict[int, dict] = {}
    extensions = []
    for row in link_rows:
        lid, a, _, b = row[:4]
        key = next(((x, o, y, i) for x, o, y, i in spec.routes if (x, y) == (a, b) and
                    _link_id(spec, (x, o, y, i)) == lid), None)
        if key is None:
            continue
        parent = None
        for k in range(len(spec.routes[key])):
            path = (a, key[1], tuple(spec.routes[key][: k + 1]))
            if path not in ids:
                ids[path] = len(ids) + 1
                reroutes[ids[path]] = {"id": ids[path], "pos": list(spec.routes[key][k]), "linkIds": []}
                if parent is not None:
                    reroutes[ids[path]]["parentId"] = parent
            parent = ids[path]
            reroutes[parent]["linkIds"].append(lid)
        extensions.append({"id": lid, "parentId": parent})
    return list(reroutes.values()), extensions


def _link_id(spec: Spec, link: Link) -> int:
    return spec.links.index(link) + 1


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
