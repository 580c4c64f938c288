"""Mouth opening per frame and its plot, checked on the picture itself.

A tiny BFM (the 68 landmarks as its only vertices) whose expression 0 drops the jaw and lower lip by 10 mm
per unit gives known openings. The plot is read back as pixels: the curve's colour found per column, the
columns mapped to seconds through the curve's own extent (first frame to last), so a test sees where the
drawn mouth opens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.morphable import face_points_68
from joygen_core.errors import InputError
from joygen_core.face.track import FaceTrack
from joygen_core.morphable.bfm import BFM
from joygen_core.morphable.geometry import face_shape
from joygen_core.motion.plot import COLOURS, NO_FACE_SHADE, mouth_opening, opening_series, plot_mouth_opening
from joygen_core.motion.types import Motion

LOWER = list(range(5, 12)) + list(range(55, 60)) + [65, 66, 67]  # chin, lower outer and inner lip
OPEN = [(0.5, 0.8), (1.6, 2.2), (3.0, 3.2)]  # seconds where the mouth opens


def tiny_bfm() -> BFM:
    """68 vertices at the landmark layout (decimetres); exp 0 drops the lower lip 0.1 dm, exp 1 widens it."""
    n = 68
    verts = np.concatenate([face_points_68(), np.zeros((n, 1))], 1).astype(np.float32)
    exp = np.zeros((n, 3, 64), np.float32)
    exp[LOWER, 1, 0] = -0.1
    exp[[48, 54, 60, 64], 0, 1] = [-0.05, 0.05, -0.05, 0.05]
    return BFM(meanshape=torch.from_numpy(verts), id_base=torch.zeros(3 * n, 80),
               exp_base=torch.from_numpy(exp.reshape(3 * n, 64)), mean_tex=torch.zeros(n, 3),
               tex_base=torch.zeros(3 * n, 80), tri=torch.tensor([[0, 1, 2]]),
               point_buf=torch.zeros(n, 8, dtype=torch.long), keypoints=torch.arange(n))


def _opening(t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(t)
    for a, b in OPEN:
        m = (t >= a) & (t <= b)
        out[m] = np.sin(np.pi * (t[m] - a) / (b - a))
    return out


def _motion(fps: float = 25.0, seconds: float = 4.0) -> Motion:
    t = np.arange(int(round(seconds * fps))) / fps
    exp = torch.zeros(len(t), 64)
    exp[:, 0] = torch.from_numpy(_opening(t)).float()
    exp[:, 1] = 0.3 * torch.sin(torch.from_numpy(t).float() * 5)  # lips widen and narrow: not an opening
    return Motion(exp, fps)


def test_mouth_opening_is_the_inner_lip_gap_in_mm():
    bfm = tiny_bfm()
    exp = torch.zeros(3, 64)
    exp[1, 0], exp[2, 0] = 1.0, 0.5
    gap = mouth_opening(exp, bfm)
    rest = float(gap[0])
    pts = face_points_68()
    assert rest == pytest.approx(100 * np.mean([np.linalg.norm(pts[a] - pts[b]) for a, b in ((61, 67), (62, 66),
                                                                                           (63, 65))]), abs=1e-4)
    assert float(gap[1]) - rest == pytest.approx(10.0, abs=1e-3)  # 0.1 dm straight down = 10 mm
    assert float(gap[2]) - rest == pytest.approx(5.0, abs=1e-3)
    widen = torch.zeros(1, 64)
    widen[0, 1] = 1.0
    assert float(mouth_opening(widen, bfm)[0]) == pytest.approx(rest, abs=1e-4)  # corners move, the gap does not


def test_mouth_opening_matches_the_full_mesh():
    """The six vertices built directly equal the same keypoints of the whole BFM shape (row interleaving)."""
    bfm = tiny_bfm()
    bfm.exp_base = torch.randn(bfm.exp_base.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    exp = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    shape = face_shape(bfm, torch.zeros(5, 80), exp)
    kp = shape[:, bfm.keypoints]
    ref = torch.stack([(kp[:, a] - kp[:, b]).norm(dim=-1) for a, b in ((61, 67), (62, 66), (63, 65))], -1).mean(-1)
    assert torch.allclose(mouth_opening(exp, bfm), ref * 100, atol=1e-4)


def test_without_a_bfm_the_measure_is_named_differently():
    series, ylabel = opening_series([_motion()], None)
    assert ylabel == "expression activity (no BFM)" and series[0].values.min() >= 0
    series, ylabel = opening_series([_motion()], tiny_bfm())
    assert ylabel == "mouth opening (mm)"


# ---------------------------------------------------------------- the picture


def _mask(img: np.ndarray, colour, tol: float = 60.0) -> np.ndarray:
    return np.linalg.norm(img.astype(float) - np.asarray(colour, float), axis=-1) < tol


BELOW_LEGEND = 60  # rows of a one-row legend under the title; the curves are below


def _span_columns(img: np.ndarray, colour) -> tuple[int, int]:
    """First and last column of a curve: its first and last frame, i.e. 0 s and the clip's last frame time."""
    cols = np.flatnonzero(_mask(img[BELOW_LEGEND:], colour).any(0))
    return int(cols[0]), int(cols[-1])


def _curve_height(img: np.ndarray, colour) -> np.ndarray:
    """Per column, how high the curve of ``colour`` is drawn (rows from the bottom; -1 where absent)."""
    m = _mask(img[BELOW_LEGEND:], colour)
    return np.where(m.any(0), m.shape[0] - m.argmax(0), -1)


def _peak(h: np.ndarray) -> float:
    """Centre column of a curve's top (within 2 px of its highest point)."""
    return float(np.flatnonzero(h >= h.max() - 2).mean())


def test_the_plot_shows_when_the_mouth_opens(tmp_path):
    motion = _motion()
    img = plot_mouth_opening(motion, tiny_bfm(), width=800, height=300)
    assert img.shape == (300, 800, 3) and img.dtype == np.uint8
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "mouth.png")  # kept by pytest's tmp_path for a look by hand
    left, right = _span_columns(img, COLOURS[0])
    h = _curve_height(img, COLOURS[0])
    cols = np.arange(left + 3, right - 3)
    t = (cols - left) / (right - left) * (len(motion) - 1) / motion.fps
    hc = h[cols]
    low, high = np.percentile(hc[hc >= 0], 5), hc.max()
    is_open = hc > low + 0.5 * (high - low)
    truth = _opening(t) > 0.6
    near_edge = np.zeros_like(truth)
    for a, b in OPEN:  # one frame of slack either side of where the sine crosses the threshold
        for edge in (a + (b - a) * 0.205, b - (b - a) * 0.205):
            near_edge |= np.abs(t - edge) < 0.05
    assert (is_open == truth)[~near_edge].all()
    assert is_open.sum() > 0.1 * len(cols)


def test_curves_at_different_fps_line_up_in_seconds():
    """A 25 fps motion and a 30 fps face track of the same mouth: peaks in the same columns; no-face frames grey."""
    motion = _motion(25.0)
    t30 = np.arange(120) / 30.0
    track = FaceTrack.empty(120, (64, 64), fps=30.0)
    track.detected[:] = True
    track.detected[90:100] = False  # 3.0 .. 3.3 s: no face
    track.coeffs[:, 80] = torch.from_numpy(_opening(t30)).float()
    img = plot_mouth_opening([motion], tiny_bfm(), track, width=800, height=300)
    left, right = _span_columns(img, COLOURS[0])
    blue, green = _curve_height(img, COLOURS[0]), _curve_height(img, COLOURS[2])
    span = (len(motion) - 1) / motion.fps
    for a, b in OPEN[:2]:
        lo, hi = int(left + a / span * (right - left)), int(left + b / span * (right - left))
        assert abs(_peak(blue[lo:hi]) - _peak(green[lo:hi])) <= 2
    gap = slice(int(left + 3.05 / span * (right - left)), int(left + 3.25 / span * (right - left)))
    assert _mask(img[BELOW_LEGEND:BELOW_LEGEND + 4, gap], NO_FACE_SHADE, 8).all()  # above the curves: the band
    assert (green[gap] < 0).all()


def test_plot_node(pack):
    from types import SimpleNamespace

    from joygen_pack.nodes.motion import JoyGenPlotMotion

    (img,) = JoyGenPlotMotion().run(_motion(), motion_b=_motion(30.0), recon_models=SimpleNamespace(bfm=tiny_bfm()),
                                    width=640, height=240)
    assert img.shape == (1, 240, 640, 3) and img.dtype == torch.float32 and 0 <= float(img.min()) <= 1
    (img2,) = JoyGenPlotMotion().run(_motion())
    assert img2.shape == (1, 360, 960, 3)
    with pytest.raises(InputError, match="no BFM"):
        JoyGenPlotMotion().run(_motion(), recon_models=SimpleNamespace())


def test_plot_refuses_nothing_and_too_small():
    with pytest.raises(InputError, match="at least one motion"):
        plot_mouth_opening([], None)
    with pytest.raises(InputError, match="at least 240"):
        plot_mouth_opening(_motion(), None, width=100, height=100)


def test_a_still_mouth_draws_flat():
    """Sub-millimetre jitter of a closed mouth is not stretched to fill the plot (the axis spans >= 4 mm)."""
    still = _motion()
    still.exp[:, 0] = 0.02 * torch.sin(torch.arange(len(still)) * 1.3)  # +-0.2 mm
    img = plot_mouth_opening(still, tiny_bfm(), width=800, height=300)
    h = _curve_height(img, COLOURS[0])
    h = h[h >= 0]
    assert h.max() - h.min() < 0.12 * (300 - BELOW_LEGEND)


def test_two_equal_motions_both_show():
    """An Adjust Motion at its defaults gives the same curve: the second still shows, as a rim around the first."""
    img = plot_mouth_opening([_motion(), _motion()], tiny_bfm(), labels=["adjusted", "from audio"],
                             width=800, height=300)
    first, second = _curve_height(img, COLOURS[0]), _curve_height(img, COLOURS[1])
    both = (first >= 0) & (second >= 0)
    assert both.sum() > 0.2 * (first >= 0).sum()  # a rim along the flat stretches too, not only the slopes
    assert np.median(np.abs(first[both] - second[both])) <= 6  # along the same curve, a rim's width above it


def test_adjusted_motion_is_marked():
    from joygen_core.motion.adjust import adjust_motion

    m = _motion()
    assert "adjusted" not in adjust_motion(m).meta
    assert adjust_motion(m, amplitude=1.5).meta["adjusted"] is True


def test_plot_node_labels_the_adjusted_motion(pack):
    from joygen_core.motion.adjust import adjust_motion
    from joygen_pack.nodes.motion import _label

    m = _motion()
    m.meta = {"seed": 3}
    assert _label(m, "motion b") == "motion b: from audio (seed 3)"
    assert _label(adjust_motion(m, shift_frames=2), "motion") == "motion: from audio (seed 3), adjusted"
