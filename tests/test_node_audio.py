"""The audio nodes as ComfyUI calls them: loaders from the model folder, AUDIO dicts in, typed values out."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture()
def nodes(pack, models_dir, monkeypatch):
    monkeypatch.setenv("JOYGEN_MODELS", str(models_dir))
    from joygen_pack.nodes import audio

    return audio


def comfy_audio(seconds: float, rate: int, channels: int) -> dict:
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    x = 0.3 * torch.sin(2 * math.pi * 160 * t)
    return {"waveform": x.expand(1, channels, -1).clone(), "sample_rate": rate}


def test_registered_with_tooltips(nodes, pack):
    from joygen_pack.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    for node_id, name in (("JoyGenLoadWhisper", "JoyGen Load Whisper"),
                          ("JoyGenLoadAudio2Motion", "JoyGen Load Audio to Motion"),
                          ("JoyGenAudioFeatures", "JoyGen Audio Features"),
                          ("JoyGenAudio2Motion", "JoyGen Audio to Motion")):
        assert NODE_CLASS_MAPPINGS[node_id] is nodes.NODE_CLASS_MAPPINGS[node_id]
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id] == name
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        for _, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip")


def test_features_and_motion_nodes(nodes):
    whisper_choices = nodes.JoyGenLoadWhisper.INPUT_TYPES()["required"]["model"][0]
    assert "whisper/tiny.pt" in whisper_choices
    (whisper,) = nodes.JoyGenLoadWhisper().load("whisper/tiny.pt", "cpu")
    a2m_inputs = nodes.JoyGenLoadAudio2Motion.INPUT_TYPES()["required"]
    ckpt = a2m_inputs["checkpoint"][1]["default"]
    hub = a2m_inputs["hubert"][1]["default"]
    assert ckpt.endswith("model_ckpt_steps_400000.ckpt") and hub == "audio2motion/hubert"
    (a2m,) = nodes.JoyGenLoadAudio2Motion().load(ckpt, hub, "cpu")

    audio = comfy_audio(1.0, 48000, 2)  # 48 kHz stereo
    feats, n = nodes.JoyGenAudioFeatures().run(whisper, audio, 30.0, 0)
    assert n == 30 and feats.shape == (30, 50, 384)
    feats, n = nodes.JoyGenAudioFeatures().run(whisper, comfy_audio(1.0, 8000, 6), 29.97, 45)
    assert n == 45 and feats.shape == (45, 50, 384)

    motion, n = nodes.JoyGenAudio2Motion().run(a2m, audio, 24.0, 0, seed=3, temperature=0.2, mouth_amp=0.45)
    assert n == 24 and motion.exp.shape == (24, 64) and motion.fps == 24.0
    again, _ = nodes.JoyGenAudio2Motion().run(a2m, audio, 24.0, 0, seed=3, temperature=0.2, mouth_amp=0.45)
    assert torch.equal(motion.exp, again.exp)


def test_missing_model_is_a_clear_error(pack, tmp_path, monkeypatch):
    from joygen_core.errors import ModelFileError

    (tmp_path / "joygen").mkdir()
    monkeypatch.setenv("JOYGEN_MODELS", str(tmp_path / "joygen"))
    from joygen_pack.nodes import audio

    names = audio.JoyGenLoadWhisper.INPUT_TYPES()["required"]["model"][0]
    assert names == [audio.NO_WHISPER]
    with pytest.raises(Exception, match="whisper"):
        audio.JoyGenLoadWhisper().load("whisper/tiny.pt", "cpu")
    assert issubclass(ModelFileError, Exception)
