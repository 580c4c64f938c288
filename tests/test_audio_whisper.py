"""Whisper features: official-format loading, log-mel, the five hidden states, per-frame windows, long audio."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from factory._damage import expect_clear_error, pickle_payload, random_bytes, truncate
from joygen_core.audio.prepare import to_mono_16k
from joygen_core.audio.whisper import (
    encoder_states,
    frame_features,
    load_whisper_encoder,
    log_mel_spectrogram,
    openai_to_hf_encoder,
    positional_encoding,
    whisper_features,
    whisper_hidden_states,
)
from joygen_core.errors import ModelFileError


def speechlike(seconds: float, sr: int = 16000) -> torch.Tensor:
    """A voiced 150 Hz tone with slow pitch and syllable-rate amplitude modulation (smooth features)."""
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    x = 0.3 * torch.sin(2 * math.pi * 150 * t + 3 * torch.sin(2 * math.pi * 0.7 * t))
    return (x * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))).to(torch.float32)


@pytest.fixture(scope="module")
def encoder(models_dir):
    return load_whisper_encoder(models_dir / "whisper" / "tiny.pt", "cpu", torch.float32)


def test_official_tiny_pt_maps_every_encoder_key(models_dir):
    data = torch.load(models_dir / "whisper" / "tiny.pt", weights_only=True)
    assert data["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float16  # like the released file
    mapped, unexpected = openai_to_hf_encoder(data["model_state_dict"])
    n_enc = sum(k.startswith("encoder.") for k in data["model_state_dict"])
    assert unexpected == [] and len(mapped) == n_enc
    enc = load_whisper_encoder(models_dir / "whisper" / "tiny.pt")
    sd = enc.state_dict()
    assert set(sd) == set(mapped)
    # the mapping puts each tensor in its place (not merely matching names): spot-check values
    assert torch.equal(sd["layers.2.self_attn.k_proj.weight"],
                       data["model_state_dict"]["encoder.blocks.2.attn.key.weight"].float())
    assert torch.equal(sd["layers.3.fc2.bias"], data["model_state_dict"]["encoder.blocks.3.mlp.2.bias"].float())
    assert torch.equal(sd["embed_positions.weight"], data["model_state_dict"]["encoder.positional_embedding"].float())


def test_wrong_whisper_files_are_named(models_dir, tmp_path):
    data = torch.load(models_dir / "whisper" / "tiny.pt", weights_only=True)
    bad = dict(data["model_state_dict"])
    bad["encoder.extra.weight"] = torch.zeros(3)
    torch.save({"dims": data["dims"], "model_state_dict": bad}, tmp_path / "extra.pt")
    with pytest.raises(ModelFileError, match="encoder.extra.weight"):
        load_whisper_encoder(tmp_path / "extra.pt")
    bad = dict(data["model_state_dict"])
    bad["encoder.blocks.1.mlp.0.weight"] = torch.zeros(10, 384)
    torch.save({"dims": data["dims"], "model_state_dict": bad}, tmp_path / "shape.pt")
    with pytest.raises(ModelFileError, match="layers.1.fc1.weight"):
        load_whisper_encoder(tmp_path / "shape.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ModelFileError, match="dims"):
        load_whisper_encoder(tmp_path / "plain.pt")


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "code"])
def test_damaged_tiny_pt_is_one_clear_error(models_dir, tmp_path, damage):
    path = tmp_path / "whisper" / "tiny.pt"
    path.parent.mkdir()
    path.write_bytes((models_dir / "whisper" / "tiny.pt").read_bytes())
    marker = tmp_path / "pwned"
    if damage == "truncated":
        truncate(path)
    elif damage == "corrupt":
        random_bytes(path)
    else:
        pickle_payload(path, marker, state=torch.load(path, weights_only=True))
    expect_clear_error(lambda: load_whisper_encoder(path), path, damage, marker)


def _hf_whisper_folder(folder, encoder=None):
    """An HF Whisper folder as the hub ships openai/whisper-tiny (WhisperForConditionalGeneration, safetensors)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=100, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                        encoder_ffn_dim=1536, decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=16, num_mel_bins=80,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(cfg)
    if encoder is not None:
        model.model.encoder.load_state_dict(encoder.state_dict())
    model.save_pretrained(folder)
    return folder


def test_damaged_hf_folder_names_the_weight_file(tmp_path):
    import json

    folder = _hf_whisper_folder(tmp_path / "whisper-tiny")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    expect_clear_error(lambda: load_whisper_encoder(folder), truncate(weights), "truncated")
    weights.unlink()
    marker = tmp_path / "pwned"
    state = {k: torch.zeros(1) for k in ("model.encoder.conv1.weight",)}
    expect_clear_error(lambda: load_whisper_encoder(folder), pickle_payload(folder / "pytorch_model.bin", marker,
                                                                            state=state), "code", marker)
    (folder / "pytorch_model.bin").unlink()
    weights.write_bytes(good)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "hubert", "architectures": ["HubertModel"]}))
    with pytest.raises(ModelFileError, match=f"{folder} holds a hubert model .HubertModel., not Whisper"):
        load_whisper_encoder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFileError, match=f"{folder} is not a Whisper model folder: it has no config.json"):
        load_whisper_encoder(folder)


def test_log_mel_matches_transformers_feature_extractor():
    # for exactly 30 s both compute the same OpenAI log-mel (whole-clip max-8 floor == per-window floor)
    from transformers import WhisperFeatureExtractor

    audio = speechlike(30.0) + 0.01 * torch.randn(480000, generator=torch.Generator().manual_seed(0))
    ref = WhisperFeatureExtractor()(audio.numpy(), sampling_rate=16000, return_tensors="np").input_features[0]
    ours = log_mel_spectrogram(audio).numpy()
    assert ours.shape == ref.shape == (80, 3000)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_log_mel_in_blocks_is_the_whole_clip_stft():
    # the blocked STFT must give the frames of one centred STFT over the whole clip (no shift at a block edge)
    audio = speechlike(7.3) + 0.01 * torch.randn(116800, generator=torch.Generator().manual_seed(4))
    stft = torch.stft(audio, 400, 160, window=torch.hann_window(400), return_complex=True)
    from joygen_core.audio.whisper import _mel_filters

    mel = (_mel_filters() @ stft[:, :-1].abs() ** 2).clamp(min=1e-10).log10()
    whole = (torch.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0
    for block in (7, 100, 6000):
        ours = log_mel_spectrogram(audio, block=block)
        assert ours.shape == whole.shape == (80, 730)
        torch.testing.assert_close(ours, whole, atol=1e-5, rtol=0)


def test_to_mono_16k_never_clips_the_callers_tensor():
    loud = torch.tensor([0.5, 1.5, -2.0, 0.25])
    out = to_mono_16k(loud, 16000)
    assert out.tolist() == [0.5, 32767 / 32768, -1.0, 0.25] and loud.tolist() == [0.5, 1.5, -2.0, 0.25]


def test_log_mel_silence_and_tiny_input():
    mel = log_mel_spectrogram(torch.zeros(16000))
    assert mel.shape == (80, 100) and torch.allclose(mel, torch.full_like(mel, -1.5))  # log10(1e-10)=-10 -> -1.5
    assert log_mel_spectrogram(torch.zeros(100)).shape == (80, 0)


def test_five_states_are_embedding_and_pre_norm_blocks(encoder):
    mel = log_mel_spectrogram(speechlike(4.0))
    mel = torch.nn.functional.pad(mel, (0, 3000 - mel.shape[1]))[None]
    states = encoder_states(encoder, mel)
    assert states.shape == (1, 1500, 5, 384)
    with torch.no_grad():
        final = encoder(mel).last_hidden_state
        # state 4 is the last block's output BEFORE ln_post (transformers' hidden_states[-1] is after it)
        assert torch.allclose(encoder.layer_norm(states[:, :, 4]), final, atol=1e-5)
        assert not torch.allclose(states[:, :, 4], final, atol=1e-2)
        # state 0 is conv stem + positional embedding; state 1 is block 0 applied to it
        x = torch.nn.functional.gelu(encoder.conv2(torch.nn.functional.gelu(encoder.conv1(mel)))).transpose(1, 2)
        x = x + encoder.embed_positions.weight
        assert torch.allclose(states[:, :, 0], x, atol=1e-5)
        layer = encoder.layers[0]  # transformers 4.x takes a positional layer_head_mask, 5.x has none
        kw = {"layer_head_mask": None} if "layer_head_mask" in inspect.signature(layer.forward).parameters else {}
        b0 = layer(x, None, **kw)
        b0 = b0[0] if isinstance(b0, tuple) else b0
        assert torch.allclose(states[:, :, 1], b0, atol=1e-4)


def test_features_layout_and_positional_encoding(encoder):
    audio = speechlike(2.0)
    states = whisper_hidden_states(encoder, audio)
    assert states.shape == (100, 5, 384)  # 2 s -> 32000 // 320 rows
    feats = whisper_features(encoder, audio, 25.0, 50)
    assert feats.shape == (50, 50, 384)
    pe = positional_encoding(50, 384)
    assert torch.allclose(pe[3, 0::2], torch.sin(3 * torch.exp(torch.arange(0, 384, 2) * (-math.log(1e4) / 384))))
    raw = feats - pe
    # frame 7 at 25 fps: centre row 14, rows 10..19, five states each, row-major then state
    assert torch.allclose(raw[7].reshape(10, 5, 384), states[10:20], atol=1e-5)
    assert torch.allclose(frame_features(states, 25.0, 50, add_encoding=False), raw, atol=1e-5)


@pytest.mark.parametrize("extra", [0, 170, 310])
def test_short_clip_is_the_whole_log_mel_in_one_padded_window(encoder, extra):
    # official (MuseTalk transcribe): every N//160 mel frame, an odd last one included, zero-padded to 3000
    audio = speechlike(1.5)[: 16000 + extra]
    mel = log_mel_spectrogram(audio)
    assert mel.shape[1] == audio.shape[0] // 160
    ref = encoder_states(encoder, torch.nn.functional.pad(mel, (0, 3000 - mel.shape[1]))[None])[0]
    ours = whisper_hidden_states(encoder, audio)
    assert ours.shape == (audio.shape[0] // 320, 5, 384)
    assert torch.allclose(ours, ref[: ours.shape[0]], atol=1e-5)


@pytest.mark.parametrize("fps, n", [(24.0, 48), (29.97, 60), (30.0, 61), (60.0, 120), (25.0, 200)])
def test_output_length_is_the_requested_frame_count(encoder, fps, n):
    feats = whisper_features(encoder, speechlike(2.0), fps, n)
    assert feats.shape == (n, 50, 384) and torch.isfinite(feats).all()


def test_bad_audio_inputs(encoder):
    rng = torch.Generator().manual_seed(1)
    # NaN / inf / clipped, 6-channel 48 kHz and stereo 8 kHz all become finite 16 kHz mono features
    wav = torch.randn(6, 48000, generator=rng) * 3
    wav[0, 100:200] = float("nan")
    wav[2, 5] = float("inf")
    for w, sr in ((wav, 48000), (torch.randn(2, 8000, generator=rng) * 0.1, 8000)):
        a = to_mono_16k(w, sr)
        assert a.shape == (16000,)
        assert torch.isfinite(whisper_features(encoder, a, 25.0, 25)).all()
    # silence and audio shorter than one frame
    assert torch.isfinite(whisper_features(encoder, torch.zeros(16000), 25.0, 25)).all()
    short = whisper_features(encoder, torch.zeros(100), 25.0, 3)
    assert short.shape == (3, 50, 384) and torch.isfinite(short).all()


def test_long_audio_has_no_seam_at_30_and_60_s(encoder):
    audio = speechlike(75.0)
    ours = whisper_hidden_states(encoder, audio)
    assert ours.shape == (3750, 5, 384)

    def jump_ratio(f, at):
        d = (f[1:] - f[:-1]).flatten(1).norm(dim=1)
        return (d[at - 3: at + 3] / d.median()).max().item()

    assert jump_ratio(ours, 1500) < 1.5 and jump_ratio(ours, 3000) < 1.5
    # the official back-to-back 30 s windows do jump there (so the check above can see a seam)
    mel = log_mel_spectrogram(audio)
    segs = []
    for s in (0, 3000):
        segs.append(encoder_states(encoder, mel[None, :, s:s + 3000])[0])
    official = torch.cat(segs)
    assert jump_ratio(official, 1500) > 3.0
    # the first 30 s window of an exactly-30 s clip is the official result
    # written out in half as rows complete: the float32 result rounded, not a different blend
    assert torch.equal(whisper_hidden_states(encoder, audio, dtype=torch.float16), ours.half())
    first = whisper_hidden_states(encoder, audio[:480000])
    mel30 = log_mel_spectrogram(audio[:480000])
    assert torch.allclose(first, encoder_states(encoder, mel30[None])[0], atol=1e-5)


def test_hf_folder_loads_the_same_encoder(models_dir, tmp_path, encoder):
    # the hub's openai/whisper-tiny is a WhisperForConditionalGeneration folder (model.encoder.*, proj_out)
    _hf_whisper_folder(tmp_path / "whisper-tiny", encoder)
    hf = load_whisper_encoder(tmp_path / "whisper-tiny")
    audio = speechlike(1.0)
    assert torch.allclose(whisper_features(hf, audio, 25.0, 10), whisper_features(encoder, audio, 25.0, 10), atol=1e-5)
