"""The whole job on files: real face clip + speech -> edited MP4, the per-video cache, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from joygen_core.pipeline import LipSyncOptions, VideoCache, _runs, fingerprint, lip_sync, load_models
from joygen_core.video.io import AudioClip, probe_video, read_audio, read_frames, write_video
from joygen_core.weights import ModelStore


@pytest.fixture(scope="module")
def models(models_dir):
    return load_models(ModelStore(models_dir), "cpu", blend="landmarks")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, face_frames, speech_wav):
    """A 16-frame real face clip at 25 fps (with audio), and a short sentence to drive it."""
    from conftest import synth_speech

    d = tmp_path_factory.mktemp("pipeline")
    write_video(d / "face.mp4", iter([face_frames[:16]]), fps=25.0, audio=read_audio(speech_wav))
    synth_speech(d / "short.wav", "Hi there.")
    return d


def _opts(**kw) -> LipSyncOptions:
    base = {"blend": "landmarks", "chunk_frames": 8, "batch_size": 4}
    base.update(kw)
    return LipSyncOptions(**base)


def test_edited_video_has_the_audio_length_the_input_fps_and_size(models, clip_dir, tmp_path):
    audio = read_audio(clip_dir / "short.wav")
    out = tmp_path / "out.mp4"
    report = lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", out, models, _opts(),
                      cache_root=tmp_path / "cache")
    src, res = probe_video(clip_dir / "face.mp4"), probe_video(out)
    assert res.fps == src.fps == 25
    assert (res.width, res.height) == (src.width, src.height)
    assert res.frame_count == round(audio.duration * 25) == report.frames
    assert res.frame_count > src.frame_count  # ping-pong filled the longer audio
    assert res.has_audio and abs(read_audio(out).duration - audio.duration) < 0.05
    assert report.frames_with_face == report.frames  # the random regressor finds the face in every frame
    edited, original = read_frames(out)[:16].astype(int), read_frames(clip_dir / "face.mp4").astype(int)
    from joygen_core.edit.mask import regenerated_region

    track = VideoCache(next((tmp_path / "cache").iterdir())).track()
    region = regenerated_region(track.box, track.detected, track.frame_size).bool().numpy()
    diff = np.abs(edited - original).mean(-1)
    assert diff[~region].mean() < 2.5  # untouched apart from one more H.264 generation
    assert diff[region].mean() > 4 * diff[~region].mean()  # the mouths were redrawn


def test_new_audio_reuses_the_video_cache(models, clip_dir, tmp_path):
    cache = tmp_path / "cache"
    first = lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", tmp_path / "a.mp4", models,
                     _opts(use_depth=False), cache_root=cache)
    entries = list(cache.iterdir())
    assert not first.cache_hit and len(entries) == 1 and VideoCache(entries[0]).complete()
    stamps = {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()}
    clip = read_audio(clip_dir / "face.mp4")  # other audio: the clip's own sentence, trimmed
    other = AudioClip(clip.waveform[:, : clip.sample_rate // 2], clip.sample_rate)
    second = lip_sync(clip_dir / "face.mp4", other, tmp_path / "b.mp4", models, _opts(use_depth=False),
                      cache_root=cache)
    assert second.cache_hit and second.frames == 12  # 0.5 s at 25 fps: shorter than the video, trimmed
    assert {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()} == stamps
    assert json.loads((entries[0] / "meta.json").read_text())["frames"] == 16
    # a setting that shapes the per-video work gives another entry
    lip_sync(clip_dir / "face.mp4", other, tmp_path / "c.mp4", models, _opts(use_depth=False, blend="box"),
             cache_root=cache)
    assert len(list(cache.iterdir())) == 2


def test_video_without_a_face_passes_through(models, clip_dir, tmp_path):
    gray = np.full((6, 64, 80, 3), 128, np.uint8)
    write_video(tmp_path / "noface.mp4", iter([gray]), fps=Fraction(30000, 1001))
    out = tmp_path / "out.mp4"
    report = lip_sync(tmp_path / "noface.mp4", clip_dir / "short.wav", out, models, _opts(use_depth=False),
                      cache_root=tmp_path / "cache")
    assert report.frames_with_face == 0
    info = probe_video(out)
    assert info.fps == Fraction(30000, 1001) and info.has_audio
    assert np.abs(read_frames(out).astype(int) - 128).max() <= 2


def test_interrupted_run_leaves_no_output_and_no_trusted_cache(models, clip_dir, tmp_path):
    out = tmp_path / "out.mp4"

    def stop_at(stage):
        def progress(s, done, total):
            if s == stage:
                raise KeyboardInterrupt

        return progress

    for stage in ("video", "edit"):
        with pytest.raises(KeyboardInterrupt):
            lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", out, models, _opts(use_depth=False),
                     cache_root=tmp_path / "cache", progress=stop_at(stage))
        assert not out.exists()
        assert [p for p in tmp_path.iterdir() if p.suffix == ".mp4"] == []
        assert not any(VideoCache(p).complete() for p in (tmp_path / "cache").iterdir()) or stage == "edit"
    assert [p.name for p in (tmp_path / "cache").iterdir() if "partial" in p.name] == []


def test_existing_output_is_never_overwritten(models, clip_dir, tmp_path):
    from joygen_core.errors import MediaError

    out = tmp_path / "mine.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(MediaError, match="already exists"):
        lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", out, models, _opts())
    assert out.read_bytes() == b"precious"


def test_fixed_reference_frame_without_a_face_is_a_clear_error(models, tmp_path, clip_dir):
    from joygen_core.errors import JoyGenError

    gray = np.full((4, 64, 64, 3), 90, np.uint8)
    write_video(tmp_path / "gray.mp4", iter([gray]), fps=25)
    with pytest.raises(JoyGenError, match="Reference frame 2 has no face"):
        lip_sync(tmp_path / "gray.mp4", clip_dir / "short.wav", tmp_path / "o.mp4", models,
                 _opts(reference_frame=2, use_depth=False), cache_root=tmp_path / "cache")


def test_runs_split_pingpong_indices_into_contiguous_reads():
    idx = torch.tensor([3, 4, 5, 5, 4, 3, 2, 2, 3])
    assert list(_runs(idx)) == [(0, 3, 6, False), (3, 2, 6, True), (7, 2, 4, False)]


def test_cache_gathers_rows_across_chunks_in_the_asked_order(tmp_path):
    """Ping-pong and repeated source frames cross chunk borders: every row must come from its own frame."""
    from safetensors.torch import save_file

    chunk, n = 4, 10
    for k in range(0, n, chunk):
        ids = torch.arange(k, min(k + chunk, n), dtype=torch.float32)
        lat = ids[:, None, None, None].expand(-1, 4, 32, 32)
        save_file({"masked": lat.half().contiguous(), "reference": (-lat).half().contiguous()},
                  str(tmp_path / f"latents_{k // chunk:05d}.safetensors"))
        np.savez_compressed(tmp_path / f"masks_{k // chunk:05d}.npz",
                            masks=ids.to(torch.uint8)[:, None, None].expand(-1, 6, 5).numpy())
    frames = torch.tensor([9, 8, 3, 4, 4, 0, 7, 1, 9])
    masked, reference, masks = VideoCache(tmp_path).gather(frames, chunk)
    assert masks.dtype == torch.uint8 and masks.shape == (9, 6, 5)
    assert torch.equal(masked[:, 0, 0, 0], frames.float()) and torch.equal(reference[:, 1, 2, 3], -frames.float())
    assert torch.equal(masks[:, 5, 4], frames.to(torch.uint8))


def test_cli_edit_writes_the_video(models_dir, clip_dir, tmp_path):
    out = tmp_path / "cli.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "joygen_core", "edit", "--video", str(clip_dir / "face.mp4"), "--audio",
         str(clip_dir / "short.wav"), "--out", str(out), "--models", str(models_dir), "--blend", "landmarks",
         "--audio-only", "--cache", str(tmp_path / "cache"), "--chunk-frames", "8"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and probe_video(out).has_audio
    assert "with a face" in proc.stdout


def test_cli_missing_models_is_one_clear_error(clip_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "joygen_core", "edit", "--video", str(clip_dir / "face.mp4"), "--audio",
         str(clip_dir / "short.wav"), "--out", str(tmp_path / "x.mp4"), "--models", str(tmp_path / "nowhere")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 2
    assert "model folder does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_60_fps_odd_sized_video(models, face_frames, tmp_path):
    frames = np.ascontiguousarray(face_frames[:10, :349, :347])
    write_video(tmp_path / "odd.mp4", iter([frames]), fps=60)
    src = probe_video(tmp_path / "odd.mp4")
    speech = AudioClip(torch.zeros(1, 16000 // 5), 16000)  # 0.2 s of silence: 12 frames at 60 fps
    report = lip_sync(tmp_path / "odd.mp4", speech, tmp_path / "out.mp4", models, _opts(),
                      cache_root=tmp_path / "cache")
    res = probe_video(tmp_path / "out.mp4")
    assert res.fps == 60 and report.frames == res.frame_count == 12
    assert (res.width, res.height) == (src.width, src.height)  # the source was padded to even already


def test_frame_reader_seeks_back_across_key_frames(tmp_path):
    from joygen_core.video.io import FrameReader

    n = 300  # x264 puts a key frame every 250: reading back from 280 to 260 must seek, not restart wrongly
    frames = np.zeros((n, 32, 48, 3), np.uint8)
    frames[..., 0] = (np.arange(n) % 256)[:, None, None]
    frames[..., 1] = (np.arange(n) // 256 * 100)[:, None, None]
    write_video(tmp_path / "long.mp4", iter([frames]), fps=Fraction(30000, 1001), crf=0)
    ref = read_frames(tmp_path / "long.mp4")
    with FrameReader(tmp_path / "long.mp4") as reader:
        for start, stop in [(0, 40), (280, 300), (260, 280), (10, 20), (249, 252), (299, 400)]:
            got = reader.read(start, stop)
            assert np.array_equal(got, ref[start:stop]), (start, stop)
        with pytest.raises(Exception, match="past its end"):
            reader.read(400, 410)


def test_smoothing_spans_chunk_borders(models, clip_dir, tmp_path):
    from joygen_core.morphable.reconstruct import detect_all, smooth_detections

    clip = read_audio(clip_dir / "face.mp4")
    short = AudioClip(clip.waveform[:, : clip.sample_rate // 5], clip.sample_rate)
    lip_sync(clip_dir / "face.mp4", short, tmp_path / "o.mp4", models, _opts(use_depth=False, smooth=True),
             cache_root=tmp_path / "cache")
    track = VideoCache(next((tmp_path / "cache").iterdir())).track()
    whole = smooth_detections(detect_all(iter([read_frames(clip_dir / "face.mp4")]), models.recon.detector), 25.0)
    assert len(track) == 16 and track.meta["smoothed"]
    assert torch.allclose(track.det_box, whole.box, atol=1e-4)  # one smoothing over all 16 frames, not 2 x 8


def test_fingerprint_tells_weights_apart():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    assert fingerprint(a) == fingerprint(a) and fingerprint(a) != fingerprint(b)
    c = torch.nn.Linear(4, 3)
    c.load_state_dict(a.state_dict())
    assert fingerprint(c) == fingerprint(a)  # the same weights in another object: the same key
    shape = torch.randn(300)
    assert fingerprint(shape) == fingerprint(shape.clone()) != fingerprint(shape + 1e-3)


def test_lip_sync_node_is_the_library_run(pack, models, clip_dir, tmp_path, monkeypatch):
    """The all-in-one node adapts ComfyUI values and calls lip_sync: the frames it encodes are the library's."""
    from types import SimpleNamespace

    import joygen_core.video.io as video_io
    from joygen_core.video.convert import audio_to_comfy
    from joygen_pack.nodes.comfy import FileVideo
    from joygen_pack.nodes.edit import JoyGenLipSync

    encoded = []  # x264 is not bit-reproducible across runs with threads: compare what goes into it
    real_write = video_io.write_video

    def keep_frames(path, frames, **kw):
        chunks = [np.array(c) for c in frames]
        encoded.append(np.concatenate(chunks))
        return real_write(path, iter(chunks), **kw)

    monkeypatch.setattr(video_io, "write_video", keep_frames)
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the node works under ./temp
    speech = read_audio(clip_dir / "short.wav")
    a2m = SimpleNamespace(model=models.a2m, hubert=models.hubert)
    (video,) = JoyGenLipSync().run(FileVideo(clip_dir / "face.mp4"), audio_to_comfy(speech), models.recon,
                                   models.whisper, models.edit, blend="landmarks", seed=3, audio2motion=a2m,
                                   batch_size=4, chunk_frames=8)
    out = Path(video.get_stream_source())
    assert out.is_file() and out.parent == tmp_path / "temp" / "joygen"
    assert any((tmp_path / "temp" / "joygen_cache").iterdir())  # the per-video cache lives beside it
    lib = tmp_path / "lib.mp4"
    lip_sync(clip_dir / "face.mp4", speech, lib, models, _opts(seed=3), cache_root=tmp_path / "cache")
    assert probe_video(out).frame_count == probe_video(lib).frame_count == round(speech.duration * 25)
    assert len(encoded) == 2 and np.array_equal(encoded[0], encoded[1])
    assert torch.equal(read_audio(out).waveform, read_audio(lib).waveform)


def test_bad_audio_fails_before_the_per_video_pass(models, clip_dir, tmp_path):
    from joygen_core.errors import MediaError

    bad = AudioClip(torch.zeros(1, 1600), 0)
    with pytest.raises(MediaError, match="sample rate"):
        lip_sync(clip_dir / "face.mp4", bad, tmp_path / "out.mp4", models, _opts(), cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
