"""The mouth mask: the region JoyGen redraws, and the optional MediaPipe lips."""

from __future__ import annotations

import pytest
import torch

from joygen_core.edit.mask import regenerated_region
from joygen_core.face.lips import mediapipe_available


def test_region_is_the_lower_half_of_each_detected_box():
    boxes = torch.tensor([[2, 1, 8, 9], [0, 0, 4, 4], [-3, 6, 3, 12]])
    m = regenerated_region(boxes, torch.tensor([True, False, True]), (10, 10))
    assert m.shape == (3, 10, 10)
    assert m[0].nonzero()[:, 0].unique().tolist() == [5, 6, 7, 8]  # rows y1 + h//2 .. y2-1
    assert m[0].nonzero()[:, 1].unique().tolist() == list(range(2, 8))
    assert m[1].sum() == 0  # no face: nothing changes
    assert m[2].nonzero()[:, 0].unique().tolist() == [9] and m[2].nonzero()[:, 1].max() == 2  # clipped to the frame


def test_mouth_mask_node_modes(pack):
    from joygen_core.face.track import FaceTrack
    from joygen_pack.nodes.edit import JoyGenMouthMask

    track = FaceTrack.empty(2, (20, 30))
    track.detected[0] = True
    track.box[0] = torch.tensor([5, 2, 25, 18])
    (mask,) = JoyGenMouthMask().mask(track, "region")
    assert mask.shape == (2, 20, 30) and mask[0].sum() == 20 * 8 and mask[1].sum() == 0
    with pytest.raises(ValueError, match="needs the images and a face parser"):
        JoyGenMouthMask().mask(track, "parsing")


@pytest.mark.skipif(mediapipe_available(), reason="checks the message shown without mediapipe")
def test_mediapipe_lips_without_mediapipe_is_a_clear_error():
    from joygen_core.errors import JoyGenError
    from joygen_core.face.lips import lip_masks

    with pytest.raises(JoyGenError, match="optional package mediapipe"):
        lip_masks(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.tensor([[0, 0, 8, 8]]), torch.tensor([True]))


@pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is an optional refinement (not installed)")
def test_mediapipe_lips_on_the_astronaut(astronaut):
    from joygen_core.face.lips import lip_masks

    frames = torch.from_numpy(astronaut)[None]
    box = torch.tensor([[160, 40, 260, 170]])  # her face
    lips, found = lip_masks(frames, box, torch.tensor([True]))
    assert bool(found[0])
    ys, xs = (lips[0] > 0.5).nonzero(as_tuple=True)
    assert 110 < ys.float().mean() < 160 and 185 < xs.float().mean() < 235  # the mouth, below the nose
    assert lips[0].sum() < 0.3 * 100 * 130  # lips, not the whole face
