"""Damaged inputs decode as ffmpeg decodes them: what can be read comes back in time, one warning names
the damage, and a file with nothing usable left is one clear MediaError (never a raw PyAV traceback)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from joygen_core.errors import MediaError
from joygen_core.video import io
from joygen_core.video.io import (
    DamagedStreamError,
    FrameReader,
    iter_frames,
    probe_audio,
    probe_video,
    read_audio,
    read_frames,
)

N, W, H, RATE = 75, 64, 48, 16000


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each damaged file warns once per process: every test starts with none given yet."""
    io._WARNED.clear()
    yield
    io._WARNED.clear()


def _mp4(path: Path, faststart: bool = False) -> Path:
    """3 s of noisy 64x48 frames (a key frame every 10) and a 440 Hz tone: bytes spread evenly over the file."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.options = {"crf": "18", "g": "10"}
        a = c.add_stream("aac", rate=RATE, layout="mono")
        for i in range(N):
            arr = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            arr[..., 0] = i * 3  # a frame's own level: which frame is shown can be told
            f = av.VideoFrame.from_ndarray(arr, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        t = np.arange(RATE * N // 25) / RATE
        wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for s in range(0, wav.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, s:s + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = RATE, s
            for p in a.encode(af):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_fast_start_file_cut_at_60_percent_ends_early(tmp_path, caplog):
    whole = _mp4(tmp_path / "whole.mp4", faststart=True)
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index first: the cut leaves it intact
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    reference = read_frames(whole)

    with caplog.at_level(logging.WARNING):
        info = probe_video(cut)
        frames = read_frames(cut)
        chunks = list(iter_frames(cut, chunk_size=8))
        with FrameReader(cut) as reader:
            tail = reader.read(info.frame_count - 5, info.frame_count + 20)  # asks past the end: clamped
            head = reader.read(0, 10)  # backward: a fresh decode
        clip = read_audio(cut)
    n = info.frame_count
    assert 20 < n < N and abs(info.duration - n / 25) < 1e-9
    assert frames.shape == (n, H, W, 3) and sum(c.shape[0] for c in chunks) == n
    np.testing.assert_array_equal(frames, reference[:n])  # what is there decodes exactly as in the whole file
    np.testing.assert_array_equal(tail, reference[n - 5:n])
    np.testing.assert_array_equal(head, reference[:10])
    assert 1.0 < clip.duration < 3.0 - 0.5 and np.isfinite(clip.waveform.numpy()).all()
    warned = _warnings(caplog)
    assert any("cut short" in w and "video" in w and str(cut) in w for w in warned)
    assert any("cut short" in w and "audio" in w for w in warned)
    assert len([w for w in warned if "video stops" in w]) == 1  # probed three times, said once


def test_garbage_in_the_middle_is_held_and_keeps_timing(tmp_path, caplog):
    whole = _mp4(tmp_path / "whole.mp4")
    data = bytearray(whole.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 20_000] = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(bytes(data))
    reference = read_frames(whole)
    ref_audio = read_audio(whole)

    with caplog.at_level(logging.WARNING):
        info = probe_video(bad)
        frames = read_frames(bad)
        chunks = list(iter_frames(bad, chunk_size=16))
        with FrameReader(bad) as reader:
            late = reader.read(60, 70)  # a seek past the damage
            inside = reader.read(30, 55)  # backward, over the damage
        clip = read_audio(bad)
        probe_audio(bad)  # the check before the models load lets it through
    assert info.frame_count == N and frames.shape == (N, H, W, 3)
    assert sum(c.shape[0] for c in chunks) == N
    np.testing.assert_array_equal(np.concatenate(chunks), frames)
    np.testing.assert_array_equal(late, frames[60:70])
    np.testing.assert_array_equal(inside, frames[30:55])
    # noisy frames never repeat by themselves: the repeats are the held span, one run, named by the warning
    repeats = [i for i in range(1, N) if np.array_equal(frames[i], frames[i - 1])]
    assert repeats and repeats == list(range(repeats[0], repeats[-1] + 1)) and 10 < repeats[0] < 60
    first_bad = next(i for i in range(N) if not np.array_equal(frames[i], reference[i]))
    assert first_bad <= repeats[0]  # every frame before the damage is its own
    assert any(np.array_equal(frames[i], reference[i]) for i in range(repeats[-1] + 1, N))  # it recovers
    warned = _warnings(caplog)
    video_warnings = [w for w in warned if "video stream is damaged" in w]
    assert len(video_warnings) == 1 and f"frames {repeats[0]}-{repeats[-1]} " in video_warnings[0]
    # the audio keeps its length and timing: lost packets are silence, the rest lines up with the original
    assert clip.waveform.shape == ref_audio.waveform.shape
    w, r = clip.waveform[0].numpy(), ref_audio.waveform[0].numpy()
    silent = np.flatnonzero(w == 0)
    a, b = silent[0], silent[-1] + 1
    assert b - a > RATE * 0.1 and b - a == silent.size  # one silent run
    # away from its edges (AAC overlaps 1024-sample frames) both sides are the original samples, in place
    np.testing.assert_allclose(w[:a - 1024], r[:a - 1024], atol=1e-6)
    np.testing.assert_allclose(w[b + 2048:], r[b + 2048:], atol=1e-6)
    assert any("audio track is damaged" in w for w in warned)


def test_nothing_decodable_is_one_clear_error(tmp_path):
    data = bytearray(_mp4(tmp_path / "whole.mp4").read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = np.random.default_rng(2).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(bytes(data))
    for read in (probe_video, read_frames, FrameReader):
        with pytest.raises(MediaError, match="none of its 75 video frames can be decoded"):
            read(bad)
    for check in (probe_audio, read_audio):
        with pytest.raises(MediaError, match="no samples that can be decoded"):
            check(bad)


def test_strict_reading_refuses_damage_and_passes_intact_files(tmp_path):
    """``strict=True`` (training data: genuine frames only) raises at the damage instead of holding frames."""
    whole = _mp4(tmp_path / "whole.mp4", faststart=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    garbage = bytearray(data)
    garbage[len(data) // 2:len(data) // 2 + 20_000] = bytes(20_000)
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(bytes(garbage))
    assert sum(c.shape[0] for c in iter_frames(whole, strict=True)) == N
    for path in (cut, bad):
        got = []
        with pytest.raises(DamagedStreamError, match=r"video stream is damaged near \d+\.\d\d s.*re-encode"):
            for chunk in iter_frames(path, chunk_size=4, fps=25, strict=True):
                got.append(chunk)
        assert isinstance(DamagedStreamError("x"), MediaError) and 0 < sum(c.shape[0] for c in got) < N
