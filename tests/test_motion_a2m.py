"""Audio to motion: strict loading of the official container, repeatable sampling, frame-count contract."""

from __future__ import annotations

import math
import pickle
import shutil

import pytest
import torch

from factory import audio as factory_audio
from joygen_core.audio.hubert import load_hubert
from joygen_core.errors import ModelFileError
from joygen_core.motion import Motion
from joygen_core.motion.a2m import (
    PitchContourVAEModel,
    VAEModel,
    WeightNormConv1d,
    audio_to_motion,
    load_a2m,
    predict_expressions,
    prior_noise,
    resample_motion,
)


def speech(seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * 16000), dtype=torch.float64) / 16000
    f = 140 + 40 * torch.sin(2 * math.pi * 0.8 * t)
    x = 0.3 * torch.sin(2 * math.pi * torch.cumsum(f, 0) / 16000) * (torch.sin(2 * math.pi * 3 * t) > -0.3)
    return x.to(torch.float32)


@pytest.fixture(scope="module")
def a2m(models_dir):
    return load_a2m(models_dir / factory_audio.A2M_CKPT)


@pytest.fixture(scope="module")
def hubert(models_dir):
    return load_hubert(models_dir / factory_audio.HUBERT_DIR)


def test_official_container_loads_strictly(models_dir, a2m):
    assert isinstance(a2m, PitchContourVAEModel) and not a2m.training
    raw = torch.load(models_dir / factory_audio.A2M_CKPT, weights_only=False)
    state = raw["state_dict"]["model"]
    assert set(a2m.state_dict()) == set(state)
    assert tuple(state["cond_proj.weight"].shape) == (128, 512)
    assert tuple(state["pitch_embed.weight"].shape) == (300, 128)
    # the plain weights_only load refuses the numpy scalar; ours admits only numpy scalars
    with pytest.raises(pickle.UnpicklingError):
        torch.load(models_dir / factory_audio.A2M_CKPT, weights_only=True)


def test_config_selects_the_class(tmp_path):
    g = torch.Generator().manual_seed(3)
    path = factory_audio.write_a2m(tmp_path, g, folder="vae", use_pitch=False)
    model = load_a2m(path)
    assert type(model) is VAEModel
    noflow = factory_audio.write_a2m(tmp_path, g, folder="noflow", flow=False)
    assert not hasattr(load_a2m(noflow).vae, "prior_flow")
    # official inference builds the flow prior whatever use_flow says: the checkpoint's weights decide
    flow = factory_audio.write_a2m(tmp_path, g, folder="flow", flow=True)
    cfg = flow.with_name("config.yaml")
    cfg.write_text(cfg.read_text().replace("use_flow: true", "use_flow: false"))
    assert "use_flow: false" in cfg.read_text()
    assert hasattr(load_a2m(flow).vae, "prior_flow")


def test_wrong_checkpoints_are_named(models_dir, tmp_path):
    ckpt = models_dir / factory_audio.A2M_CKPT
    # config says VAEModel but the weights are PitchContourVAEModel's
    folder = tmp_path / "wrongcfg"
    folder.mkdir()
    shutil.copy(ckpt, folder / ckpt.name)
    (folder / "config.yaml").write_text((ckpt.parent / "config.yaml").read_text().replace("use_pitch: true",
                                                                                          "use_pitch: false"))
    with pytest.raises(ModelFileError, match=r"VAEModel.*(pitch_embed|cond_proj)"):
        load_a2m(folder / ckpt.name)
    # wrong shapes
    raw = torch.load(ckpt, weights_only=False)
    raw["state_dict"]["model"]["cond_proj.weight"] = torch.zeros(128, 384)
    torch.save(raw, tmp_path / "shape.ckpt")
    with pytest.raises(ModelFileError, match=r"cond_proj.weight.*\(128, 384\)"):
        load_a2m(tmp_path / "shape.ckpt", ckpt.parent / "config.yaml")
    # a checkpoint of something else entirely
    torch.save({"state_dict": {"model": {"fc.weight": torch.zeros(2, 2)}}}, tmp_path / "other.ckpt")
    with pytest.raises(ModelFileError, match="fc.weight"):
        load_a2m(tmp_path / "other.ckpt", ckpt.parent / "config.yaml")
    with pytest.raises(ModelFileError, match="config"):
        load_a2m(tmp_path / "other.ckpt")


def test_weight_norm_conv_matches_torch():
    conv = torch.nn.Conv1d(6, 10, 3, padding=1)
    wn = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
    ours = WeightNormConv1d(6, 10, 3, padding=1)
    with torch.no_grad():
        ours.weight_g.copy_(wn.parametrizations.weight.original0)
        ours.weight_v.copy_(wn.parametrizations.weight.original1)
        ours.bias.copy_(wn.bias)
    x = torch.randn(2, 6, 17)
    assert torch.allclose(ours(x), wn(x), atol=1e-6)


def test_prior_noise_is_the_seeded_global_stream():
    torch.manual_seed(123)
    official = torch.distributions.Normal(0, 1).sample([1, 16, 9])  # official draw after seeding
    assert torch.equal(prior_noise((1, 16, 9), 123), official)


def test_same_seed_same_motion_and_frame_counts(a2m, hubert):
    audio = speech(2.0)
    m1 = audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=7)
    m2 = audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=7)
    m3 = audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=8)
    assert isinstance(m1, Motion) and m1.exp.shape == (50, 64) and m1.fps == 25.0
    assert torch.equal(m1.exp, m2.exp)
    assert not torch.allclose(m1.exp, m3.exp)
    # temperature 0: the prior mean, independent of the seed; mouth amplitude changes the result
    t0 = audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=1, temperature=0.0)
    assert torch.equal(t0.exp, audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=2, temperature=0.0).exp)
    assert not torch.allclose(t0.exp, audio_to_motion(a2m, hubert, audio, 25.0, 50, seed=1, temperature=0.0,
                                                      mouth_amp=1.0).exp)
    for fps, n in ((24.0, 10), (29.97, 60), (30.0, 200), (60.0, 121), (25.0, 1)):
        assert len(audio_to_motion(a2m, hubert, audio, fps, n, seed=0)) == n


def test_25fps_output_is_the_model_output(a2m, hubert):
    from joygen_core.audio.hubert import hubert_features, pad_frames
    from joygen_core.audio.pitch import fit_to, pitch_contour

    audio = speech(1.3)
    feats = pad_frames(hubert_features(hubert, audio))
    exp25 = predict_expressions(a2m, feats, fit_to(pitch_contour(audio), feats.shape[0]), seed=5)
    assert exp25.shape == (feats.shape[0] // 2, 64)
    m = audio_to_motion(a2m, hubert, audio, 25.0, exp25.shape[0], seed=5)
    assert torch.equal(m.exp, exp25)


def test_resample_motion():
    exp = torch.arange(10, dtype=torch.float32)[:, None].expand(10, 64)
    assert torch.equal(resample_motion(exp, 25.0, 10), exp)
    half = resample_motion(exp, 50.0, 5)[:, 0].tolist()
    assert half == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert resample_motion(exp, 25.0, 15)[10:, 0].eq(9).all()  # held past the end
    assert resample_motion(exp, 30.0, 0).shape == (0, 64)


def test_bad_audio(a2m, hubert):
    for audio in (torch.zeros(32000), torch.zeros(50), speech(0.2)):
        m = audio_to_motion(a2m, hubert, audio, 30.0, 12, seed=0)
        assert m.exp.shape == (12, 64) and torch.isfinite(m.exp).all()
    with pytest.raises(ValueError, match="fps"):
        audio_to_motion(a2m, hubert, speech(0.5), 0.0, 12)


@pytest.mark.slow
def test_several_minutes(a2m, hubert, models_dir):
    from joygen_core.audio.whisper import load_whisper_encoder, whisper_features

    audio = speech(200.0)  # 3 min 20 s: 10 HuBERT clips, 9 overlapping Whisper windows
    m = audio_to_motion(a2m, hubert, audio, 29.97, 5994, seed=0)
    assert m.exp.shape == (5994, 64) and torch.isfinite(m.exp).all()
    enc = load_whisper_encoder(models_dir / "whisper" / "tiny.pt")
    feats = whisper_features(enc, audio, 29.97, 5994)
    assert feats.shape == (5994, 50, 384) and torch.isfinite(feats).all()
