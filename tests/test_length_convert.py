"""Length fitting and ComfyUI type conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from joygen_core.errors import MediaError
from joygen_core.face.track import FaceTrack
from joygen_core.video.convert import audio_from_comfy, audio_to_comfy, image_to_uint8, uint8_to_image
from joygen_core.video.io import AudioClip
from joygen_core.video.length import fit_length


@pytest.mark.parametrize(
    ("mode", "n_in", "n_out", "expected"),
    [
        ("pingpong", 3, 8, [0, 1, 2, 2, 1, 0, 0, 1]),  # official: frames + frames[::-1], cycled
        ("pingpong", 1, 3, [0, 0, 0]),
        ("loop", 3, 7, [0, 1, 2, 0, 1, 2, 0]),
        ("hold", 3, 5, [0, 1, 2, 2, 2]),
        ("trim", 3, 5, [0, 1, 2]),
        ("trim", 5, 3, [0, 1, 2]),
        ("pingpong", 5, 2, [0, 1]),
        ("loop", 4, 0, []),
    ],
)
def test_fit_length(mode, n_in, n_out, expected):
    assert fit_length(n_in, n_out, mode).tolist() == expected


def test_fit_length_rejects_bad_input():
    with pytest.raises(ValueError, match="Unknown length mode"):
        fit_length(3, 4, "bounce")
    with pytest.raises(ValueError, match="empty"):
        fit_length(0, 4)


def test_track_follows_frames_when_refitted():
    track = FaceTrack.empty(3, (10, 10))
    track.coeffs[:, 0] = torch.tensor([0.0, 1.0, 2.0])
    idx = fit_length(3, 7, "pingpong")
    assert track.select(idx).coeffs[:, 0].tolist() == [0, 1, 2, 2, 1, 0, 0]


def test_image_conversions():
    rgba = torch.rand(2, 5, 6, 4)
    u8 = image_to_uint8(rgba)
    assert u8.shape == (2, 5, 6, 3) and u8.dtype == torch.uint8
    assert torch.equal(u8, (rgba[..., :3] * 255).round().to(torch.uint8))
    gray = image_to_uint8(torch.full((1, 2, 2, 1), 0.5))
    assert gray.shape[-1] == 3 and int(gray[0, 0, 0, 2]) == 128
    frames = np.random.default_rng(0).integers(0, 255, (2, 3, 4, 3), dtype=np.uint8)
    assert torch.equal(image_to_uint8(uint8_to_image(frames)), torch.from_numpy(frames))
    with pytest.raises(MediaError):
        image_to_uint8(torch.rand(1, 2, 2, 2))


def test_audio_conversions():
    clip = AudioClip(torch.randn(2, 100), 8000)
    comfy = audio_to_comfy(clip)
    assert comfy["waveform"].shape == (1, 2, 100) and comfy["sample_rate"] == 8000
    back = audio_from_comfy(comfy)
    assert torch.equal(back.waveform, clip.waveform) and back.sample_rate == 8000
    with pytest.raises(MediaError, match="no samples"):
        audio_from_comfy({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000})
    with pytest.raises(MediaError):
        audio_from_comfy({"samples": []})
