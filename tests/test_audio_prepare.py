"""The 16 kHz signals each model gets: the official ffmpeg command lines' samples, bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from joygen_core.audio.prepare import finite_audio, swr_resample, to_mono_16k, to_motion_16k
from joygen_core.video.io import read_audio


def _stereo_speech(speech_wav: Path, rate: int) -> np.ndarray:
    """The speech on the left, a quieter delayed and brightened copy on the right: channels that differ."""
    clip = read_audio(speech_wav)
    left = swr_resample(clip.waveform, clip.sample_rate, rate)[0].numpy()
    right = 0.5 * np.roll(left, 700) + 0.05 * np.sin(np.arange(left.shape[0]) * 2 * np.pi * 3000 / rate)
    return np.stack([left, right])


def _ffmpeg() -> str:
    iio = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (a static ffmpeg) runs the official commands")
    return iio.get_ffmpeg_exe()


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_signals_are_the_official_ffmpeg_outputs(tmp_path, speech_wav, rate):
    ffmpeg = _ffmpeg()
    wav = tmp_path / f"drive_{rate}.wav"
    wavfile.write(wav, rate, (np.clip(_stereo_speech(speech_wav, rate), -1, 1) * 32767).astype(np.int16).T)
    # Whisper's load_audio: ffmpeg -i F -f s16le -acodec pcm_s16le -ac 1 -ar 16000 -
    raw = subprocess.run([ffmpeg, "-nostdin", "-threads", "0", "-i", str(wav), "-f", "s16le", "-acodec", "pcm_s16le",
                          "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    whisper_ref = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
    # inference_audio2motion.save_wav16k: ffmpeg -i F -f wav -ar 16000 F_16k.wav (channels kept, 16-bit)
    wav16 = tmp_path / "drive_16k.wav"
    subprocess.run([ffmpeg, "-i", str(wav), "-f", "wav", "-ar", "16000", "-v", "quiet", "-y", str(wav16)], check=True)
    _, motion_ref = wavfile.read(wav16)

    clip = read_audio(wav)
    whisper_in = to_mono_16k(clip.waveform, clip.sample_rate).numpy()
    motion_in = to_motion_16k(clip.waveform, clip.sample_rate).numpy()
    np.testing.assert_array_equal(whisper_in, whisper_ref)
    np.testing.assert_array_equal(motion_in, motion_ref.T.astype(np.float32) / 32768.0)
    assert not np.array_equal(motion_in[0], whisper_in)  # the channels differ, so the two signals must too


def test_downmix_rounding_and_channels_without_ffmpeg():
    both = torch.stack([torch.full((1600,), 0.5), torch.full((1600,), 0.1)])
    assert torch.equal(to_mono_16k(both, 16000), torch.full((1600,), 9830 / 32768))  # (L+R)/2 in 16-bit steps
    assert torch.equal(to_motion_16k(both, 16000), torch.round(both * 32768) / 32768)  # channels kept
    loud = torch.tensor([0.5, 1.5, -2.0, 0.49 / 32768, 0.51 / 32768, float("nan")])
    assert (to_mono_16k(loud, 16000) * 32768).tolist() == [16384, 32767, -32768, 0, 1, 0]  # s16 clip and round
    # resampling keeps a tone's level and timing (the filter is delay-compensated)
    t = torch.arange(48000) / 48000
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    out = to_mono_16k(tone, 48000)
    ref = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)
    assert out.shape == (16000,) and (out[200:-200] - ref[200:-200]).abs().max() < 2e-3


def test_audio_to_motion_reads_the_first_channel_and_the_pitch_of_the_mean(models_dir, monkeypatch):
    import joygen_core.audio.hubert as hubert_mod
    import joygen_core.audio.pitch as pitch_mod
    from factory import audio as factory_audio
    from joygen_core.audio.hubert import load_hubert
    from joygen_core.motion.a2m import audio_to_motion, load_a2m

    seen = {}
    real_hubert, real_pitch = hubert_mod.hubert_features, pitch_mod.pitch_contour

    def hubert_spy(model, audio, **kw):
        seen["hubert"] = audio
        return real_hubert(model, audio, **kw)

    def pitch_spy(audio):
        seen["pitch"] = audio
        return real_pitch(audio)

    monkeypatch.setattr(hubert_mod, "hubert_features", hubert_spy)
    monkeypatch.setattr(pitch_mod, "pitch_contour", pitch_spy)
    g = torch.Generator().manual_seed(0)
    wav = torch.stack([0.3 * torch.randn(16000, generator=g), 0.1 * torch.randn(16000, generator=g)])
    a2m = load_a2m(models_dir / factory_audio.A2M_CKPT)
    motion = audio_to_motion(a2m, load_hubert(models_dir / factory_audio.HUBERT_DIR), wav, 25.0, 10)
    assert len(motion) == 10
    assert torch.equal(seen["hubert"], wav[0]) and torch.equal(seen["pitch"], wav.mean(0))


def test_channel_remix_is_ffmpegs(tmp_path, speech_wav):
    """``channels=2`` of a 5.1 clip is ffmpeg's ``-ac 2`` (what the writer uses for surround driving audio).

    ffmpeg remixes s16 to s16 in fixed point, we remix float and round: at most one 16-bit step apart.
    """
    ffmpeg = _ffmpeg()
    rate = 48000
    st = _stereo_speech(speech_wav, rate)
    six = np.stack([st[0], st[1], 0.5 * st[0], 0.1 * st[1], 0.3 * st[1], 0.2 * st[0]])
    wav = tmp_path / "surround.wav"
    wavfile.write(wav, rate, (np.clip(six, -1, 1) * 32767).astype(np.int16).T)
    raw = subprocess.run([ffmpeg, "-nostdin", "-i", str(wav), "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "2", "-"],
                         capture_output=True, check=True).stdout
    ref = np.frombuffer(raw, np.int16).reshape(-1, 2).T.astype(np.float32) / 32768.0
    clip = read_audio(wav)
    ours = swr_resample(clip.waveform, clip.sample_rate, rate, channels=2, pcm16=True).numpy()
    assert ours.shape == ref.shape
    step = np.abs(ours - ref) * 32768
    assert step.max() <= 1 and (step == 0).mean() > 0.98


def _damaged_wav(path: Path, bad: int, rate: int = 16000) -> tuple[Path, np.ndarray]:
    """1 s of a stereo float WAV tone, its first ``bad`` samples of the left channel NaN / +inf / -inf, and
    a stretch driven past full scale (a float WAV may hold both)."""
    t = np.arange(rate) / rate
    wav = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    wav[0, 4000:4100] *= 3.0
    wav[0, :bad] = np.resize(np.array([np.nan, np.inf, -np.inf], np.float32), bad)
    wavfile.write(path, rate, wav.T)
    return path, wav


def test_non_finite_samples_become_silence_once_for_the_models_and_the_output_track(tmp_path, caplog):
    import logging

    from joygen_core.video.io import AudioClip, write_video

    path, raw = _damaged_wav(tmp_path / "nan.wav", 150)
    with caplog.at_level(logging.WARNING):
        clip = read_audio(path)
        whisper_in = to_mono_16k(clip.waveform, clip.sample_rate)
        out = write_video(tmp_path / "out.mp4", iter([np.zeros((25, 16, 16, 3), np.uint8)]), 25, clip)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and " 150 " in warned[0]  # once, with the count
    w = clip.waveform.numpy()
    assert (w[0, :150] == 0).all() and np.array_equal(w[:, 150:], raw[:, 150:])  # only those samples change
    assert torch.isfinite(whisper_in).all() and whisper_in.shape == (16000,)
    back = read_audio(out).waveform.numpy()
    assert np.isfinite(back).all() and back.shape[1] == 16000
    # the output track was clipped to [-1, 1] before the AAC encoder (what it decodes to stays near full scale)
    assert np.abs(back).max() < 1.1 and np.abs(back[0, 4000:4100]).max() > 0.8

    # an in-memory clip (a ComfyUI AUDIO) goes through the same cleaning in the writer: no encoder failure
    caplog.clear()
    wav = torch.from_numpy(raw.copy())
    with caplog.at_level(logging.WARNING):
        out2 = write_video(tmp_path / "out2.mp4", iter([np.zeros((25, 16, 16, 3), np.uint8)]), 25,
                           AudioClip(wav, 16000))
    assert np.isfinite(read_audio(out2).waveform.numpy()).all()
    assert any(" 150 " in r.getMessage() for r in caplog.records)
    assert torch.equal(finite_audio(wav), torch.where(torch.isfinite(wav), wav, torch.zeros(())))


def test_audio_with_no_finite_sample_is_refused_naming_the_file(tmp_path):
    from joygen_core.errors import MediaError
    from joygen_core.video.io import AudioClip, probe_audio, write_video

    path, raw = _damaged_wav(tmp_path / "all_nan.wav", 16000)
    raw[1] = np.inf
    wavfile.write(path, 16000, raw.T)
    for check in (probe_audio, read_audio):  # the cheap check before the models load says the same
        with pytest.raises(MediaError, match=r"all_nan\.wav holds no usable audio: all 32000 of its samples"):
            check(path)
    assert probe_audio(_damaged_wav(tmp_path / "some_nan.wav", 150)[0]) is None
    with pytest.raises(MediaError, match="no usable audio"):
        to_mono_16k(torch.from_numpy(raw), 16000)
    with pytest.raises(MediaError, match="no usable audio"):
        write_video(tmp_path / "o.mp4", iter([np.zeros((2, 16, 16, 3), np.uint8)]), 25,
                    AudioClip(torch.from_numpy(raw), 16000))
    assert not any(tmp_path.glob("*.mp4")) and not any(tmp_path.glob(".*"))


def test_audio_to_motion_reports_every_hubert_chunk_and_its_end(models_dir):
    """1 s of audio is one short HuBERT chunk: it is reported, then the pitch + flow step ends the stage."""
    from factory import audio as factory_audio
    from joygen_core.audio.hubert import load_hubert
    from joygen_core.motion.a2m import audio_to_motion, load_a2m

    calls = []
    wav = 0.3 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    audio_to_motion(load_a2m(models_dir / factory_audio.A2M_CKPT), load_hubert(models_dir / factory_audio.HUBERT_DIR),
                    wav, 25.0, 10, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
