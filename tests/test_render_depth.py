"""Depth normalisation (official formula and uint8 truncation) and the mouth-only map."""

from __future__ import annotations

import numpy as np
import torch

from joygen_core.render.depth import (
    MOUTH_OUTER_LIP,
    crop_box,
    mouth_depth_from_crops,
    mouth_depth_from_maps,
    normalise_depth,
)
from joygen_core.render.raster import rasterize_depth


def official_normalise(depth: np.ndarray) -> np.ndarray:
    """The official numpy code path, for one float32 map (``get_depth_lm468_edit_exp``)."""
    depth = depth.copy()
    ind = np.where(depth > 0)
    dmax, dmin = np.max(depth[ind]), np.min(depth[ind])
    depth[ind] = 255 - (depth[ind] - dmin) / (dmax - dmin + 1e-8) * 255
    return np.array(depth, np.uint8)


def test_normalise_matches_official_formula():
    g = torch.Generator().manual_seed(0)
    d = 9.0 + 2.0 * torch.rand(4, 40, 40, generator=g)
    cov = torch.rand(4, 40, 40, generator=g) > 0.3
    d = torch.where(cov, d, torch.zeros_like(d))
    out = normalise_depth(d, cov)
    for b in range(4):
        ref = official_normalise(d[b].numpy())
        assert np.array_equal(out[b].numpy().astype(np.uint8), ref)
    assert out.dtype == torch.float32
    flat = out.flatten(1)
    assert (flat.amax(1) == 255).all()  # the nearest covered pixel
    assert (out[~cov] == 0).all()


def test_normalise_known_values_and_edge_cases():
    d = torch.zeros(3, 4, 4)
    d[0, 0, :3] = torch.tensor([10.0, 10.5, 11.0])  # near 255, middle 255-127.5 -> 127 (truncated), far 0
    d[1, 2, 2] = 7.0  # a single covered pixel: 255
    cov = d > 0
    out = normalise_depth(d, cov)
    assert out[0, 0, :3].tolist() == [255.0, 127.0, 0.0]
    assert out[1, 2, 2] == 255 and out[1].sum() == 255
    assert (out[2] == 0).all()  # nothing covered: all black, no NaN
    assert torch.isfinite(out).all()


def test_rendered_depth_near_is_bright():
    """A tilted quad: normalised depth decreases from the near edge (255) to the far edge (about 0)."""
    k = 1015.0 / 112.0
    v = torch.tensor([[[-0.5, -0.5, 8.0], [0.5, -0.5, 12.0], [0.5, 0.5, 12.0], [-0.5, 0.5, 8.0]]])
    v[..., :2] *= v[..., 2:] / k * 0.8  # keep the quad inside the frame
    depth, cov = rasterize_depth(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), size=64, backend="torch")
    n = normalise_depth(depth, cov)[0]
    row = n[32][cov[0, 32]]
    assert row[0] >= 250 and row[-1] <= 5
    assert (row[1:] <= row[:-1]).all()


def lip_ring(cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    a = torch.linspace(0, 2 * np.pi, len(MOUTH_OUTER_LIP) + 1)[:-1]
    return torch.stack([cx + rx * torch.cos(a), cy + ry * torch.sin(a)], -1)


def test_mouth_depth_zero_on_top_half_and_outside_the_lips():
    crop = np.full((200, 180), 200, np.uint8)
    lips = lip_ring(90.0, 150.0, 40.0, 20.0)[None]
    out = mouth_depth_from_crops([crop], lips)[0]
    assert out.shape == (256, 256)
    assert (out[:128] == 0).all()
    # the polygon scaled into 256x256; beyond a Lanczos support (4 px) outside it, zero
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    ex = ((xx + 0.5) * 180 / 256 - 90.5) / 40.0
    ey = ((yy + 0.5) * 200 / 256 - 150.5) / 20.0
    r = (ex**2 + ey**2).sqrt()
    assert (out[r > 1.25] == 0).all()
    assert (out[r < 0.7] == 200).all()  # a constant inside stays exactly that value
    assert out.max() <= 255


def test_mouth_depth_bad_boxes_and_points():
    crops = [np.zeros((0, 0), np.uint8), np.full((50, 50), 9, np.uint8)]
    lips = torch.stack([lip_ring(25, 40, 10, 5), torch.full((20, 2), float("nan"))])
    out = mouth_depth_from_crops(crops, lips)
    assert out.shape == (2, 256, 256) and (out == 0).all()


def test_crop_box_pads_outside_the_frame():
    maps = torch.arange(16.0).view(1, 4, 4)
    a = crop_box(maps, torch.tensor([[-1, 2, 3, 6]]))[0]
    assert a.shape == (4, 4)
    assert a[0].tolist() == [0, 8, 9, 10] and a[1].tolist() == [0, 12, 13, 14] and (a[2:] == 0).all()
    empty = crop_box(maps, torch.tensor([[3, 3, 1, 1]]))[0]
    assert empty.shape == (0, 0)


def test_mouth_from_maps_equals_the_full_frame_route():
    """The fast route (paste back over the lip polygon's rectangle only) gives the official route's bytes:
    full-frame PIL paste back, box crop, polygon, Lanczos; rendered face depth, boxes across the frame's borders,
    lips partly outside their box, an empty box and non-finite points included."""
    from test_face_align import random_fives

    from joygen_core.face.align import align_params, paste_back

    rng = np.random.default_rng(7)
    h, w, n = 360, 640, 10
    fives = random_fives(n, rng, size=(w, h))
    centre = rng.uniform((60, 60), (w - 60, h - 90), (n, 1, 2))
    centre[:3] = [[[10, 150]], [[600, 200]], [[300, 350]]]  # faces across the left, right and bottom borders
    fives = (fives - fives.mean(1, keepdims=True)) * 0.5 + centre
    al = align_params(torch.tensor(fives), (h, w))
    # a face-like depth: a rendered ellipsoid bump, normalised the official way
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    r2 = ((xx - 112) / 80) ** 2 + ((yy - 120) / 100) ** 2
    depth = torch.where(r2 < 1, 10 - 0.6 * (1 - r2).clamp(min=0).sqrt(), torch.zeros(()))
    depth = depth[None] + 0.01 * torch.rand(n, 224, 224, generator=torch.Generator().manual_seed(0)) * (depth > 0)
    norm = normalise_depth(depth, depth > 0)
    centre = torch.from_numpy(fives.mean(1))
    half = torch.from_numpy(np.abs(fives[:, 0] - fives[:, 1]).max(1) * 1.6 + 8)
    box = torch.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half],
                      1).long()
    box[3] = torch.tensor([50, 40, 50, 90])  # empty box
    side = (box[:, 2:] - box[:, :2]).double()
    ring = lip_ring(0.5, 0.72, 0.22, 0.1).double()
    lips = ring[None] * side[:, None] + torch.from_numpy(rng.normal(0, 2, (n, 20, 2)))
    lips[5] += torch.tensor([side[5, 0] * 0.35, 0.0])  # lips partly outside the box
    lips[6, 3] = float("nan")
    ours = mouth_depth_from_maps(norm, al, box, lips, (h, w))
    ref = mouth_depth_from_crops(crop_box(paste_back(norm.double(), al, (h, w), exact_uint8=True), box), lips)
    assert ours.shape == (n, 256, 256)
    assert torch.equal(ours, ref)
    assert (ref.flatten(1).amax(1) > 0).sum() >= n - 3  # most frames have a mouth to compare


def test_progress_reports_each_batch_with_a_depth_preview():
    from test_node_depth import small_bfm, small_track

    from joygen_core.render.depth import render_mouth_depth

    track = small_track(5)  # frame 1 has no face: 4 to render
    calls = []
    mouth, face = render_mouth_depth(track, torch.zeros(5, 64), small_bfm(), backend="torch", batch_size=3,
                                     progress=lambda d, t, preview=None: calls.append((d, t, preview)))
    assert [c[:2] for c in calls] == [(3, 4), (4, 4)]
    image = calls[-1][2]()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], (face[4] * 255).round().to(torch.uint8).numpy())
    _, none = render_mouth_depth(track, None, small_bfm(), backend="torch", preview=False,
                                 progress=lambda d, t, preview=None: calls.append((d, t, preview)))
    assert np.array_equal(calls[-1][2]()[..., 1], (mouth[4] * 255).round().to(torch.uint8).numpy())
