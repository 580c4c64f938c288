"""MTCNN detection (batched, flagged misses, several faces), alignment on its real points, smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.face.align import align_params, crop_faces, crop_geometry
from joygen_core.face.detect import detect_faces, load_mtcnn
from joygen_core.face.smooth import smooth_points


@pytest.fixture(scope="module")
def mtcnn():
    return load_mtcnn("cpu")


@pytest.fixture(scope="module")
def two_faces(astronaut):
    """The astronaut (large, left) and a 0.6x copy (right) on one canvas."""
    canvas = np.zeros((512, 900, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[100:400, 580:880] = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    return canvas


def test_astronaut_mtcnn_points_align_to_pil(astronaut, mtcnn):
    """Real face, MTCNN's five points: the batched crop equals the official PIL resize + crop to the pixel."""
    det = detect_faces(torch.from_numpy(astronaut)[None], mtcnn)
    assert det.found.tolist() == [True] and det.score[0] > 0.99
    five = det.five[0]
    assert five[0, 0] < five[1, 0] and five[2, 1] > five[0, 1] and five[3, 1] > five[2, 1]  # eyes, nose, mouth
    al = align_params(det.five, astronaut.shape[:2])
    crop = crop_faces(torch.from_numpy(astronaut)[None], al)
    ws, hs, left, up = (int(v) for v in crop_geometry(al, astronaut.shape[:2]))
    ref = Image.fromarray(astronaut).resize((ws, hs), resample=Image.Resampling.BICUBIC)
    ref = np.asarray(ref.crop((left, up, left + 224, up + 224)))
    assert np.array_equal((crop[0].permute(1, 2, 0) * 255).round().byte().numpy(), ref)


def test_batch_with_and_without_faces(astronaut, mtcnn):
    frames = np.stack([astronaut, np.zeros_like(astronaut), astronaut[:, ::-1], np.full_like(astronaut, 128)])
    det = detect_faces(torch.from_numpy(np.ascontiguousarray(frames)), mtcnn)
    assert det.found.tolist() == [True, False, True, False]
    assert (det.box[1] == 0).all() and (det.five[3] == 0).all() and det.count.tolist() == [1, 0, 1, 0]
    # the mirrored frame's face is mirrored
    w = astronaut.shape[1]
    assert abs(float(det.box[0, 0] + det.box[2, 2]) - (w - 1)) < 6
    assert not detect_faces(torch.zeros(2, 120, 160, 3, dtype=torch.uint8), mtcnn).found.any()


def test_two_faces_policies(two_faces, astronaut, mtcnn):
    only_small = two_faces.copy()
    only_small[:, :512] = 0
    frames = torch.from_numpy(np.stack([only_small, two_faces, two_faces]))
    largest = detect_faces(frames, mtcnn, "largest")
    tracked = detect_faces(frames, mtcnn, "track")
    assert largest.count.tolist() == [1, 2, 2]
    assert (largest.box[1:, 0] < 400).all()  # the big face on the left
    assert (tracked.box[:, 0] > 500).all()  # keeps following the small face it started with
    # a given previous box starts the track
    start = torch.tensor([180.0, 60.0, 270.0, 175.0])
    again = detect_faces(frames[1:], mtcnn, "track", previous=start)
    assert (again.box[:, 0] < 400).all()
    with pytest.raises(ValueError, match="policy"):
        detect_faces(frames, mtcnn, "biggest")


def test_face_cut_by_border_and_tiny_face(astronaut, mtcnn):
    cut = np.ascontiguousarray(astronaut[:, 215:])
    det = detect_faces(torch.from_numpy(cut)[None], mtcnn)
    if det.found[0]:  # points may lie outside the frame: the crop pads with zeros
        crop = crop_faces(torch.from_numpy(cut)[None], align_params(det.five, cut.shape[:2]))
        assert (crop[0, :, :, :20] == 0).all() and crop.max() > 0
    tiny = np.zeros((512, 512, 3), np.uint8)
    tiny[200:264, 200:264] = np.asarray(Image.fromarray(astronaut).resize((64, 64)))
    assert not detect_faces(torch.from_numpy(tiny)[None], mtcnn).found[0]  # below the official 50 px
    assert detect_faces(torch.from_numpy(tiny)[None], load_mtcnn("cpu", min_face_size=10)).found[0]


def test_detect_input_checks(mtcnn):
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(torch.zeros(1, 10, 10, 3), mtcnn)
    with pytest.raises(ValueError, match="RGB"):
        detect_faces(torch.zeros(1, 10, 10, 4, dtype=torch.uint8), mtcnn)


# ---------------------------------------------------------------- smoothing


def _smooth(track: np.ndarray, found=None, size=100.0) -> np.ndarray:
    t = torch.tensor(track, dtype=torch.float64)
    found = torch.ones(len(track), dtype=torch.bool) if found is None else torch.tensor(found)
    return smooth_points(t, found, torch.full((len(track),), size)).numpy()


def test_smoothing_still_face_no_lag_less_jitter():
    rng = np.random.default_rng(0)
    still = np.full((100, 5, 2), 200.0)
    assert np.allclose(_smooth(still), still)  # a still face stays exactly put
    noisy = still + rng.normal(0, 1.0, still.shape)
    out = _smooth(noisy)
    assert np.std(out - still) < 0.5 * np.std(noisy - still)
    assert abs(out.mean() - 200.0) < 0.1


def test_smoothing_moving_face_no_trailing():
    t = np.arange(100, dtype=np.float64)
    ramp = np.stack([200 + 4.0 * t, 150 + 0 * t], -1)[:, None, :].repeat(5, 1)  # 4 px per frame
    out = _smooth(ramp)
    assert np.abs(out - ramp)[5:-5].max() < 0.2  # zero-phase: no lag behind a moving face
    step = np.where(t[:, None, None] < 50, 100.0, 160.0) * np.ones((1, 5, 2))
    out = _smooth(step)
    assert np.abs(out - step)[:45].max() < 1.0 and np.abs(out - step)[55:].max() < 1.0


def test_smoothing_respects_missing_frames():
    rng = np.random.default_rng(1)
    pts = 100 + rng.normal(0, 1, (30, 2, 2))
    found = np.ones(30, bool)
    found[10] = False
    pts[10] = 0
    out = _smooth(pts, found)
    assert np.array_equal(out[10], pts[10])  # untouched, and it did not pull its neighbours
    assert np.abs(out[9] - 100).max() < 5 and np.abs(out[11] - 100).max() < 5
