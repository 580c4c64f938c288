"""Mouth depth end to end on a small synthetic BFM (the 3DMM geometry comes from joygen_core.morphable)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("joygen_core.morphable.geometry")

from joygen_core.face.track import FaceTrack  # noqa: E402
from joygen_core.morphable.bfm import BFM  # noqa: E402
from joygen_core.morphable.geometry import landmarks468, posed_camera_vertices, project  # noqa: E402
from joygen_core.render.depth import MOUTH_OUTER_LIP, normalise_depth, render_mouth_depth  # noqa: E402
from joygen_core.render.raster import rasterize_depth  # noqa: E402

MOUTH = (0.0, -0.38)


def small_bfm(n: int = 49) -> BFM:
    """A dome-shaped face on an n x n grid (decimetres), lips as a bump; exp 0 opens the lower lip (z)."""
    u = torch.linspace(-0.8, 0.8, n)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r2 = (xx / 0.85) ** 2 + (yy / 0.95) ** 2
    z = 0.4 * (1 - r2).clamp(min=0).sqrt()
    lips = torch.exp(-(((xx - MOUTH[0]) / 0.22) ** 2 + ((yy - MOUTH[1]) / 0.09) ** 2))
    z = z + 0.04 * lips
    mean = torch.stack([xx, yy, z], -1).reshape(-1, 3)
    mean = mean - mean.mean(0)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
    tri = torch.cat([torch.stack([a, b, d], 1), torch.stack([a, d, c], 1)])
    N = n * n
    exp_base = torch.zeros(3 * N, 64)
    exp_base[2::3, 0] = -0.5 * lips.reshape(-1)  # expression 0 pushes the lips back
    mp468 = torch.zeros(468, dtype=torch.long)
    ang = torch.linspace(0, 2 * np.pi, len(MOUTH_OUTER_LIP) + 1)[:-1]
    ring = torch.stack([MOUTH[0] + 0.25 * torch.cos(ang), MOUTH[1] + 0.1 * torch.sin(ang)], 1)
    grid_xy = torch.stack([xx, yy], -1).reshape(-1, 2)
    for k, p in zip(MOUTH_OUTER_LIP, ring):
        mp468[k] = int(((grid_xy - p) ** 2).sum(1).argmin())
    return BFM(meanshape=mean, id_base=torch.zeros(3 * N, 80), exp_base=exp_base, mean_tex=torch.zeros(N, 3),
               tex_base=torch.zeros(3 * N, 80), tri=tri, point_buf=torch.zeros(N, 8, dtype=torch.long),
               keypoints=torch.arange(68), mp468=mp468)


def small_track(T: int = 3) -> FaceTrack:
    """Frames 256x256 with an identity-scale alignment (crop at 16, 16); frame 1 has no face."""
    tr = FaceTrack.empty(T, (256, 256), fps=25.0)
    tr.detected[:] = True
    tr.align[:] = torch.tensor([1.0, 128.0, 128.0])  # s = 1, left = up = 16
    tr.coeffs[:, 224:227] = torch.tensor([0.05, -0.1, 0.02])  # a slight pose
    tr.box[:] = torch.tensor([48, 40, 208, 232])
    if T > 1:
        tr.detected[1] = False
        tr.coeffs[1] = 0
        tr.align[1] = 0
        tr.box[1] = 0
    return tr


@pytest.fixture(scope="module")
def bfm():
    return small_bfm()


def test_mouth_depth_fixture(bfm):
    track = small_track()
    exp = torch.zeros(3, 64)
    mouth, face = render_mouth_depth(track, exp, bfm, backend="torch")
    assert mouth.shape == (3, 256, 256) and face.shape == (3, 256, 256)
    assert (mouth[1] == 0).all() and (face[1] == 0).all()  # no face: black, passed on
    assert (mouth[:, :128] == 0).all()
    assert torch.isfinite(mouth).all() and mouth.max() <= 1
    # the face preview is the official normalisation of the render, pasted at (16, 16) (s = 1)
    v = posed_camera_vertices(bfm, track.coeffs[[0, 2]], exp=exp[[0, 2]])
    d, c = rasterize_depth(v, bfm.tri, 224, "torch")
    norm = normalise_depth(d, c)
    expect = torch.zeros(2, 256, 256)
    expect[:, 16:240, 16:240] = norm
    assert torch.equal((face[[0, 2]] * 255).round(), expect)
    assert face[0].max() == 1.0  # nearest covered pixel 255
    # non-zero mouth depth only inside the lip polygon (face-box pixels -> 256 map), values from the face depth
    lips = (project(v[:, bfm.mp468[list(MOUTH_OUTER_LIP)]]) + 16 - torch.tensor([48.0, 40.0]))
    sx, sy = 256 / 160, 256 / 192
    for i, f in enumerate([0, 2]):
        m = mouth[f]
        assert m.max() > 0.3
        # margin: int32 truncation of the points (1 px) + Lanczos4 support (4 px), both scaled to 256
        x0, x1 = (lips[i, :, 0].min() - 5) * sx, (lips[i, :, 0].max() + 5) * sx
        y0, y1 = (lips[i, :, 1].min() - 5) * sy, (lips[i, :, 1].max() + 5) * sy
        ys, xs = (m > 0).nonzero(as_tuple=True)
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        # deep inside the mouth the value is the face depth there (smooth, so Lanczos keeps it within a few levels)
        cy, cx = int(lips[i, :, 1].mean() * sy), int(lips[i, :, 0].mean() * sx)
        fy, fx = int(cy / sy + 40), int(cx / sx + 48)
        assert abs(float(m[cy, cx]) - float(face[f, fy, fx])) * 255 <= 4


def test_expression_changes_the_mouth_depth(bfm):
    track = small_track(1)
    still, _ = render_mouth_depth(track, torch.zeros(1, 64), bfm, backend="torch", preview=False)
    exp = torch.zeros(1, 64)
    exp[0, 0] = 1.0
    moved, none = render_mouth_depth(track, exp, bfm, backend="torch", preview=False)
    assert none is None
    assert (still - moved).abs().max() > 0.05
    own, _ = render_mouth_depth(track, None, bfm, backend="torch", preview=False)  # the track's own (zero) exp
    assert torch.equal(own, still)


def test_landmarks_come_from_the_reposed_mesh(bfm):
    v = posed_camera_vertices(bfm, small_track(1).coeffs)
    assert torch.isfinite(landmarks468(bfm, v)[:, list(MOUTH_OUTER_LIP)]).all()


def test_render_depth_node(pack, bfm):
    from joygen_pack.nodes.depth import JoyGenRenderDepth

    track = small_track()
    handle = SimpleNamespace(bfm=bfm)
    motion = SimpleNamespace(exp=torch.zeros(3, 64), fps=25.0)
    mouth, face = JoyGenRenderDepth().render(track, handle, "torch", motion=motion, batch_size=2)
    assert mouth.shape == (3, 256, 256, 3) and face.shape == (3, 256, 256, 3)
    assert (mouth[1] == 0).all() and mouth.max() > 0
    assert torch.equal(mouth[..., 0], mouth[..., 2])
    with pytest.raises(ValueError, match="Fit Length"):
        JoyGenRenderDepth().render(track, handle, "auto", motion=SimpleNamespace(exp=torch.zeros(5, 64), fps=25.0))
    with pytest.raises(ValueError, match="BFM"):
        JoyGenRenderDepth().render(track, SimpleNamespace(), "auto")


def test_bad_frames_give_black_maps(bfm):
    """NaN expressions, an empty face box, a box reaching outside the frame: no crash, no NaN."""
    track = small_track(4)
    track.detected[1] = True
    track.align[1] = track.align[0]
    track.box[2] = torch.tensor([100, 100, 100, 150])  # zero width
    track.box[3] = torch.tensor([-60, 20, 200, 230])  # partly outside the 256x256 frame
    exp = torch.zeros(4, 64)
    exp[1] = float("nan")
    mouth, face = render_mouth_depth(track, exp, bfm, backend="torch")
    assert torch.isfinite(mouth).all() and torch.isfinite(face).all()
    assert (mouth[1] == 0).all() and (face[1] == 0).all()
    assert (mouth[2] == 0).all() and face[2].max() == 1.0
    assert mouth[3].max() > 0 and (mouth[3, :128] == 0).all()
