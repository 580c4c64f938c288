"""The all-in-one node in a (stand-in) ComfyUI: one bar over the job, a few result frames shown in the node, a VIDEO
held in memory so nothing of ours stays in temp/, the per-video cache outside temp/, stereo sound as CreateVideo
writes it, and an interrupted run leaves nothing behind."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_node_progress import Interrupted, comfy  # noqa: F401  (the fake ComfyUI fixture)

from joygen_core.pipeline import load_models
from joygen_core.video.io import probe_video, read_audio, write_video
from joygen_core.weights import ModelStore


@pytest.fixture(scope="module")
def models(models_dir):
    return load_models(ModelStore(models_dir), "cpu", blend="landmarks")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, face_frames, speech_wav):
    from conftest import synth_speech

    d = tmp_path_factory.mktemp("lipsync_node")
    write_video(d / "face.mp4", iter([face_frames[:16]]), fps=25.0, audio=read_audio(speech_wav))
    synth_speech(d / "short.wav", "Hi there.")  # mono speech
    return d


def _inputs(models, clip_dir, video):
    from joygen_core.video.convert import audio_to_comfy

    return dict(video=video, audio=audio_to_comfy(read_audio(clip_dir / "short.wav")), recon_models=models.recon,
                whisper=models.whisper, edit_models=models.edit, blend="landmarks", seed=3,
                audio2motion=SimpleNamespace(model=models.a2m, hubert=models.hubert), batch_size=4, chunk_frames=8)


def _ours(folder: Path) -> list[Path]:
    """What the pack left in ComfyUI's temp folder, besides the node's UI images."""
    return [p for p in folder.rglob("*") if not (p.suffix == ".png" and p.name.startswith("JoyGen_"))]


class MemoryVideo:  # like ComfyUI's VideoFromFile over a BytesIO: saved to temp/joygen/ for the streamed read
    def __init__(self, path: Path):
        self.path = path

    def get_stream_source(self):
        return io.BytesIO(self.path.read_bytes())

    def save_to(self, path, **_):
        shutil.copyfile(self.path, path)


def test_all_in_one_in_comfyui(comfy, models, clip_dir, tmp_path, monkeypatch):  # noqa: F811
    from joygen_pack.nodes.edit import JoyGenLipSync

    monkeypatch.delenv("JOYGEN_CACHE", raising=False)
    out = JoyGenLipSync().run_node(**_inputs(models, clip_dir, MemoryVideo(clip_dir / "face.mp4")))
    (video,) = out["result"]
    source = video.get_stream_source()
    assert isinstance(source, io.BytesIO)  # the result does not need a file of ours
    result = tmp_path / "result.mp4"
    video.save_to(str(result))
    speech = read_audio(clip_dir / "short.wav")
    assert probe_video(result).frame_count == round(speech.duration * 25)
    assert speech.channels == 1 and read_audio(result).channels == 2  # as core CreateVideo writes the same input
    assert _ours(comfy.temp) == []  # no intermediate MP4, no copied input, no folder
    shown = out["ui"]["images"]
    assert len(shown) == 4 and all((comfy.temp / e["filename"]).is_file() for e in shown)
    assert any((tmp_path / "user" / "joygen_cache").iterdir())  # the per-video cache: ComfyUI's user folder
    values = [v for v, _, _ in comfy.updates]
    assert values == sorted(values) and values[-1] == 1000
    # one bar over the job: faces, 3D faces and latents (2 chunks), audio, edit (2 chunks) each report
    assert len(values) >= 6 and values[0] < 100
    assert {t.split(":")[0] for t in comfy.texts} >= {"finding faces", "3D faces and latents", "editing"}


def test_interrupted_all_in_one_leaves_nothing(comfy, models, clip_dir, tmp_path, monkeypatch):  # noqa: F811
    from joygen_pack.nodes.edit import JoyGenLipSync

    monkeypatch.setenv("JOYGEN_CACHE", str(tmp_path / "cache"))
    comfy.interrupt_after = 4  # during the per-video pass
    with pytest.raises(Interrupted):
        JoyGenLipSync().run_node(**_inputs(models, clip_dir, MemoryVideo(clip_dir / "face.mp4")))
    assert _ours(comfy.temp) == [] and not list(comfy.temp.glob("*.png"))
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]  # no partial cache entry


def test_encoder_widgets_reach_the_library(comfy, models, clip_dir, monkeypatch):  # noqa: F811
    """preset, encoder, crf and pipelined are passed to lip_sync as given (the library tests what they do)."""
    import joygen_core.pipeline as pipeline
    from joygen_pack.nodes.edit import JoyGenLipSync

    seen = {}

    def fake_lip_sync(src, audio, out, models, options, **kw):
        seen["options"] = options
        raise Interrupted()

    monkeypatch.setattr(pipeline, "lip_sync", fake_lip_sync)
    with pytest.raises(Interrupted):
        JoyGenLipSync().run(**_inputs(models, clip_dir, MemoryVideo(clip_dir / "face.mp4")), crf=23,
                            preset="veryfast", encoder="libx264", pipelined=False)
    o = seen["options"]
    assert (o.crf, o.preset, o.encoder, o.pipelined) == (23, "veryfast", "libx264", False)
    defaults = JoyGenLipSync.INPUT_TYPES()["optional"]
    assert defaults["preset"][1]["default"] == "medium" and defaults["encoder"][1]["default"] == "auto"
