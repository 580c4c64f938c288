"""Lip-sync scores through the library and the nodes agree with the training module's evaluation.

The stand-in SyncNet of tests/test_train_metrics.py (video: brightness, audio: loudness) on an MP4 whose
audio is k frames ahead of its picture gives offset k through the evaluation; the library's file path, its
in-memory path (face track boxes) and the Sync Score node must give the same numbers. Frames without a face
are left out and counted; no face at all, or missing weights, are clear errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_metrics import _loudness_video, _LoudnessEmbedder

from joygen_core.audio.prepare import to_mono_16k
from joygen_core.errors import InputError, MediaError, ModelFileError
from joygen_core.face.track import FaceTrack
from joygen_core.score import SYNCNET_FILE, retime_index, score_crops, score_frames, score_video, syncnet_file
from joygen_core.video.convert import audio_to_comfy, uint8_to_image
from joygen_core.video.io import read_audio, read_frames, write_video
from train.metrics import syncnet as S

ROOT = Path(__file__).resolve().parents[1]


class _WholeFrame:
    """Stand-in MTCNN: the whole frame is the face, except in the frames listed in ``missing``."""

    device = torch.device("cpu")

    def __init__(self, missing: set[int] = frozenset()):
        self.missing, self.seen = set(missing), 0

    def detect(self, batch, landmarks=True):
        n, h, w = batch.shape[:3]
        boxes, probs, points = [], [], []
        for _ in range(n):
            gone = self.seen in self.missing
            boxes.append(None if gone else np.array([[0.0, 0.0, w, h]]))
            probs.append(None if gone else np.array([0.99]))
            points.append(None if gone else np.zeros((1, 5, 2)))
            self.seen += 1
        return boxes, probs, points


def _whole_frame_track(n: int, h: int, w: int, fps: float = 25.0) -> FaceTrack:
    track = FaceTrack.empty(n, (h, w), fps=fps)
    track.detected[:] = True
    track.det_box[:] = torch.tensor([0.0, 0.0, w, h])
    return track


def _reference(video: Path):
    """What ``python -m train evaluate`` computes for this video (with the stand-in detector)."""
    from train.evaluate import sync_inputs

    inputs = sync_inputs(video, _WholeFrame())
    return S.clip_sync_scores(_LoudnessEmbedder(), inputs.faces, inputs.samples)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """Loudness videos whose sound leads the picture by k frames."""
    root = tmp_path_factory.mktemp("sync")
    return {k: _loudness_video(root / f"shift{k}.mp4", k) for k in (3, 0)}


@pytest.mark.parametrize("k", [3, 0])
def test_video_score_equals_the_evaluation(shifted, k):
    ref = _reference(shifted[k])
    got = score_video(shifted[k], _LoudnessEmbedder(), _WholeFrame())
    assert ref.offset == got.offset == k
    assert got.lse_d == ref.min_dist and got.lse_c == ref.confidence and got.windows == ref.windows
    assert got.frames_without_face == 0 and got.windows_left_out == 0 and got.retimed_from is None
    assert f"offset {k:+d} frames" in got.summary()


def test_node_on_the_track_boxes_equals_the_evaluation(pack, shifted):
    from joygen_pack.nodes.motion import JoyGenSyncScore

    video = shifted[3]
    ref = _reference(video)
    frames = read_frames(video)
    audio = audio_to_comfy(read_audio(video))
    track = _whole_frame_track(*frames.shape[:3])
    lse_d, lse_c, offset, report = JoyGenSyncScore().run(_LoudnessEmbedder(), uint8_to_image(frames), audio, 25.0,
                                                         face_track=track)
    assert (lse_d, lse_c, offset) == (ref.min_dist, ref.confidence, 3)
    assert "offset +3 frames" in report and "LSE-D" in report
    # the same picture at 50 fps (every frame twice) is re-timed to 25 fps: the same frames, the same scores
    twice = np.repeat(frames, 2, axis=0)
    got = score_frames(_LoudnessEmbedder(), twice, 50.0, read_audio(video), boxes=track.select(
        torch.arange(len(twice)) // 2).det_box, found=torch.ones(len(twice), dtype=torch.bool))
    assert (got.lse_d, got.lse_c, got.offset, got.retimed_from) == (ref.min_dist, ref.confidence, 3, 50.0)
    assert "re-timed from 50 fps" in got.summary()


def test_frames_without_a_face_are_left_out_and_counted(shifted):
    video = shifted[3]
    frames = read_frames(video)
    track = _whole_frame_track(*frames.shape[:3])
    track.detected[40:45] = False
    got = score_frames(_LoudnessEmbedder(), frames, 25.0, read_audio(video), boxes=track.det_box,
                       found=track.detected)
    assert got.frames_without_face == 5 and got.windows_left_out == 9  # windows 36..44 touch frames 40..44
    assert got.offset == 3
    # exactly the evaluation's distances with those windows removed
    faces = S.syncnet_face_crops(torch.from_numpy(frames), S.syncnet_crop_boxes(track.det_box, track.detected))
    sound = read_audio(video)
    samples = S.pcm16(to_mono_16k(sound.waveform, sound.sample_rate))
    v, a = S.embed_clip(_LoudnessEmbedder(), faces, samples)
    dists = S.sync_distances(v, a)
    keep = torch.ones(dists.shape[0], dtype=torch.bool)
    keep[36:45] = False
    ref = S.sync_scores(dists[keep])
    assert (got.lse_d, got.lse_c, got.windows) == (ref.min_dist, ref.confidence, ref.windows)
    assert "5 frames without a face left out (9 windows dropped)" in got.summary()
    # the file path finds the same gaps with a detector
    found = score_video(video, _LoudnessEmbedder(), _WholeFrame(missing=set(range(40, 45))))
    assert (found.frames_without_face, found.windows_left_out, found.offset) == (5, 9, 3)
    # ... read by the evaluation's reader, which says which frames had a face
    from train.evaluate import sync_inputs

    inputs = sync_inputs(video, _WholeFrame(missing=set(range(40, 45))))
    assert inputs.found.tolist() == [not 40 <= t < 45 for t in range(len(frames))]
    assert inputs.face_found == 0.95


def test_no_face_is_a_clear_error(pack, shifted):
    from joygen_pack.nodes.motion import JoyGenSyncScore

    video = shifted[3]
    frames = read_frames(video)
    track = FaceTrack.empty(len(frames), frames.shape[1:3], fps=25.0)
    with pytest.raises(MediaError, match="No face was found in any frame"):
        JoyGenSyncScore().run(_LoudnessEmbedder(), uint8_to_image(frames), audio_to_comfy(read_audio(video)), 25.0,
                              face_track=track)
    with pytest.raises(MediaError, match="No face was found in any frame"):
        score_video(video, _LoudnessEmbedder(), _WholeFrame(missing=set(range(1000))))
    sparse = torch.zeros(len(frames), dtype=torch.bool)
    sparse[::3] = True  # faces, but never 5 frames in a row
    with pytest.raises(MediaError, match="5 consecutive frames"):
        score_crops(_LoudnessEmbedder(), torch.zeros(len(frames), 224, 224, 3, dtype=torch.uint8), sparse,
                    torch.ones(len(frames) * 640))
    with pytest.raises(InputError, match="face track has 10 frames"):
        score_frames(_LoudnessEmbedder(), frames, 25.0, read_audio(video), boxes=track.det_box[:10],
                     found=track.detected[:10])


@pytest.mark.parametrize("fps", [30.0, 24.0, 25.0])
def test_retime_index_is_what_the_reader_does(tmp_path, fps):
    """Frames re-timed in memory equal the evaluation's reader at 25 fps (ffmpeg's fps filter)."""
    n = 47
    frames = np.broadcast_to((np.arange(n) * 5 % 256).astype(np.uint8)[:, None, None, None], (n, 16, 16, 3))
    path = write_video(tmp_path / "count.mp4", iter([np.ascontiguousarray(frames)]), fps=fps)
    native = read_frames(path)
    retimed = read_frames(path, fps=25)
    index = retime_index(len(native), fps)
    assert len(index) == len(retimed)
    assert np.array_equal(native[index.numpy()], retimed)


# ---------------------------------------------------------------- weights and the real network


def test_missing_syncnet_names_where_to_get_it(tmp_path):
    from joygen_core.weights import ModelStore

    (tmp_path / "joygen").mkdir()
    with pytest.raises(ModelFileError) as err:
        syncnet_file(ModelStore(tmp_path / "joygen"))
    assert "syncnet_python" in str(err.value) and str(tmp_path / "joygen" / SYNCNET_FILE) in str(err.value)


def test_loader_and_score_with_the_real_network(pack, tmp_path, monkeypatch, face_video):
    """The SyncNet file loads from the model folder; on a real face video the library equals the evaluation."""
    from factory._metrics import write_syncnet
    from joygen_core.face.detect import load_mtcnn
    from joygen_pack.nodes.motion import JoyGenLoadSyncNet, JoyGenSyncScore
    from train.evaluate import sync_inputs

    write_syncnet(tmp_path / "joygen" / SYNCNET_FILE, np.random.default_rng(0))
    monkeypatch.setenv("JOYGEN_MODELS", str(tmp_path / "joygen"))
    spec = JoyGenLoadSyncNet.INPUT_TYPES()["required"]["model"]
    assert spec[1]["default"] == SYNCNET_FILE
    (net,) = JoyGenLoadSyncNet().load(SYNCNET_FILE, "cpu")
    assert isinstance(net, S.SyncNet)
    detector = load_mtcnn("cpu")
    inputs = sync_inputs(face_video, detector, max_seconds=0.28)
    ref = S.clip_sync_scores(net, inputs.faces, inputs.samples)
    got = score_video(face_video, net, detector, max_seconds=0.28)
    assert inputs.face_found == 1.0 and got.frames_without_face == 0
    assert (got.lse_d, got.lse_c, got.offset, got.windows) == (ref.min_dist, ref.confidence, ref.offset, 2)
    # the node finds the faces itself when no track is connected
    frames = read_frames(face_video, max_frames=7)
    audio = read_audio(face_video)
    clip = {"waveform": audio.waveform[None, :, : int(0.28 * audio.sample_rate)], "sample_rate": audio.sample_rate}
    lse_d, lse_c, offset, _ = JoyGenSyncScore().run(net, uint8_to_image(frames), clip, 25.0)
    assert np.isfinite(lse_d) and lse_c >= 0 and abs(offset) <= 15


def test_library_never_imports_the_training_module():
    """joygen_core stands alone (ComfyUI loads the pack by path, where ``train`` is not importable by name):
    the SyncNet metric is the library's, and train.metrics.syncnet re-exports those very objects."""
    import ast

    import joygen_core.metrics.syncnet as library

    for path in (ROOT / "joygen_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n == "train" or n.startswith("train.") for n in names), f"{path} imports {names}"
    public = {n for n, v in vars(library).items()
              if not n.startswith("_") and (n.isupper() or getattr(v, "__module__", None) == library.__name__)}
    assert set(S.__all__) == public
    assert all(getattr(S, n) is getattr(library, n) for n in public)


def test_score_works_when_comfyui_loads_the_pack_by_path(tmp_path):
    """ComfyUI imports the pack from its folder without putting that folder on sys.path: the score still loads
    SyncNet (the library's own), and nothing named ``train`` is imported."""
    code = textwrap.dedent(f"""
        import importlib, importlib.util, sys
        root = {str(ROOT)!r}
        assert all(p not in (root, "") for p in sys.path[1:]), sys.path
        spec = importlib.util.spec_from_file_location("custom_joygen", root + "/__init__.py",
                                                      submodule_search_locations=[root])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["custom_joygen"] = pack
        spec.loader.exec_module(pack)
        assert "JoyGenSyncScore" in pack.NODE_CLASS_MAPPINGS
        score = importlib.import_module("custom_joygen.joygen_core.score")
        net = score.S.SyncNet()
        assert score.S.__file__.startswith(root), score.S.__file__
        assert not any(m == "train" or m.startswith("train.") for m in sys.modules), sorted(sys.modules)
        print("ok", score.S.WEIGHTS_NAME, type(net).__module__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok syncnet_v2.model custom_joygen.joygen_core.metrics.syncnet" in out.stdout


def test_score_reports_each_batch_of_windows(shifted):
    video = shifted[3]
    frames = read_frames(video)
    track = _whole_frame_track(*frames.shape[:3])
    calls = []
    got = score_frames(_LoudnessEmbedder(), frames, 25.0, read_audio(video), boxes=track.det_box,
                       found=track.detected, batch_size=8, progress=lambda d, t: calls.append((d, t)))
    n = got.windows + got.windows_left_out
    assert calls == [(min(k + 8, n), n) for k in range(0, n, 8)]
