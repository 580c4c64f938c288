"""Five-point alignment: the official POS fit, PIL-exact batched crops, and the exact inverse paste."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.face.align import (
    LM3D_STD,
    align_params,
    crop_faces,
    crop_geometry,
    paste_back,
    paste_back_window,
)

# the astronaut's five points (x, y): eyes, nose, mouth corners (close to MTCNN's)
ASTRONAUT_FIVE = np.array([[183.7, 119.3], [242.2, 113.2], [217.7, 152.2], [195.1, 189.4], [241.1, 185.1]])


def pil_reference(img: np.ndarray, align: torch.Tensor) -> np.ndarray:
    """The official rule written with PIL directly: resize (bicubic) then crop with zero padding."""
    h0, w0 = img.shape[:2]
    ws, hs, left, up = (int(v) for v in crop_geometry(align[None], (h0, w0)))
    im = Image.fromarray(img).resize((ws, hs), resample=Image.Resampling.BICUBIC)
    return np.asarray(im.crop((left, up, left + 224, up + 224)))


def random_fives(n: int, rng: np.random.Generator, size=(512, 512)) -> np.ndarray:
    base = ASTRONAUT_FIVE - ASTRONAUT_FIVE.mean(0)
    out = []
    for _ in range(n):
        a = rng.uniform(-0.3, 0.3)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append(base @ rot.T * rng.uniform(0.25, 3.5) + rng.uniform(-80, max(size) + 80, 2)
                   + rng.normal(0, 1.5, (5, 2)))
    return np.stack(out)


def test_pos_fit_recovers_scale_and_translation():
    """Five points that are the template's x, y scaled by k and moved by t: s = 102 / k, t exact."""
    k, t = 150.0, np.array([210.0, 300.0])
    h = 400
    xy_up = LM3D_STD[:, :2].numpy() * k + t  # y-up coordinates
    five = np.stack([xy_up[:, 0], h - 1 - xy_up[:, 1]], 1)
    al = align_params(torch.tensor(five)[None], (h, 500))
    assert al.dtype == torch.float64
    assert torch.allclose(al[0], torch.tensor([102.0 / k, 210.0, 300.0], dtype=torch.float64), atol=1e-9)


def test_crop_geometry_truncates_toward_zero():
    al = torch.tensor([[0.5, 10.0, 390.0]], dtype=torch.float64)
    ws, hs, left, up = crop_geometry(al, (401, 301))  # frame H=401, W=301
    assert (int(ws), int(hs)) == (150, 200)  # int(150.5), int(200.5)
    # left = int(75 - 112 + (10 - 150.5) * .5) = int(-107.25) = -107 (toward zero, not floor)
    assert int(left) == -107
    assert int(up) == int(100 - 112 + (200.5 - 390) * 0.5)


def test_crop_matches_pil_on_astronaut(astronaut):
    al = align_params(torch.tensor(ASTRONAUT_FIVE)[None], astronaut.shape[:2])
    crop = crop_faces(torch.from_numpy(astronaut)[None], al)
    assert crop.shape == (1, 3, 224, 224) and crop.dtype == torch.float32
    ours = (crop[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(ours, pil_reference(astronaut, al[0]))


def test_crop_matches_pil_batched_scales_and_borders(astronaut):
    """Up- and down-scaling, crops hanging over every border, one batched call, PIL to the pixel."""
    rng = np.random.default_rng(3)
    img = np.ascontiguousarray(astronaut[40:340, 10:490])  # non-square 300x480
    fives = random_fives(24, rng, size=img.shape[:2][::-1])
    al = align_params(torch.tensor(fives), img.shape[:2])
    s = al[:, 0]
    assert (s < 0.6).any() and (s > 2.0).any()
    crops = crop_faces(torch.from_numpy(img)[None].expand(len(fives), -1, -1, -1), al)
    for i in range(len(fives)):
        ours = (crops[i].permute(1, 2, 0) * 255).round().byte().numpy()
        ref = pil_reference(img, al[i])
        assert np.array_equal(ours, ref), f"crop {i} (s={float(s[i]):.3f}) differs in {(ours != ref).sum()} values"


def test_paste_back_matches_pil_inverse():
    """Official inverse: the map placed at (left, up) in the resized canvas, resized to the frame (PIL)."""
    rng = np.random.default_rng(1)
    h, w = 300, 420
    fives = random_fives(8, rng, size=(w, h))
    al = align_params(torch.tensor(fives), (h, w))
    maps = torch.from_numpy(rng.integers(0, 256, (8, 224, 224)).astype(np.float32))
    out = paste_back(maps, al, (h, w), exact_uint8=True)
    ws, hs, left, up = crop_geometry(al, (h, w))
    for i in range(8):
        m = Image.fromarray(maps[i].numpy().astype(np.uint8))
        lf, u = int(left[i]), int(up[i])
        canvas = m.crop((-lf, -u, int(ws[i]) - lf, int(hs[i]) - u))
        ref = np.asarray(canvas.resize((w, h), resample=Image.Resampling.BICUBIC))
        assert np.array_equal(out[i].numpy().astype(np.uint8), ref), f"map {i}"
    smooth = paste_back(maps / 255, al, (h, w))
    assert smooth.dtype == torch.float32 and (smooth.abs() > 0).any()


def test_paste_back_window_is_the_full_paste_read_there():
    """Windows anywhere (inside, across the frame's borders, off the frame) equal the exact full-frame paste."""
    rng = np.random.default_rng(5)
    h, w = 270, 400
    fives = random_fives(12, rng, size=(w, h))
    al = align_params(torch.tensor(fives), (h, w))
    maps = torch.from_numpy(rng.integers(0, 256, (12, 224, 224)).astype(np.float64))
    maps[:, :, :30] = 0  # background, as a normalised depth map has
    full = paste_back(maps, al, (h, w), exact_uint8=True)
    origin = torch.from_numpy(np.stack([rng.integers(-60, w, 12), rng.integers(-60, h, 12)], 1))
    ny, nx = 90, 130
    win = paste_back_window(maps, al, (h, w), origin, (ny, nx))
    assert win.shape == (12, ny, nx)
    pad = torch.nn.functional.pad(full, (200, 200, 200, 200))
    for i, (x0, y0) in enumerate(origin.tolist()):
        ref = pad[i, 200 + y0:200 + y0 + ny, 200 + x0:200 + x0 + nx]
        assert torch.equal(win[i], ref.to(win.dtype)), f"window {i}"
    assert paste_back_window(maps, al, (h, w), origin, (0, 5)).shape == (12, 0, 5)


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5])
def test_crop_then_paste_returns_to_the_same_place(scale):
    """A bright blob cut out and pasted back peaks within one pixel of where it was."""
    h, w = 360, 480
    yy, xx = np.mgrid[0:h, 0:w]
    five = (ASTRONAUT_FIVE - ASTRONAUT_FIVE.mean(0)) * scale + np.array([250.0, 170.0])
    al = align_params(torch.tensor(five)[None], (h, w))
    peaks = five[[0, 2, 4]]  # blobs at eye, nose, mouth corner
    frame = np.zeros((h, w), np.float64)
    for px, py in peaks:
        frame += 255 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * (3.0 * scale) ** 2))
    img = np.repeat(np.clip(frame, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    crop = crop_faces(torch.from_numpy(img)[None], al)
    back = paste_back(crop[:, 0], al, (h, w))[0].numpy()
    for px, py in peaks:
        r = int(6 * scale) + 3
        y0, x0 = int(round(py)) - r, int(round(px)) - r
        win = back[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        cy, cx = np.unravel_index(win.argmax(), win.shape)
        assert abs(x0 + cx - px) <= 1.0 and abs(y0 + cy - py) <= 1.0, (px, py, x0 + cx, y0 + cy)
    # zero outside the crop's footprint in the frame (a few pixels of filter support aside)
    ws, hs, left, up = (int(v) for v in crop_geometry(al, (h, w)))
    x_lo, x_hi = left * w / ws - 4, (left + 224) * w / ws + 4
    y_lo, y_hi = up * h / hs - 4, (up + 224) * h / hs + 4
    outside = (xx < x_lo) | (xx > x_hi) | (yy < y_lo) | (yy > y_hi)
    assert outside.any() or scale > 2
    assert np.abs(back[outside]).max(initial=0) == 0


def test_crop_input_checks():
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(torch.zeros(1, 10, 10, 3), torch.zeros(1, 3))
    assert crop_faces(torch.zeros(0, 10, 10, 3, dtype=torch.uint8), torch.zeros(0, 3)).shape == (0, 3, 224, 224)
