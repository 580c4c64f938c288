"""Pillow's resize on batched tensors: PIL's integer results to the pixel, per-frame sizes in one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.pil_resize import pil_matrix, pil_taps, resize_rows


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    img[: shape[0] // 2] = 255 * (img[: shape[0] // 2] > 127)  # hard edges (overshoot) and noise
    return img


@pytest.mark.parametrize("src, dst, kind", [((183, 97), (512, 512), "bilinear"), ((700, 613), (512, 512), "bilinear"),
                                            ((512, 512), (150, 211), "bicubic"), ((512, 512), (640, 333), "bicubic"),
                                            ((350, 350), (519, 87), "bicubic")])
def test_resizes_match_pil_to_the_pixel(src, dst, kind):
    """The official PIL resizes (parsing: BILINEAR to 512, BICUBIC back; crops: BICUBIC), up and down."""
    img = _image(src, 0)
    filt = Image.BILINEAR if kind == "bilinear" else Image.BICUBIC
    ref = np.asarray(Image.fromarray(img).resize(dst[::-1], filt))
    my = pil_matrix(torch.tensor([src[0]]), torch.tensor([dst[0]]), dst[0], src[0], kind)
    mx = pil_matrix(torch.tensor([src[1]]), torch.tensor([dst[1]]), dst[1], src[1], kind)
    ours = resize_rows(torch.from_numpy(img).permute(2, 0, 1)[None], my, mx)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(ours.numpy().astype(np.uint8), ref)


def test_frames_of_different_sizes_in_one_batch():
    # each frame its own source size inside a shared buffer (zeros past it), its own output size
    srcs, dsts = [(120, 90), (77, 133)], [(64, 50), (101, 40)]
    buf = np.zeros((2, 133, 133, 3), np.uint8)
    imgs = [_image(s, i + 1) for i, s in enumerate(srcs)]
    for i, img in enumerate(imgs):
        buf[i, : img.shape[0], : img.shape[1]] = img
    hin, win = torch.tensor([s[0] for s in srcs]), torch.tensor([s[1] for s in srcs])
    hout, wout = torch.tensor([d[0] for d in dsts]), torch.tensor([d[1] for d in dsts])
    my = pil_matrix(hin, hout, 101, 133, "bicubic")
    mx = pil_matrix(win, wout, 50, 133, "bicubic")
    out = resize_rows(torch.from_numpy(buf).permute(0, 3, 1, 2), my, mx).permute(0, 2, 3, 1).numpy()
    for i, (img, (h, w)) in enumerate(zip(imgs, dsts)):
        ref = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        np.testing.assert_array_equal(out[i, :h, :w].astype(np.uint8), ref)
        assert not out[i, h:].any() and not out[i, :, w:].any()  # rows / columns past a frame's size stay 0


def test_float_taps_are_normalised_and_fixed_taps_are_pillow_integers():
    src, k = pil_taps(torch.tensor(300.0), torch.tensor([128.0]), torch.arange(-2, 130)[None], "bicubic", fixed=False)
    sums = k.sum(-1)[0]
    assert torch.allclose(sums[2:130], torch.ones(128, dtype=torch.float64), atol=1e-12)
    assert not sums[:2].any() and not sums[130:].any()  # outside [0, out_size): no weight
    assert (src[k != 0] >= 0).all() and (src[k != 0] < 300).all()
    _, fixed = pil_taps(torch.tensor(300.0), torch.tensor([128.0]), torch.arange(128)[None], "bicubic")
    assert torch.equal(fixed, fixed.round()) and (fixed.sum(-1) - 2**22).abs().max() <= 4  # 22-bit, ~1 each
