"""HuBERT features (official chunking) and the Praat pitch contour."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from factory._damage import expect_clear_error, pickle_payload, random_bytes, to_safetensors, truncate
from joygen_core.audio.hubert import (
    CLIP,
    hubert_features,
    hubert_frames,
    load_hubert,
    normalise_input,
    pad_frames,
)
from joygen_core.audio.pitch import fit_to, mel_frames, pitch_contour
from joygen_core.errors import ModelFileError
from joygen_core.motion.a2m import f0_to_coarse


@pytest.fixture(scope="module")
def hubert(models_dir):
    return load_hubert(models_dir / "audio2motion" / "hubert", "cpu")


def tone(freq: float, seconds: float, sr: int = 16000, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


def test_frame_count_formula():
    # official: (N - (kernel - stride)) // stride
    assert [hubert_frames(n) for n in (0, 79, 400, 719, 720, 16000, 320080)] == [0, 0, 1, 1, 2, 49, 1000]


def test_normalisation_matches_wav2vec2_processor():
    from transformers import Wav2Vec2FeatureExtractor

    x = torch.randn(8000, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.05
    ref = Wav2Vec2FeatureExtractor(do_normalize=True)(x.numpy(), sampling_rate=16000).input_values[0]
    np.testing.assert_allclose(normalise_input(x).numpy(), ref, atol=1e-5)
    assert torch.isfinite(normalise_input(torch.zeros(100))).all()  # silence: var 0 stays finite


def test_folder_loads_strictly(models_dir, tmp_path):
    import shutil

    model = load_hubert(models_dir / "audio2motion" / "hubert")
    assert model.config.hidden_size == 1024 and model.config.do_normalize
    # a folder whose weights lack a layer is refused with the key named
    bad = tmp_path / "hubert"
    shutil.copytree(models_dir / "audio2motion" / "hubert", bad)
    sd = torch.load(bad / "pytorch_model.bin", weights_only=True)
    sd = {k: v for k, v in sd.items() if "layers.1.attention.q_proj" not in k}
    torch.save(sd, bad / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="q_proj"):
        load_hubert(bad)
    with pytest.raises(ModelFileError, match="config.json"):
        load_hubert(tmp_path)


@pytest.fixture
def hubert_copy(models_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(models_dir / "audio2motion" / "hubert", tmp_path / "hubert"))


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_pickled_code_in_the_folder_is_refused_naming_the_file(hubert_copy, tmp_path, fmt):
    marker = tmp_path / "pwned"
    weights = hubert_copy / "pytorch_model.bin"
    pickle_payload(weights, marker, fmt, state=torch.load(weights, weights_only=True))
    expect_clear_error(lambda: load_hubert(hubert_copy), weights, "code", marker)


def test_truncated_safetensors_in_the_folder_is_named(hubert_copy):
    weights = to_safetensors(hubert_copy / "pytorch_model.bin")
    assert load_hubert(hubert_copy).config.hidden_size == 1024  # the safetensors folder itself loads
    expect_clear_error(lambda: load_hubert(hubert_copy), truncate(weights), "truncated")


def test_random_bytes_in_the_folder_are_corrupt(hubert_copy):
    weights = random_bytes(hubert_copy / "pytorch_model.bin")
    expect_clear_error(lambda: load_hubert(hubert_copy), weights, "corrupt")


def test_wrong_architecture_and_missing_weights_name_the_folder(hubert_copy):
    import json

    cfg = json.loads((hubert_copy / "config.json").read_text())
    (hubert_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "wav2vec2",
                                                         "architectures": ["Wav2Vec2ForCTC"]}))
    with pytest.raises(ModelFileError, match=f"{hubert_copy} holds a wav2vec2 model .Wav2Vec2ForCTC., not HuBERT"):
        load_hubert(hubert_copy)
    (hubert_copy / "config.json").write_text(json.dumps(cfg))
    (hubert_copy / "pytorch_model.bin").unlink()
    with pytest.raises(ModelFileError, match=f"{hubert_copy} holds no HuBERT weights: expected model.safetensors"):
        load_hubert(hubert_copy)
    (hubert_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        load_hubert(hubert_copy)


def test_transformers_refusing_bin_files_under_old_torch_is_explained(hubert_copy, monkeypatch):
    """transformers >= 4.50 reads .bin files only with torch >= 2.6 (CVE-2025-32434); say so and what to do."""
    import transformers.modeling_utils as mu

    if not hasattr(mu, "check_torch_load_is_safe"):
        pytest.skip("this transformers has no torch-version gate for .bin files")

    def refuse():
        raise ValueError("Due to a serious vulnerability issue in `torch.load`, even with `weights_only=True`, we "
                         "now require users to upgrade torch to at least v2.6 in order to use the function. "
                         "\nSee the vulnerability report here https://nvd.nist.gov/vuln/detail/CVE-2025-32434")

    monkeypatch.setattr(mu, "check_torch_load_is_safe", refuse)
    with pytest.raises(ModelFileError, match="pytorch_model.bin with torch .*torch >= 2.6.*model.safetensors"):
        load_hubert(hubert_copy)


def test_chunking_as_the_official(hubert):
    # 20.5 s: one full official clip (1000 frames from 320080 samples) + the remainder run on its own
    audio = tone(180.0, 20.5) + 0.05 * torch.randn(328000, generator=torch.Generator().manual_seed(2))
    feats = hubert_features(hubert, audio)
    assert feats.shape == (hubert_frames(audio.shape[0]), 1024) == (1024, 1024)
    x = normalise_input(audio)  # normalised over the whole clip, then cut
    with torch.no_grad():
        first = hubert(x[None, : CLIP + 80]).last_hidden_state[0]
        rest = hubert(x[None, CLIP:]).last_hidden_state[0]
    assert torch.allclose(feats[:1000], first, atol=1e-4)
    assert torch.allclose(feats[1000:], rest[:24], atol=1e-4)


def test_batched_clips_keep_their_order(hubert):
    # 3 full clips (2 in one batch, then 1) and a remainder: batching must not reorder or mix frames
    audio = 0.1 * torch.randn(3 * CLIP + 4000, generator=torch.Generator().manual_seed(3))
    batched = hubert_features(hubert, audio, batch_size=2)
    single = hubert_features(hubert, audio, batch_size=1)
    assert batched.shape == single.shape == (hubert_frames(audio.shape[0]), 1024)
    assert torch.allclose(batched, single, atol=1e-4)
    x = normalise_input(audio)
    with torch.no_grad():
        second = hubert(x[None, CLIP: 2 * CLIP + 80]).last_hidden_state[0]
    assert torch.allclose(batched[1000:2000], second, atol=1e-4)


def test_short_and_silent_audio(hubert):
    assert hubert_features(hubert, torch.zeros(300)).shape == (0, 1024)
    silent = hubert_features(hubert, torch.zeros(16000))
    assert silent.shape == (49, 1024) and torch.isfinite(silent).all()
    assert pad_frames(silent).shape[0] == 56 and pad_frames(torch.zeros(0, 1024)).shape[0] == 8
    assert torch.equal(pad_frames(silent)[49:], torch.zeros(7, 1024))
    # padded in place as A2M needs it: the same rows as pad_frames, zeros appended
    assert torch.equal(hubert_features(hubert, torch.zeros(16000), pad_to=8), pad_frames(silent))
    assert hubert_features(hubert, torch.zeros(300), pad_to=8).shape == (8, 1024)
    audio = 0.1 * torch.randn(2 * CLIP + 4000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(hubert_features(hubert, audio, pad_to=8), pad_frames(hubert_features(hubert, audio)))


def test_pitch_of_a_tone_and_silence():
    f0 = pitch_contour(tone(220.0, 1.0))
    assert f0.shape[0] == mel_frames(16000) == 49
    voiced = f0[f0 > 0]
    assert voiced.numel() > 40 and torch.allclose(voiced, torch.full_like(voiced, 220.0), rtol=0.01)
    assert torch.count_nonzero(pitch_contour(torch.zeros(16000))) == 0
    assert pitch_contour(torch.zeros(100)).shape == (0,)
    assert pitch_contour(torch.zeros(600)).shape == (1,)  # too short for Praat: unvoiced, not an error
    assert fit_to(f0, 60)[49:].eq(0).all() and fit_to(f0, 10).shape == (10,)


def test_coarse_pitch_bins_hand_computed():
    # 256 mel-scale bins over 50..1100 Hz; unvoiced (0 Hz) -> 1; round half up
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    lo, hi = mel(50.0), mel(1100.0)
    f = torch.tensor([0.0, 50.0, 100.0, 220.0, 440.0, 1100.0, 3000.0])
    expected = [1, 1] + [int((mel(v) - lo) * 254 / (hi - lo) + 1 + 0.5) for v in (100.0, 220.0, 440.0)] + [255, 255]
    assert f0_to_coarse(f).tolist() == expected
    assert expected[2:5] == [20, 60, 122]  # 100 Hz: (150.5-77.8)*254/986.6+1 = 19.7 -> 20
