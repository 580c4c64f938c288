"""reconstruct(): a whole batch of real frames to a face track, with misses flagged and bad input handled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from joygen_core.face.align import crop_faces
from joygen_core.face.track import FaceTrack
from joygen_core.morphable import geometry as G
from joygen_core.morphable.reconstruct import as_rgb_uint8, draw_preview, load_recon_models, reconstruct


@pytest.fixture(scope="module")
def models(models_dir):
    return load_recon_models(models_dir / "BFM/BFM_model_front.mat",
                             models_dir / "face_recon_feat0.2_augment/epoch_20.pth", "cpu")


def test_reconstruct_real_frames_with_gaps(face_frames, models):
    frames = face_frames[:8].copy()
    frames[[3, 7]] = 0  # no face in these
    track = reconstruct(frames, models.detector, models.regressor, models.bfm, batch_size=5, fps=25.0)
    assert isinstance(track, FaceTrack) and len(track) == 8 and track.frame_size == frames.shape[1:3]
    assert track.detected.tolist() == [i not in (3, 7) for i in range(8)]
    for name in ("det_box", "five", "align", "coeffs", "lm68", "box"):
        assert (getattr(track, name)[[3, 7]] == 0).all(), name
    ok = track.detected
    assert torch.isfinite(track.coeffs[ok]).all() and track.align.dtype == torch.float64
    # the stored numbers agree with each other: coefficients of the official crop, landmarks from them
    idx = ok.nonzero()[:3, 0]
    crops = crop_faces(torch.from_numpy(frames[idx.numpy()]), track.align[idx])
    with torch.no_grad():
        assert torch.allclose(models.regressor(crops), track.coeffs[idx], atol=1e-4)
    v = G.posed_camera_vertices(models.bfm, track.coeffs[idx])
    lm = G.crop_to_frame(G.landmarks68(models.bfm, v), track.align[idx], track.frame_size)
    assert torch.allclose(lm, track.lm68[idx], atol=1e-3)
    assert torch.equal(track.box[idx], G.face_box_from_lm68(lm, fallback=track.det_box[idx]))
    # batch size does not change the result
    again = reconstruct(frames, models.detector, models.regressor, models.bfm, batch_size=64)
    assert torch.allclose(again.coeffs, track.coeffs, atol=1e-4) and torch.equal(again.box, track.box)


def test_reconstruct_no_face_anywhere(models):
    track = reconstruct(np.zeros((4, 90, 120, 3), np.uint8), models.detector, models.regressor, models.bfm)
    assert len(track) == 4 and not track.detected.any() and (track.coeffs == 0).all()


def test_gray_and_rgba_frames(face_frames, models):
    rgb = face_frames[:2]
    gray = rgb.mean(-1, keepdims=True).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1)
    assert as_rgb_uint8(gray).shape == (2, *rgb.shape[1:3], 3)
    assert torch.equal(as_rgb_uint8(rgba), torch.from_numpy(rgb))
    track = reconstruct(gray, models.detector, models.regressor, models.bfm)
    assert track.detected.all()
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_uint8(rgb.astype(np.float32))


def test_preview_draws_box_and_points(face_frames, models):
    frames = face_frames[:2].copy()
    frames[1] = 0
    track = reconstruct(frames, models.detector, models.regressor, models.bfm)
    pv = draw_preview(torch.from_numpy(frames), track)
    assert pv.shape == frames.shape and pv.dtype == torch.uint8
    assert torch.equal(pv[1], torch.from_numpy(frames[1]))  # no face: untouched
    x1, y1, x2, y2 = (int(v) for v in track.box[0].clamp(min=0))
    assert (pv[0, y1, x1:x2 + 1] == torch.tensor([255, 220, 0], dtype=torch.uint8)).all()
    fx, fy = (int(round(float(v))) for v in track.five[0, 2])
    assert pv[0, fy, fx].tolist() == [255, 0, 0]


@pytest.mark.slow
def test_track_policy_across_batches(astronaut, models):
    """The followed face survives batch boundaries: the small face first seen stays chosen."""
    from PIL import Image

    two = np.zeros((512, 900, 3), np.uint8)
    two[:, :512] = astronaut
    two[100:400, 580:880] = np.asarray(Image.fromarray(astronaut).resize((300, 300)))
    only_small = two.copy()
    only_small[:, :512] = 0
    frames = np.stack([only_small, two])
    tracked = reconstruct(frames, models.detector, models.regressor, models.bfm, batch_size=1, policy="track")
    assert (tracked.det_box[:, 0] > 500).all()  # 'largest' would switch to the left face in frame 1
    assert tracked.meta["multi_face_frames"] == 1


def test_alignment_and_projection_agree_on_a_real_face(astronaut, models):
    """Near-zero coefficients put the factory face's keypoints where MTCNN saw the eyes and mouth corners:
    crop, camera, projection and the way back to frame pixels fit together (a flipped axis or a wrong
    offset would be tens of pixels off; the eyes are 43 px apart)."""
    track = reconstruct(astronaut[None], models.detector, models.regressor, models.bfm)
    assert track.coeffs.abs().max() < 0.2
    lm, five = track.lm68[0], track.five[0]
    eyes = torch.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
    assert (eyes - five[:2]).norm(dim=1).max() < 15
    assert (torch.stack([lm[48], lm[54]]) - five[3:]).norm(dim=1).max() < 15
    x1, y1, x2, y2 = track.box[0].tolist()
    assert x1 < five[:, 0].min() and x2 > five[:, 0].max() and y1 < five[:, 1].min() and y2 > five[:, 1].max()


def test_progress_reports_each_batch_with_an_overlay_preview(face_frames, models):
    frames = face_frames[:5].copy()
    calls = []
    track = reconstruct(frames, models.detector, models.regressor, models.bfm, batch_size=2,
                        progress=lambda d, t, preview=None: calls.append((d, t, preview)))
    regress_calls = [c for c in calls if c[2] is not None]
    assert len(regress_calls) == 3  # 5 faces in batches of 2
    assert calls[-1][:2] == (10, 10) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    image = regress_calls[-1][2]()
    assert isinstance(image, np.ndarray) and image.shape == frames.shape[1:] and image.dtype == np.uint8
    assert np.array_equal(image, draw_preview(torch.from_numpy(frames[4:5]), track.select([4]))[0].numpy())
    assert not np.array_equal(image, frames[4])  # the landmarks are drawn
