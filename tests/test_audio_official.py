"""Audio numerics against the official JoyGen code, when a checkout of it is at hand.

Set JOYGEN_OFFICIAL_JOYGEN to a checkout of github.com/JOY-MM/JoyGen (imported from there, never copied); the
tests are skipped otherwise. JOYGEN_OFFICIAL_DEPS may name an extra folder of packages the official code needs
but the project does not (``pip install --target DIR librosa soundfile``); it is appended to ``sys.path``, so the
project's own packages keep precedence. The pitch comparison skips without librosa.

Compared on the factory's random weights and the same inputs (synthesised speech resampled to 16 kHz):
Whisper log-mel, the five encoder hidden states (ours: transformers from tiny.pt; official: the OpenAI model code
through ``Audio2Feature.audio2feat``), per-frame windows (``feature2chunks`` / ``get_sliced_feature``), the
positional encoding (``pe.py``), HuBERT chunking (``extract_hubert``), the pitch contour (``extract_mel_f0``),
``f0_to_coarse`` and the audio-to-motion models (``PitchContourVAEModel``, ``VAEModel``) loaded by the official
``Audio2Motion.load_audio2secc`` and run by its ``forward_audio2secc`` with the same seed.

Stand-ins (``sys.modules``) for imports the compared code never reaches: ``ffmpeg`` (file decoding; the audio is
handed over as an array), ``soundfile`` when absent (file reading), ``moviepy.editor`` (video input),
``audio2motion.utils.audio`` and its ``io`` (MFCC / wav writing: librosa, pyloudnorm, webrtcvad), and
``librosa`` when absent (then the pitch test skips). ``torch.load`` is called with ``weights_only=False`` for the
official A2M loader, because the legacy training container holds a numpy scalar (the factory wrote it).
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from joygen_core.audio.hubert import hubert_features, load_hubert, pad_frames
from joygen_core.audio.pitch import fit_to, pitch_contour
from joygen_core.audio.prepare import to_mono_16k
from joygen_core.audio.whisper import (
    frame_features,
    load_whisper_encoder,
    log_mel_spectrogram,
    positional_encoding,
    whisper_hidden_states,
)
from joygen_core.audio.windows import frame_windows
from joygen_core.motion.a2m import f0_to_coarse, load_a2m, predict_expressions
from joygen_core.video.io import read_audio

OFFICIAL = Path(os.environ.get("JOYGEN_OFFICIAL_JOYGEN", "/nonexistent"))
DEPS = os.environ.get("JOYGEN_OFFICIAL_DEPS", "")
pytestmark = pytest.mark.skipif(not (OFFICIAL / "src" / "audio2feature.py").is_file(),
                                reason="set JOYGEN_OFFICIAL_JOYGEN to a JoyGen checkout")


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # transformers probes optional packages by spec
    mod._joygen_stub = True
    return mod


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def official():
    """The official modules (with stand-ins for unused imports); sys.path and sys.modules restored afterwards."""
    import transformers.models.hubert.modeling_hubert  # noqa: F401  (before any stand-in is in place)
    import transformers.models.whisper.modeling_whisper  # noqa: F401
    from transformers import Wav2Vec2Processor  # noqa: F401

    mp = pytest.MonkeyPatch()
    before = set(sys.modules)
    if DEPS:
        mp.setattr(sys, "path", sys.path + [DEPS])
    mp.syspath_prepend(str(OFFICIAL))
    stubs = {"ffmpeg": _stub("ffmpeg"),
             "moviepy": _stub("moviepy"), "moviepy.editor": _stub("moviepy.editor", VideoFileClip=None),
             "audio2motion.utils.audio": _stub("audio2motion.utils.audio", librosa_wav2mfcc=None,
                                               __path__=[str(OFFICIAL / "audio2motion/utils/audio")]),
             "audio2motion.utils.audio.io": _stub("audio2motion.utils.audio.io", save_wav=None)}
    if not _importable("soundfile"):
        stubs["soundfile"] = _stub("soundfile")
    if not _importable("librosa"):
        stubs["librosa"] = _stub("librosa")
    for name, mod in stubs.items():
        mp.setitem(sys.modules, name, mod)
    ns = types.SimpleNamespace(
        a2f=importlib.import_module("src.audio2feature"),
        whisper=importlib.import_module("src.whisper"),
        whisper_audio=importlib.import_module("src.whisper.audio"),
        pe=importlib.import_module("src.pe"),
        a2m=importlib.import_module("inference_audio2motion"),
        hubert=importlib.import_module("audio2motion.data_gen.utils.process_audio.extract_hubert"),
        mel_f0=importlib.import_module("audio2motion.data_gen.utils.process_audio.extract_mel_f0"),
        pitch=importlib.import_module("audio2motion.utils.commons.pitch_utils"),
        has_librosa="librosa" not in stubs,
        mp=mp,
    )
    yield ns
    mp.undo()
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("src", "audio2motion", "inference_audio2motion"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def speech16k(speech_wav) -> torch.Tensor:
    clip = read_audio(speech_wav)
    audio = to_mono_16k(clip.waveform, clip.sample_rate)
    assert 1.0 < audio.shape[0] / 16000 < 30.0
    return audio


def _long_signal(speech16k: torch.Tensor, seconds: float) -> torch.Tensor:
    """The speech repeated to ``seconds``, with a little noise so no two repeats are identical."""
    n = int(seconds * 16000)
    reps = -(-n // speech16k.shape[0])
    noise = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 0.003
    return (speech16k.repeat(reps)[:n] + noise).clamp(-1, 1)


def _report(what: str, ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    ours, ref = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    mad = float((ours - ref).abs().max()) if ours.numel() else 0.0
    rel = mad / max(float(ref.abs().max()), 1e-30) if ref.numel() else 0.0
    print(f"{what}: shape {tuple(ref.shape)} max|diff| {mad:.3e} relative {rel:.3e} (max|ref| {ref.abs().max():.3e})")
    return mad, rel


def _official_feats(official, model, audio: torch.Tensor, name: str = "clip.wav") -> np.ndarray:
    """Official ``Audio2Feature.audio2feat`` on ``audio`` (the file decoder replaced by the array itself)."""
    a2f = official.a2f.Audio2Feature.__new__(official.a2f.Audio2Feature)
    a2f.model = model
    official.mp.setattr(official.whisper_audio, "load_audio", lambda file, sr=16000: audio.numpy().copy())
    return a2f.audio2feat(name)


@pytest.fixture(scope="module")
def whisper_pair(official, models_dir):
    path = models_dir / "whisper" / "tiny.pt"
    return load_whisper_encoder(path, "cpu", torch.float32), official.whisper.load_model(str(path), "cpu").eval()


# ----------------------------------------------------------------------------------------------- Whisper


def test_log_mel_matches_official(official, speech16k):
    ref = official.whisper_audio.log_mel_spectrogram(speech16k.clone())
    ours = log_mel_spectrogram(speech16k)
    assert ours.shape == ref.shape
    mad, _ = _report("log-mel", ours, ref)
    assert mad < 1e-4  # float32 STFT / filter bank (transformers' Slaney bank vs the official npz)


def test_whisper_hidden_states_match_official(official, whisper_pair, speech16k):
    ours_enc, ref_model = whisper_pair
    ref = torch.from_numpy(_official_feats(official, ref_model, speech16k))
    ours = whisper_hidden_states(ours_enc, speech16k)
    assert ours.shape == ref.shape == (speech16k.shape[0] // 320, 5, 384)
    for k in range(5):
        mad, rel = _report(f"whisper state {k}", ours[:, k], ref[:, k])
        assert rel < 1e-4, k


def test_frame_windows_match_official_indices(official):
    a2f = official.a2f.Audio2Feature.__new__(official.a2f.Audio2Feature)
    for fps, length in [(25, 400), (30, 333), (29.97, 501), (24, 97), (60, 1000), (12.5, 40)]:
        n = int(length * fps / 50) + 3  # a few frames past the end, to see the clamping
        ours = frame_windows(n, fps, length)
        dummy = np.zeros((length, 5, 384), dtype=np.float32)
        ref = [a2f.get_sliced_feature(dummy, i, [2, 2], fps)[1] for i in range(n)]
        assert ours.tolist() == ref, fps


def test_frame_features_match_feature2chunks(official, whisper_pair, speech16k):
    _, ref_model = whisper_pair
    feats = _official_feats(official, ref_model, speech16k)
    a2f = official.a2f.Audio2Feature.__new__(official.a2f.Audio2Feature)
    chunks = np.stack(a2f.feature2chunks(feats, 25))
    ours = frame_features(torch.from_numpy(feats), 25, chunks.shape[0], add_encoding=False)
    assert torch.equal(ours, torch.from_numpy(chunks))


def test_positional_encoding_matches_official_pe(official):
    ref = official.pe.PositionalEncoding(d_model=384)(torch.zeros(1, 50, 384))[0]
    mad, _ = _report("positional encoding", positional_encoding(50, 384), ref)
    assert mad == 0.0


def test_long_audio_differs_only_where_the_windows_differ(official, whisper_pair, speech16k):
    """Over 30 s we deliberately differ (overlapping windows blended vs the official restart every 30 s).

    Rows that only our first window covers see exactly the official first window, so they agree; elsewhere
    the two see different context and are only reported.
    """
    ours_enc, ref_model = whisper_pair
    audio = _long_signal(speech16k, 75.0)
    ref = torch.from_numpy(_official_feats(official, ref_model, audio, "long.wav"))
    ours = whisper_hidden_states(ours_enc, audio)
    assert ours.shape == ref.shape == (3750, 5, 384)
    # windows (mel frames): ours 0-3000, 1500-4500, 3000-6000, 4500-7500; official 0-3000, 3000-6000, 6000-7500
    mad, rel = _report("75 s rows 0-749 (one identical window)", ours[:750], ref[:750])
    assert rel < 1e-4
    for lo, hi in [(750, 1400), (1400, 1500), (1500, 1600), (1600, 2900), (2900, 3000), (3000, 3100),
                   (3100, 3750)]:
        _report(f"75 s rows {lo}-{hi - 1} (different windows, not asserted)", ours[lo:hi], ref[lo:hi])
    jump = (ref[1500] - ref[1499]).abs().max()
    ours_jump = (ours[1500] - ours[1499]).abs().max()
    print(f"row 1499->1500 step: official {jump:.3e}, ours {ours_jump:.3e}; "
          f"median neighbour step official {(ref[1:] - ref[:-1]).abs().amax((1, 2)).median():.3e}")


# ----------------------------------------------------------------------------------------------- HuBERT, pitch


def test_hubert_chunking_matches_official(official, models_dir, speech16k):
    folder = models_dir / "audio2motion" / "hubert"
    audio = _long_signal(speech16k, 43.3)  # two full 20 s chunks and a remainder
    official.mp.setattr(official.hubert, "hubert_model", None)
    official.mp.setattr(official.hubert, "wav2vec2_processor", None)
    ref = official.hubert.get_hubert_from_16k_speech(audio.double().numpy(), str(folder), device="cpu")
    ours = hubert_features(load_hubert(folder), audio)
    assert ours.shape == ref.shape == ((audio.shape[0] - 80) // 320, 1024)
    mad, rel = _report("hubert", ours, ref)
    assert rel < 1e-4


def test_pitch_matches_official(official, speech16k):
    if not official.has_librosa:
        pytest.skip("librosa is needed for the official extract_mel_f0 (see JOYGEN_OFFICIAL_DEPS)")
    for audio in (speech16k, speech16k[: 16000 * 2 + 123], _long_signal(speech16k, 12.7)):
        wav, mel = official.mel_f0.extract_mel_from_fname(audio.numpy().copy())
        ref, _ = official.mel_f0.extract_f0_from_wav_and_mel(wav, mel)
        ours = pitch_contour(audio)
        assert ours.shape == ref.shape
        mad, _ = _report(f"f0 ({audio.shape[0]} samples)", ours, torch.from_numpy(ref).float())
        assert mad == 0.0


def test_f0_to_coarse_matches_official(official):
    g = torch.Generator().manual_seed(0)
    f0 = torch.cat([torch.zeros(50), torch.rand(5000, generator=g) * 1300, torch.tensor([50.0, 1100.0, 1e4, 79.9]),
                    torch.linspace(40, 1200, 20001)])
    ref = official.pitch.f0_to_coarse(f0.clone())
    assert torch.equal(f0_to_coarse(f0), ref)


# ----------------------------------------------------------------------------------------------- audio to motion


def _official_a2m(official, folder: Path):
    a2m = official.a2m.Audio2Motion.__new__(official.a2m.Audio2Motion)
    load = torch.load
    official.mp.setattr(torch, "load", lambda *a, **k: load(*a, **{**k, "weights_only": False}))
    try:
        model = a2m.load_audio2secc(str(folder))
    finally:
        official.mp.setattr(torch, "load", load)
    a2m.audio2secc_model = model.eval()
    return a2m


def _official_exp(a2m, hubert: torch.Tensor, f0: torch.Tensor, seed: int, temperature: float, mouth_amp: float):
    """``prepare_batch_from_inp`` on the CPU with the given features, then ``infer_once``'s seeding and forward."""
    t = hubert.shape[0]
    batch = {"hubert": hubert[None].float(), "f0": f0.reshape(1, -1).float(), "x_mask": torch.ones(1, t),
             "y_mask": torch.ones(1, t // 2), "blink": torch.zeros(1, t, 1, dtype=torch.long),
             "eye_amp": torch.ones(1, 1), "mouth_amp": torch.ones(1, 1) * mouth_amp}
    batch["audio"] = batch["hubert"]
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return a2m.forward_audio2secc(batch, {"drv_audio_name": "x.wav", "temperature": temperature})["exp"]


@pytest.fixture(scope="module")
def a2m_inputs(models_dir, speech16k):
    feats = pad_frames(hubert_features(load_hubert(models_dir / "audio2motion" / "hubert"), speech16k))
    return feats, fit_to(pitch_contour(speech16k), feats.shape[0])


@pytest.mark.parametrize("variant", ["pitch", "nopitch"])
def test_a2m_matches_official(official, models_dir, tmp_path, a2m_inputs, variant):
    from factory.audio import A2M_DIR, write_a2m

    if variant == "pitch":
        folder = models_dir / A2M_DIR
    else:
        folder = tmp_path / "vae"
        write_a2m(tmp_path, torch.Generator().manual_seed(5), folder="vae", use_pitch=False, mouth=False)
    a2m = _official_a2m(official, folder)
    assert type(a2m.audio2secc_model).__name__ == ("PitchContourVAEModel" if variant == "pitch" else "VAEModel")
    ours_model = load_a2m(folder / "model_ckpt_steps_400000.ckpt")
    feats, f0 = a2m_inputs
    for seed, temperature, mouth_amp in [(0, 0.2, 0.45), (1234, 1.0, 0.8)]:
        ref = _official_exp(a2m, feats, f0, seed, temperature, mouth_amp)
        ours = predict_expressions(ours_model, feats, f0, seed=seed, temperature=temperature, mouth_amp=mouth_amp)
        assert ours.shape == ref.shape == (feats.shape[0] // 2, 64)
        mad, rel = _report(f"a2m {variant} seed {seed} T {temperature}", ours, ref)
        assert rel < 1e-5


@pytest.mark.parametrize("seconds", [7.3, 7.25])  # f0 frames == HuBERT frames / one fewer (then zero-padded)
def test_audio_to_motion_pipeline_matches_official(official, models_dir, tmp_path, speech16k, seconds):
    """The whole released path (``Audio2Motion.infer_once``: HuBERT from the wav, pad to 8, f0 from the wav fitted
    to it, seeded prior) vs ours from the same 16 kHz samples. The wav is written as float32 16 kHz, so the
    official readers (soundfile, librosa) get the samples unchanged; ffmpeg resampling and ``.cuda()`` are
    bypassed (the name is already 16 kHz; tensors stay on the CPU)."""
    if not official.has_librosa or getattr(sys.modules.get("soundfile"), "_joygen_stub", False):
        pytest.skip("librosa and soundfile are needed for the official wav readers (see JOYGEN_OFFICIAL_DEPS)")
    import soundfile

    from joygen_core.motion.a2m import audio_to_motion

    audio = _long_signal(speech16k, seconds)
    soundfile.write(tmp_path / "drv_16k.wav", audio.numpy(), 16000, subtype="FLOAT")
    folder = models_dir / "audio2motion" / "hubert"
    official.mp.setattr(official.hubert, "hubert_model", None)
    official.mp.setattr(official.hubert, "wav2vec2_processor", None)
    speech_fn = official.hubert.get_hubert_from_16k_speech  # official default device is cuda:0
    official.mp.setattr(official.hubert, "get_hubert_from_16k_speech", functools.partial(speech_fn, device="cpu"))
    official.mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    a2m = _official_a2m(official, models_dir / "audio2motion/240210_real3dportrait_orig/audio2secc_vae")
    a2m.device = "cpu"
    a2m.save_wav16k = lambda name: setattr(a2m, "wav16k_name", name[:-4] + "_16k.wav")
    inp = {"drv_audio_name": str(tmp_path / "drv.wav"), "hubert_path": str(folder), "temperature": 0.2,
           "mouth_amp": 0.45, "seed": 7, "blink_mode": "none"}
    try:
        ref = a2m.infer_once(inp)["exp"]
    finally:
        official.mp.setattr(torch.Tensor, "cuda", torch.Tensor.__dict__["cuda"])
    ours_model = load_a2m(models_dir / "audio2motion/240210_real3dportrait_orig/audio2secc_vae"
                          "/model_ckpt_steps_400000.ckpt")
    motion = audio_to_motion(ours_model, load_hubert(folder), audio, fps=25.0, num_frames=ref.shape[0], seed=7,
                             temperature=0.2, mouth_amp=0.45)
    assert motion.exp.shape == ref.shape
    mad, rel = _report(f"audio-to-motion pipeline ({seconds} s)", motion.exp, ref)
    assert rel < 1e-5
