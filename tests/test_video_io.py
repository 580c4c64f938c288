"""Video and audio I/O with PyAV: exact frame rates, re-timing, rotation, odd sizes, atomic writes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from joygen_core.audio.prepare import to_mono_16k
from joygen_core.errors import MediaError
from joygen_core.video.io import (
    AudioClip,
    FrameReader,
    as_fraction,
    iter_frames,
    probe_video,
    read_audio,
    read_frames,
    write_video,
)


def _tone(seconds: float, rate: int, channels: int = 2) -> AudioClip:
    t = torch.arange(int(round(seconds * rate))) / rate
    wav = torch.stack([0.4 * torch.sin(2 * torch.pi * (220 + 110 * c) * t) for c in range(channels)])
    return AudioClip(wav, rate)


def _raw_video(path: Path, frames: np.ndarray, pts: list[int], time_base: Fraction, pix_fmt="yuv420p",
               rotation: int | None = None, rate=25) -> Path:
    """Write frames with explicit timestamps (variable frame rate) and optional display rotation."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        s.time_base = time_base
        s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for arr, p in zip(frames, pts):
            f = av.VideoFrame.from_ndarray(arr, format="rgb24")
            f.pts = p
            f.time_base = time_base
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_round_trip_2997_keeps_frames_duration_and_audio(tmp_path, face_frames):
    frames = face_frames[:45]
    audio = _tone(45 / 29.97, 44100)
    src = write_video(tmp_path / "src.mp4", iter([frames[:20], frames[20:]]), 29.97, audio)
    info = probe_video(src)
    assert info.fps == Fraction(30000, 1001) and info.frame_count == 45 and info.has_audio
    decoded = read_frames(src)
    again = write_video(tmp_path / "again.mp4", iter([decoded]), info.fps, read_audio(src))
    info2 = probe_video(again)
    assert info2.frame_count == 45
    assert abs(info2.duration - info.duration) <= 1 / 29.97
    a1, a2 = read_audio(src), read_audio(again)
    assert abs(a1.duration - audio.duration) < 0.010
    assert abs(a2.duration - audio.duration) < 0.010
    # content survives two lossy encodes (crf 18): mean error of a few levels at most
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4


def test_odd_size_and_generator_input(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (5, 33, 47, 3), dtype=np.uint8)
    out = write_video(tmp_path / "odd.mp4", (f[None] for f in frames), 25)
    info = probe_video(out)
    assert (info.width, info.height) == (48, 34) and info.frame_count == 5


def test_retime_to_25fps_and_vfr(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.repeat(np.arange(30, dtype=np.uint8)[:, None, None, None] * 8, 32 * 32 * 3).reshape(30, 32, 32, 3)
    cfr30 = write_video(tmp_path / "c30.mp4", iter([frames]), 30)
    out = read_frames(cfr30, fps=25)
    assert out.shape[0] == 25  # 1 s
    # each output frame is the source frame nearest in time: i/25 s -> source round(i*30/25)
    levels = np.round(out[:, 16, 16, 0].astype(float) / 8).astype(int)
    expect = np.minimum(np.floor(np.arange(25) * 30 / 25 + 0.5 - 1e-9), 29).astype(int)
    assert np.abs(levels - expect).max() <= 1
    # variable frame rate: gaps of 1 and 3 ticks at 1/60 s -> detected as VFR, re-timed to constant rate
    pts = np.cumsum([0] + [1 if i % 2 else 3 for i in range(19)]).tolist()
    vfr = _raw_video(tmp_path / "vfr.mp4", rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), pts,
                     Fraction(1, 60), rate=30)
    info = probe_video(vfr)
    assert info.variable_frame_rate
    n = sum(c.shape[0] for c in iter_frames(vfr, chunk_size=4))
    assert abs(n - info.duration * float(info.fps)) <= 2


def test_rotation_metadata_is_applied(tmp_path):
    frame = np.zeros((1, 32, 64, 3), dtype=np.uint8)
    frame[0, :, :8] = 255  # a bright stripe on the left edge
    frames = np.repeat(frame, 3, 0)
    if hasattr(av.video.stream.VideoStream, "set_display_rotation"):  # PyAV 15+
        path = _raw_video(tmp_path / "rot.mp4", frames, [0, 1, 2], Fraction(1, 25), rotation=90)
    else:  # older PyAV cannot write a display matrix: ffmpeg's CLI adds one to a stream copy
        import subprocess

        import imageio_ffmpeg

        plain = _raw_video(tmp_path / "plain.mp4", frames, [0, 1, 2], Fraction(1, 25))
        path = tmp_path / "rot.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation:v:0", "90", "-i",
                        str(plain), "-c", "copy", str(path)], check=True)
    info = probe_video(path)
    assert info.rotation in (90, 270) and (info.width, info.height) == (32, 64)
    out = read_frames(path)
    assert out.shape[1:3] == (64, 32)
    # the stripe now lies along the top or bottom edge
    rows = out[0, :, :, 0].mean(axis=1)
    assert max(rows[:8].mean(), rows[-8:].mean()) > 200 and rows[24:40].mean() < 50


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv422p"])
def test_other_pixel_formats(tmp_path, pix_fmt):
    frames = np.full((3, 16, 16, 3), (200, 40, 90), dtype=np.uint8)
    path = _raw_video(tmp_path / f"{pix_fmt}.mp4", frames, [0, 1, 2], Fraction(1, 25), pix_fmt=pix_fmt)
    out = read_frames(path)
    assert np.abs(out.astype(int) - frames.astype(int)).max() < 12


def test_audio_from_wav_any_rate_and_channels(tmp_path, speech_wav):
    clip = read_audio(speech_wav)
    assert clip.channels == 1 and clip.sample_rate == 22050 and clip.duration > 1.0
    mono = to_mono_16k(clip.waveform, clip.sample_rate)
    assert abs(mono.shape[0] - clip.duration * 16000) <= 2
    six = _tone(0.5, 48000, channels=6)
    m = to_mono_16k(six.waveform, 48000)
    assert m.shape == (8000,) and m.dtype == torch.float32
    weird = torch.tensor([[0.5, float("nan"), float("inf"), -3.0]])
    assert torch.isfinite(to_mono_16k(weird, 16000)).all()


def test_streaming_decode_yields_chunks(face_video):
    chunks = list(iter_frames(face_video, chunk_size=8))
    assert all(c.shape[0] == 8 for c in chunks[:-1]) and chunks[0].dtype == np.uint8
    assert sum(c.shape[0] for c in chunks) == probe_video(face_video).frame_count
    part = list(iter_frames(face_video, chunk_size=8, start=5, max_frames=10))
    assert sum(c.shape[0] for c in part) == 10
    full = read_frames(face_video)
    assert np.array_equal(np.concatenate(part), full[5:15])


def test_bad_media_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(MediaError):
        probe_video(junk)
    with pytest.raises(MediaError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    silent = write_video(tmp_path / "silent.mp4", iter([np.zeros((2, 16, 16, 3), np.uint8)]), 25)
    with pytest.raises(MediaError, match="no audio"):
        read_audio(silent)
    with pytest.raises(MediaError):
        as_fraction(0)


def test_writer_is_atomic_and_never_overwrites(tmp_path):
    target = tmp_path / "out.mp4"

    def frames_then_crash():
        yield np.zeros((4, 16, 16, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(target, frames_then_crash(), 25, _tone(1, 16000, 1))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MediaError, match="empty"):
        write_video(target, iter([]), 25)
    assert not target.exists()
    write_video(target, iter([np.zeros((2, 16, 16, 3), np.uint8)]), 25)
    before = target.read_bytes()
    with pytest.raises(MediaError, match="already exists"):
        write_video(target, iter([np.ones((2, 16, 16, 3), np.uint8)]), 25)
    assert target.read_bytes() == before


def test_surround_audio_is_written_as_a_stereo_downmix(tmp_path):
    """5.1 driving audio: a stereo track keeping left and right apart (ffmpeg's -ac 2), not a mono mean."""
    rate = 48000
    t = torch.arange(rate) / rate
    six = torch.zeros(6, rate)
    six[0] = 0.5 * torch.sin(2 * torch.pi * 440 * t)  # FL only: 5.1 is FL FR FC LFE BL BR
    out = write_video(tmp_path / "surround.mp4", iter([np.zeros((25, 16, 16, 3), np.uint8)]), 25, AudioClip(six, rate))
    clip = read_audio(out)
    assert clip.channels == 2 and clip.sample_rate == rate
    left, right = clip.waveform[0, 2000:-2000], clip.waveform[1, 2000:-2000]
    assert left.abs().max() > 0.2 and right.abs().max() < 0.01


def test_odd_frame_size_is_padded_by_its_last_row_and_column(tmp_path, caplog):
    """719x541: H.264 4:2:0 stores only even sizes (x264 refuses an odd crop too), so 720x542 comes out with
    the picture unchanged in its top-left corner, the extra column / row repeating the last ones; one warning."""
    import logging

    y, x = np.mgrid[0:541, 0:719].astype(np.float32)
    smooth = np.stack([128 + 100 * np.sin(x / 37), 128 + 100 * np.cos(y / 23), (x + y) / 1260 * 255], -1)
    frames = np.repeat(smooth.astype(np.uint8)[None], 3, 0)
    frames[1] = frames[1, :, ::-1]  # frames differ, so each is checked
    with caplog.at_level(logging.WARNING):
        out = write_video(tmp_path / "odd.mp4", iter([frames]), 25, crf=0)
    assert sum("719x541 is odd" in r.getMessage() and "720x542" in r.getMessage() for r in caplog.records) == 1
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (720, 542, 3)
    back = read_frames(out).astype(np.float64)
    err = back[:, :541, :719] - frames
    assert 10 * np.log10(255 ** 2 / np.mean(err ** 2)) > 35  # PSNR: only the 4:2:0 chroma sampling is lost
    assert np.abs(back[:, :541, 719] - back[:, :541, 718]).mean() < 3  # the repeated column
    assert np.abs(back[:, 541, :719] - back[:, 540, :719]).mean() < 3  # the repeated row


def test_grayscale_and_ten_bit_videos_read_as_rgb(tmp_path):
    """A gray pix_fmt video (PNG in MOV decodes to gray) and H.264 4:0:0 come back as RGB with three equal
    channels; 10-bit 4:2:0 comes back as 8-bit RGB. FrameReader agrees with read_frames on each."""
    rng = np.random.default_rng(3)
    gray = np.repeat(rng.integers(0, 255, (4, 8, 8), dtype=np.uint8).repeat(4, 1).repeat(4, 2)[..., None], 3, -1)
    png = tmp_path / "gray.mov"
    with av.open(str(png), "w") as c:
        s = c.add_stream("png", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "gray"
        for i, arr in enumerate(gray):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[..., 0]), format="gray")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe_video(png)
    assert info.pix_fmt == "gray" and info.frame_count == 4
    np.testing.assert_array_equal(read_frames(png), gray)  # lossless: exact
    color = np.stack([np.full((32, 32, 3), (200, 40, 90), np.uint8), np.full((32, 32, 3), (30, 160, 220), np.uint8)])
    luma = _raw_video(tmp_path / "y400.mp4", color, [0, 1], Fraction(1, 25), pix_fmt="gray")
    out = read_frames(luma)
    assert out.shape == (2, 32, 32, 3) and (out[..., 0] == out[..., 2]).all()
    assert out[0].mean() != out[1].mean()
    ten = _raw_video(tmp_path / "ten.mp4", color, [0, 1], Fraction(1, 25), pix_fmt="yuv420p10le")
    assert probe_video(ten).pix_fmt == "yuv420p10le"
    back = read_frames(ten)
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - color.astype(int)).max() < 8
    for path in (png, luma, ten):
        with FrameReader(path) as reader:
            np.testing.assert_array_equal(reader.read(1, 2), read_frames(path)[1:2])


@pytest.mark.parametrize("rate", [8000, 16000])
def test_low_rate_and_silent_driving_audio_make_an_output_track(tmp_path, rate):
    """8 kHz speech keeps its rate in the AAC track; pure silence is valid audio (not refused), silent out."""
    for name, clip in (("tone", _tone(1.0, rate, 1)), ("silence", AudioClip(torch.zeros(1, rate), rate))):
        out = write_video(tmp_path / f"{name}.mp4", iter([np.zeros((25, 16, 16, 3), np.uint8)]), 25, clip)
        back = read_audio(out)
        assert back.sample_rate == rate and abs(back.duration - 1.0) < 0.01
        assert to_mono_16k(back.waveform, back.sample_rate).shape == (16000,)
        peak = float(back.waveform.abs().max())
        assert peak < 1e-4 if name == "silence" else peak > 0.3


def test_mp3_driving_audio_decodes_to_its_length_in_place(tmp_path):
    """MP3 (libmp3lame, as PyAV's 'mp3' encoder is here): the encoder delay is trimmed, the tone stays in place."""
    rate, seconds = 44100, 3
    clip = _tone(seconds, rate, 2)
    path = tmp_path / "speech.mp3"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mp3", rate=rate, layout="stereo")
        wav = clip.waveform.numpy()
        for i in range(0, wav.shape[1], 1152):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i:i + 1152]), format="fltp", layout="stereo")
            f.sample_rate, f.pts = rate, i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    back = read_audio(path)
    assert back.sample_rate == rate and back.channels == 2 and abs(back.duration - seconds) < 0.002
    a, b = back.waveform[0, rate:2 * rate].numpy(), clip.waveform[0, rate:2 * rate].numpy()
    assert np.corrcoef(a, b)[0, 1] > 0.99  # not shifted by the encoder's delay


def test_write_failure_is_one_error_and_leaves_nothing(tmp_path):
    """A disk that fills mid-encode (RLIMIT_FSIZE here) is one MediaError, not a second error from closing the
    container, and no hidden partial file stays."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import resource, signal, numpy as np
        from joygen_core.errors import MediaError
        from joygen_core.video.io import write_video
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
        frames = np.random.default_rng(0).integers(0, 255, (40, 256, 256, 3), dtype=np.uint8)
        try:
            write_video({str(tmp_path / 'out.mp4')!r}, iter([frames]), fps=25)
        except MediaError as exc:
            assert exc.__context__ is None or not isinstance(exc.__context__, MediaError)
            print("MEDIAERROR", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "MEDIAERROR Cannot write" in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def _x264_settings(path: Path) -> str:
    """The option line x264 writes into its stream (an SEI message): what the encoder really ran with."""
    data = path.read_bytes()
    start = data.find(b"options: ")
    assert start >= 0, "no x264 settings in the stream"
    return data[start:data.find(b"\x00", start)].decode("ascii", "replace")


def test_preset_and_crf_reach_the_encoder(tmp_path, face_frames):
    frames = face_frames[:12]
    sizes, settings = {}, {}
    for preset, crf in (("ultrafast", 18), ("veryslow", 18), ("medium", 18), ("medium", 30)):
        out = write_video(tmp_path / f"{preset}{crf}.mp4", iter([frames]), 25, preset=preset, crf=crf)
        sizes[preset, crf], settings[preset, crf] = out.stat().st_size, _x264_settings(out)
    # ultrafast turns off CABAC and sub-pixel refinement, veryslow searches hardest: a bigger file at one crf
    assert "cabac=0" in settings["ultrafast", 18] and "subme=0" in settings["ultrafast", 18]
    assert "cabac=1" in settings["veryslow", 18] and "subme=10" in settings["veryslow", 18]
    assert sizes["ultrafast", 18] > sizes["veryslow", 18]
    assert "crf=18.0" in settings["medium", 18] and "crf=30.0" in settings["medium", 30]
    assert sizes["medium", 30] < sizes["medium", 18]
    assert probe_video(tmp_path / "veryslow18.mp4").frame_count == 12


def test_bad_encoder_settings_fail_before_any_file(tmp_path):
    frames = iter([np.zeros((2, 16, 16, 3), np.uint8)])
    for kw, message in (({"preset": "warp"}, "Unknown encoder preset"), ({"crf": 60}, "between 0"),
                        ({"encoder": "libvpx"}, "Unknown video encoder")):
        with pytest.raises(MediaError, match=message):
            write_video(tmp_path / "out.mp4", frames, 25, **kw)
    assert list(tmp_path.iterdir()) == []


def test_encoder_choice_without_nvenc(tmp_path, monkeypatch):
    """Without a GPU NVENC is listed by the wheels but cannot open: auto picks libx264 (also when torch claimed
    a GPU), and asking for h264_nvenc is one clear error and no file."""
    from joygen_core.video import io

    if io.nvenc_available():
        pytest.skip("this machine encodes with NVENC")
    assert io.resolve_encoder("auto") == "libx264"
    if io._encoder_failure("h264_nvenc") is not None:  # FFmpeg has it, the machine cannot run it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert io.resolve_encoder("auto") == "libx264"
        with pytest.raises(MediaError, match="h264_nvenc is not available here.*NVIDIA GPU"):
            write_video(tmp_path / "nv.mp4", iter([np.zeros((2, 64, 64, 3), np.uint8)]), 25, encoder="h264_nvenc")
        assert list(tmp_path.iterdir()) == []
    out = write_video(tmp_path / "auto.mp4", iter([np.zeros((2, 64, 64, 3), np.uint8)]), 25, encoder="auto")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert "cabac=1" in _x264_settings(out)


def test_nvenc_options_map_crf_and_preset():
    from joygen_core.video.io import encoder_options

    assert encoder_options("h264_nvenc", 18, "medium") == {"preset": "p4", "rc": "vbr", "tune": "hq", "cq": "18"}
    assert encoder_options("h264_nvenc", 23, "veryslow")["preset"] == "p7"
    assert encoder_options("h264_nvenc", 0, "ultrafast") == {"preset": "p1", "rc": "vbr", "tune": "lossless"}
    assert encoder_options("h264_nvenc", 20, "p6")["preset"] == "p6"
    assert encoder_options("libx264", 20, "p1") == {"crf": "20", "preset": "ultrafast"}
