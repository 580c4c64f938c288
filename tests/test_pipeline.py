"""The whole job on files: real face clip + speech -> edited MP4, the per-video cache, bad input."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
    assert VideoCache(entries[0]).problem() is None  # sizes and checksums recorded and right
    stamps = {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()}
    os.utime(entries[0], (1e9, 1e9))  # last used in 2001
    clip = read_audio(clip_dir / "face.mp4")  # other audio: the clip's own sentence, trimmed
    other = AudioClip(clip.waveform[:, : clip.sample_rate // 2], clip.sample_rate)
    second = lip_sync(clip_dir / "face.mp4", other, tmp_path / "b.mp4", models, _opts(use_depth=False),
                      cache_root=cache)
    assert second.cache_hit and second.frames == 12  # 0.5 s at 25 fps: shorter than the video, trimmed
    assert {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()} == stamps
    assert time.time() - entries[0].stat().st_mtime < 600  # the hit is the entry's last use (LRU eviction)
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
        def progress(s, done, total, preview=None):
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
    for frames in (torch.tensor([5, 6, 7]), torch.tensor([3, 4]), torch.tensor([8])):  # one chunk, in a row: views
        masked, reference, masks = VideoCache(tmp_path).gather(frames, chunk)
        assert torch.equal(masked[:, 0, 0, 0], frames.float()) and torch.equal(reference[:, 1, 2, 3], -frames.float())
        assert torch.equal(masks[:, 5, 4], frames.to(torch.uint8)) and masks.shape == (len(frames), 6, 5)


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
    frames = read_frames(clip_dir / "face.mp4")  # detected in the pipeline's chunks (batch numerics), smoothed once
    raw = detect_all(iter([frames[:8], frames[8:]]), models.recon.detector)
    whole = smooth_detections(raw, 25.0)
    halves = torch.cat([smooth_detections(raw.slice(0, 8), 25.0).box, smooth_detections(raw.slice(8, 16), 25.0).box])
    assert len(track) == 16 and track.meta["smoothed"]
    # one smoothing over all 16 frames, not 2 x 8. MTCNN's boxes move a little with the batch split and torch's
    # thread count (seen: 0 to 0.34 px between runs), far less than smoothing per chunk moves them (2.5-3.5 px)
    near, far = (track.det_box - whole.box).abs().max(), (track.det_box - halves).abs().max()
    assert near < 1.0 and far > 4 * near, (near, far)


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
    monkeypatch.setenv("JOYGEN_CACHE", str(tmp_path / "persistent"))
    speech = read_audio(clip_dir / "short.wav")
    a2m = SimpleNamespace(model=models.a2m, hubert=models.hubert)
    (video,) = JoyGenLipSync().run(FileVideo(clip_dir / "face.mp4"), audio_to_comfy(speech), models.recon,
                                   models.whisper, models.edit, blend="landmarks", seed=3, audio2motion=a2m,
                                   batch_size=4, chunk_frames=8)
    out = tmp_path / "node.mp4"  # the node returns the result held in memory
    out.write_bytes(video.get_stream_source().getvalue())
    work = tmp_path / "temp" / "joygen"
    assert not work.exists() or not any(work.iterdir())  # nothing of ours left in temp/
    assert any((tmp_path / "persistent").iterdir())  # the per-video cache lives outside temp/, kept across starts
    assert not (tmp_path / "temp" / "joygen_cache").exists()
    lib = tmp_path / "lib.mp4"
    lip_sync(clip_dir / "face.mp4", speech, lib, models, _opts(seed=3), cache_root=tmp_path / "cache")
    assert probe_video(out).frame_count == probe_video(lib).frame_count == round(speech.duration * 25)
    assert len(encoded) == 2 and np.array_equal(encoded[0], encoded[1])
    node_audio, lib_audio = read_audio(out), read_audio(lib)  # the node writes stereo, as ComfyUI's CreateVideo
    assert node_audio.channels == 2 and abs(node_audio.duration - lib_audio.duration) < 0.05


def test_bad_audio_fails_before_the_per_video_pass(models, clip_dir, tmp_path):
    from joygen_core.errors import MediaError

    bad = AudioClip(torch.zeros(1, 1600), 0)
    with pytest.raises(MediaError, match="sample rate"):
        lip_sync(clip_dir / "face.mp4", bad, tmp_path / "out.mp4", models, _opts(), cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------- the cache heals, fails soft, and is cleaned


@pytest.fixture(scope="module")
def half_second(clip_dir) -> AudioClip:
    clip = read_audio(clip_dir / "face.mp4")
    return AudioClip(clip.waveform[:, : clip.sample_rate // 2], clip.sample_rate)


@pytest.fixture(scope="module")
def built_cache(models, clip_dir, half_second, tmp_path_factory) -> Path:
    """A cache root holding one complete entry of the face clip (audio-only settings, 2 chunks of 8 frames)."""
    d = tmp_path_factory.mktemp("built_cache")
    lip_sync(clip_dir / "face.mp4", half_second, d / "out.mp4", models, _opts(use_depth=False), cache_root=d / "cache")
    return d / "cache"


def _truncate_latents(entry: Path) -> None:
    f = entry / "latents_00001.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _break_meta(entry: Path) -> None:
    (entry / "meta.json").write_text((entry / "meta.json").read_text()[:40])


def _flip_track_bytes(entry: Path) -> None:
    f = entry / "track.safetensors"
    data = bytearray(f.read_bytes())
    data[-100:-90] = bytes(b ^ 0x5A for b in data[-100:-90])  # same size: only the checksum can tell
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate_latents, _break_meta, _flip_track_bytes])
def test_damaged_cache_entry_is_rebuilt_with_one_warning(models, clip_dir, half_second, built_cache, tmp_path,
                                                         caplog, damage):
    root = tmp_path / "cache"
    shutil.copytree(built_cache, root)
    (entry,) = root.iterdir()
    good = json.loads((entry / "meta.json").read_text())
    damage(entry)
    with caplog.at_level(logging.WARNING):
        report = lip_sync(clip_dir / "face.mp4", half_second, tmp_path / "out.mp4", models, _opts(use_depth=False),
                          cache_root=root)
    assert not report.cache_hit and probe_video(tmp_path / "out.mp4").frame_count == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0] and entry.name in warnings[0], warnings
    assert [p.name for p in root.iterdir()] == [entry.name]  # rebuilt in place, nothing else left
    assert VideoCache(entry).problem() is None
    rebuilt = json.loads((entry / "meta.json").read_text())["files"]
    assert sorted(rebuilt) == sorted(good["files"])  # the same work, recomputed
    assert all(rebuilt[f][0] == good["files"][f][0] for f in rebuilt if f.endswith(".safetensors"))
    caplog.clear()
    again = lip_sync(clip_dir / "face.mp4", half_second, tmp_path / "again.mp4", models, _opts(use_depth=False),
                     cache_root=root)
    assert again.cache_hit and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unwritable_cache_folder_runs_without_a_cache(models, clip_dir, half_second, tmp_path, caplog):
    (tmp_path / "a_file").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        report = lip_sync(clip_dir / "face.mp4", half_second, tmp_path / "out.mp4", models, _opts(use_depth=False),
                          cache_root=tmp_path / "a_file" / "cache")
    assert not report.cache_hit and (tmp_path / "out.mp4").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "running without a cache" in warnings[0]


def test_unwritable_output_folder_fails_before_any_work(models, clip_dir, tmp_path, monkeypatch):
    import joygen_core.pipeline as pipeline
    import joygen_core.video.io as video_io
    from joygen_core.errors import MediaError

    monkeypatch.setattr(pipeline, "_build_cache", lambda *a, **kw: pytest.fail("the per-video work started"))
    monkeypatch.setattr(video_io, "probe_video", lambda *a, **kw: pytest.fail("the video was read"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MediaError, match="Cannot write the output .*a_file is a file"):
        lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", tmp_path / "a_file" / "out.mp4", models, _opts(),
                 cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


KILLED_RUN = """
import os, signal, sys
from joygen_core.pipeline import LipSyncOptions, lip_sync, load_models
from joygen_core.weights import ModelStore

video, audio, out, cache, models_dir, stage = sys.argv[1:]
models = load_models(ModelStore(models_dir), "cpu", blend="landmarks")  # as the models fixture: same key

def progress(s, done, total, preview=None):
    if s == stage and done >= total:  # the stage's last chunk done: its work is on disk, the run not finished
        os.kill(os.getpid(), signal.SIGKILL)

lip_sync(video, audio, out, models, LipSyncOptions(blend="landmarks", use_depth=False, chunk_frames=8, batch_size=4),
         cache_root=cache, progress=progress)
"""


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(models, models_dir, clip_dir, tmp_path):
    """SIGKILL leaves a ``<key>.partial<pid>`` cache folder (killed while caching) and a hidden
    ``.NAME.partial<pid>.mp4`` (killed while encoding); the next run removes both, keeps a live run's files,
    and trims the cache to its cap, least recently used first."""
    from test_cache import _entry

    for stage in ("video", "edit"):  # each in its own folders: a run sweeps what it finds
        args = [str(clip_dir / "face.mp4"), str(clip_dir / "short.wav"), str(tmp_path / stage / "talk.mp4"),
                str(tmp_path / stage / "cache"), str(models_dir), stage]
        proc = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    cache, outs = tmp_path / "video" / "cache", tmp_path / "edit"
    (partial,) = cache.iterdir()  # killed while caching
    assert re.fullmatch(r"[0-9a-f]{24}\.partial\d+", partial.name) and any(partial.iterdir())
    (left,) = [p for p in outs.iterdir() if p.is_file()]
    assert re.fullmatch(r"\.talk\.partial\d+\.mp4", left.name) and not (outs / "talk.mp4").exists()
    (entry,) = (outs / "cache").iterdir()  # killed while encoding: its cache was complete, and in use
    assert VideoCache(entry).problem() is None and any(p.name.startswith(".in_use.") for p in entry.iterdir())
    entry = entry.rename(cache / entry.name)
    live_out = outs / f".other.partial{os.getpid()}.mp4"  # a run of this very process, in progress
    live_out.write_bytes(b"x")
    live_cache = cache / f"{'f' * 24}.partial{os.getpid()}"
    live_cache.mkdir()
    old = _entry(cache, "e" * 24, payload=10_000, last_used=time.time() - 86400)

    report = lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", outs / "talk.mp4", models, _opts(use_depth=False),
                      cache_root=cache, cache_max_gb=1e-9)
    assert report.cache_hit and (outs / "talk.mp4").is_file()
    assert sorted(p.name for p in outs.iterdir()) == sorted(["cache", "talk.mp4", live_out.name])
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, live_cache.name])  # old: evicted
    assert not old.exists() and not any(p.name.startswith(".in_use.") for p in entry.iterdir())


def test_lip_sync_node_leaves_no_intermediate_file_in_temp(pack, models, clip_dir, tmp_path, monkeypatch):
    """An in-memory VIDEO is saved to temp/joygen/ for the streamed read; that copy goes when the run ends,
    finished or failed, and the per-video cache goes to the persistent cache folder."""
    import io

    import joygen_core.pipeline as pipeline
    from joygen_core.video.convert import audio_to_comfy
    from joygen_pack.nodes.edit import JoyGenLipSync

    class MemoryVideo:  # like ComfyUI's VideoFromFile over a BytesIO
        def get_stream_source(self):
            return io.BytesIO((clip_dir / "face.mp4").read_bytes())

        def save_to(self, path, **_):
            shutil.copyfile(clip_dir / "face.mp4", path)

    seen = {}

    def fake_lip_sync(src, audio, out, models, options, *, cache_root, progress):
        seen.update(src=Path(src), cache_root=Path(cache_root))
        assert Path(src).is_file() and probe_video(src).frame_count == 16
        if seen.get("fail"):
            raise KeyboardInterrupt
        Path(out).write_bytes((clip_dir / "face.mp4").read_bytes())
        return pipeline.LipSyncReport(output=Path(out), frames=16)

    monkeypatch.setattr(pipeline, "lip_sync", fake_lip_sync)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOYGEN_CACHE", str(tmp_path / "persistent"))
    run = JoyGenLipSync().run
    args = (MemoryVideo(), audio_to_comfy(read_audio(clip_dir / "short.wav")), models.recon, models.whisper,
            models.edit)
    run(*args, blend="landmarks")
    work = tmp_path / "temp" / "joygen"
    assert seen["src"].parent == work and not work.exists() or not any(work.iterdir())  # read back, then deleted
    assert seen["cache_root"] == tmp_path / "persistent"
    seen["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        run(*args, blend="landmarks")
    assert not work.exists() or not any(work.iterdir())


def test_trim_ends_the_audio_track_with_the_video(models, clip_dir, tmp_path):
    """--length trim with audio far longer than the video: the output's audio ends where its frames end."""
    out = tmp_path / "trim.mp4"
    report = lip_sync(clip_dir / "face.mp4", clip_dir / "short.wav", out, models, _opts(use_depth=False,
                      length_mode="trim"), cache_root=tmp_path / "cache")
    src, res = probe_video(clip_dir / "face.mp4"), probe_video(out)
    assert report.frames == res.frame_count == src.frame_count == 16
    assert read_audio(clip_dir / "short.wav").duration > 0.8  # longer than the 0.64 s of video
    assert abs(read_audio(out).duration - 16 / 25) < 0.05


# ---------------------------------------------------------------- progress per batch, previews, interrupts


class Stop(Exception):
    """What an interrupting progress callback raises (ComfyUI raises its own interrupt exception)."""


@pytest.fixture(scope="module")
def clip54(tmp_path_factory, face_frames) -> tuple[Path, AudioClip]:
    """54 frames of the face clip (one chunk of 64), and 2.16 s of a buzzing tone: 54 output frames."""
    d = tmp_path_factory.mktemp("clip54")
    write_video(d / "face54.mp4", iter([face_frames[:54]]), fps=25.0)
    t = torch.arange(int(2.16 * 16000)) / 16000
    wave = (0.3 * torch.sin(2 * np.pi * 180 * t) * (torch.sin(2 * np.pi * 3 * t) > 0)).float()[None]
    return d / "face54.mp4", AudioClip(wave, 16000)


@pytest.fixture(scope="module")
def counted_run(models, clip54, tmp_path_factory):
    """One cold run of the 54-frame clip with batches of 8 and chunks of 64, every progress call recorded."""
    video, audio = clip54
    d = tmp_path_factory.mktemp("counted")
    calls = []

    def progress(stage, done, total, preview=None):
        calls.append((stage, done, total, preview))

    report = lip_sync(video, audio, d / "out.mp4", models, _opts(chunk_frames=64, batch_size=8),
                      cache_root=d / "cache", progress=progress)
    return calls, report, d


def test_progress_is_reported_once_per_batch_in_every_stage(counted_run):
    calls, report, d = counted_run
    assert report.frames == 54 and not report.cache_hit
    stages = [c[0] for c in calls]
    assert stages == sorted(stages, key=["faces", "video", "audio", "edit"].index)  # stage by stage, in order
    for stage in ("faces", "video", "edit"):
        mine = [c for c in calls if c[0] == stage]
        assert len(mine) == 7, (stage, [c[1:3] for c in mine])  # ceil(54 / 8), not one per chunk of 64
        assert [c[1] for c in mine] == [8, 16, 24, 32, 40, 48, 54]
        assert all(c[2] == 54 for c in mine)
    assert [c[1:3] for c in calls if c[0] == "audio"] == [(1, 2), (2, 2)]


def test_previews_show_the_3dmm_overlay_and_the_edited_face_with_its_depth(counted_run, face_frames):
    calls, report, d = counted_run
    assert all(c[3] is None for c in calls if c[0] in ("faces", "audio"))
    video = [c[3] for c in calls if c[0] == "video"]
    edit = [c[3] for c in calls if c[0] == "edit"]
    assert all(callable(p) for p in video + edit)
    overlay = video[-1]()  # the last frame of the clip with the landmarks drawn
    assert overlay.dtype == np.uint8 and overlay.shape == face_frames.shape[1:]
    green = (overlay[..., 1] == 255) & (overlay[..., 0] == 0) & (overlay[..., 2] == 0)
    assert green.sum() >= 68  # the 68 landmarks, in pure green
    face = edit[-1]()
    assert face.dtype == np.uint8 and face.shape == (256, 512, 3)  # edited face | its mouth depth
    depth = face[:, 256:]
    assert (depth[..., 0] == depth[..., 1]).all() and depth.max() > 0 and (depth == 0).mean() > 0.5
    assert face[:, :256].std() > 5  # a decoded face, not a blank


@pytest.mark.parametrize("stage,at,pipelined", [("faces", 2, True), ("video", 3, True), ("audio", 1, True),
                                                ("edit", 2, True), ("edit", 2, False)])
def test_interrupt_stops_within_a_batch_and_leaves_nothing(models, clip54, counted_run, tmp_path, stage, at,
                                                           pipelined):
    import threading

    video, audio = clip54
    root = tmp_path / "cache"
    if stage in ("audio", "edit"):  # the per-video work is done: interrupt the later stages on a warm cache
        shutil.copytree(counted_run[2] / "cache", root)
    before = set(threading.enumerate())
    seen, after = [], []
    stop = Stop("interrupted")

    def progress(s, done, total, preview=None):
        if seen and seen[-1] is stop:
            after.append(s)
        if s == stage:
            seen.append(done)
            if len(seen) == at:
                seen.append(stop)
                raise stop

    out = tmp_path / "out.mp4"
    with pytest.raises(Stop) as caught:
        lip_sync(video, audio, out, models, _opts(chunk_frames=64, batch_size=8, pipelined=pipelined),
                 cache_root=root, progress=progress)
    assert caught.value is stop  # the very exception, re-raised
    assert after == []  # not one more report (and so no more work) after the interrupt
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no output, no hidden partial
    entries = list(root.iterdir()) if root.exists() else []
    assert not [p for p in entries if "partial" in p.name]
    if stage in ("faces", "video"):
        assert entries == []  # nothing of the unfinished per-video work
    else:
        assert all(VideoCache(p).problem() is None for p in entries)  # the finished entry, intact and released
        assert not [f for p in entries for f in p.iterdir() if f.name.startswith(".in_use.")]
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []  # no thread left behind


def test_pipelined_and_serial_engines_hand_the_encoder_the_same_frames(models, clip54, counted_run, tmp_path,
                                                                       monkeypatch):
    """Reading ahead and encoding behind the networks changes when things run, never what is written."""
    import joygen_core.video.io as video_io

    video, audio = clip54
    encoded = {}
    real_write = video_io.write_video

    def keep_frames(path, frames, **kw):
        chunks = []

        def tee():
            for c in frames:
                chunks.append(np.array(c))  # a copy of what the encoder got, as it got it
                yield c

        try:
            return real_write(path, tee(), **kw)
        finally:
            encoded[Path(path).stem] = (chunks, kw)

    monkeypatch.setattr(video_io, "write_video", keep_frames)
    shutil.copytree(counted_run[2] / "cache", tmp_path / "cache")  # warm: the edit pass alone differs
    for pipelined in (True, False):
        name = "pipelined" if pipelined else "serial"
        report = lip_sync(video, audio, tmp_path / f"{name}.mp4", models,
                          _opts(chunk_frames=64, batch_size=8, pipelined=pipelined, preset="veryfast"),
                          cache_root=tmp_path / "cache")
        assert report.cache_hit and report.frames_with_face == 54
    (a, kw), (b, _) = encoded["pipelined"], encoded["serial"]
    assert [c.shape[0] for c in a] == [8] * 6 + [6]  # one batch at a time into the encoder
    assert np.array_equal(np.concatenate(a), np.concatenate(b))
    assert kw["preset"] == "veryfast" and kw["crf"] == 18
    first = read_frames(counted_run[2] / "out.mp4").astype(int)
    assert np.abs(np.concatenate(a).astype(int) - first).mean() < 2.5  # the cold run's picture, one encode apart
    got, want = read_frames(tmp_path / "pipelined.mp4"), read_frames(tmp_path / "serial.mp4")
    assert got.shape == want.shape == (54, *np.concatenate(a).shape[1:])
    # the same frames went in (above); x264 with threads is not bit-reproducible from run to run in one process
    # (seen: single pixels up to 24 apart), so the two files agree on the whole, not pixel for pixel
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs_end_to_end_close_to_float32(models, models_dir, clip_dir, half_second, tmp_path,
                                                            monkeypatch, dtype):
    """The GPU's dtypes through the whole job on the CPU: per-video latents and the edit in ``dtype``, the same
    picture as float32 up to rounding."""
    from dataclasses import replace

    import joygen_core.video.io as video_io
    from joygen_core.edit.models import load_edit_models

    low = replace(models, edit=load_edit_models(models_dir / "joygen", models_dir / "sd-vae-ft-mse", "cpu", dtype))
    encoded = {}
    real_write = video_io.write_video

    def keep_frames(path, frames, **kw):
        chunks = [np.array(c) for c in frames]
        encoded[Path(path).stem] = np.concatenate(chunks)
        return real_write(path, iter(chunks), **kw)

    monkeypatch.setattr(video_io, "write_video", keep_frames)
    for name, m in (("f32", models), ("low", low)):
        lip_sync(clip_dir / "face.mp4", half_second, tmp_path / f"{name}.mp4", m, _opts(use_depth=False),
                 cache_root=tmp_path / name)
    a, b = encoded["f32"].astype(int), encoded["low"].astype(int)
    assert a.shape == b.shape == (12, 350, 350, 3)
    diff = np.abs(a - b)
    assert diff.mean() < 0.5 and np.quantile(diff, 0.999) <= 24, (diff.mean(), diff.max())
    track = VideoCache(next((tmp_path / "f32").iterdir())).track()
    assert diff.max() > 0 or not bool(track.detected.any())  # the edit really ran in another precision


def test_encoder_settings_reach_write_video():
    import joygen_core.video.io as video_io
    from joygen_core.pipeline import _write_video_kwargs

    kw = _write_video_kwargs(video_io.write_video, LipSyncOptions(crf=23, preset="fast", encoder="libx264"))
    assert kw == {"crf": 23, "preset": "fast", "encoder": "libx264"}
    assert LipSyncOptions().preset == "medium" and LipSyncOptions().encoder == "auto" and LipSyncOptions().pipelined
