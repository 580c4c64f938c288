"""Blending: the official geometry rules, PIL/cv2 arithmetic, frames left alone where they must be.

The reference is a plain per-frame PIL + cv2 re-implementation of JoyGen's ``utils/blending.py``
``get_image`` (written here from its description, on RGB arrays), fed by the same parser.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from joygen_core.edit.blend import (
    _blur_regions,
    _detected,
    _paste_batched,
    _resize_faces_cv2,
    blend_masks,
    blend_regions,
    blur_kernel_size,
    landmark_mask,
    paste_faces,
)
from joygen_core.edit.parsing import load_face_parser

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class Stand(torch.nn.Module):
    """A stand-in parser: label 1 (skin) where ``rule`` holds on the normalised input, else 0."""

    def __init__(self, rule: str = "bright") -> None:
        super().__init__()
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        face = x[:, 0] > 0 if self.rule == "bright" else torch.ones_like(x[:, 0], dtype=torch.bool)
        logits = torch.zeros(x.shape[0], 19, *x.shape[2:])
        logits[:, 1] = torch.where(face, 1.0, -1.0)
        return logits


def reference_get_image(frame: np.ndarray, face: np.ndarray, box, model) -> tuple[np.ndarray, np.ndarray, list]:
    """Official get_image(expand=1.2, upper_boundary_ratio=0.5) on one RGB frame -> (frame, region mask, region)."""
    body = Image.fromarray(frame)
    x, y, x1, y1 = (int(v) for v in box)
    xc, yc = (x + x1) // 2, (y + y1) // 2
    s = int(max(x1 - x, y1 - y) // 2 * 1.2)
    region = [xc - s, yc - s, xc + s, yc + s]
    large = body.crop(region)
    small = large.resize((512, 512), Image.BILINEAR)
    t = (torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255 - MEAN) / STD
    with torch.no_grad():
        labels = model(t[None]).argmax(1)[0].numpy()
    labels[labels > 13] = 0
    labels[labels >= 1] = 255
    seg = Image.fromarray(labels.astype(np.uint8)).resize(large.size)
    rel = (x - region[0], y - region[1], x1 - region[0], y1 - region[1])
    mask = Image.new("L", large.size, 0)
    mask.paste(seg.crop(rel), rel)
    w, h = mask.size
    top = int(h * 0.5)
    lower = Image.new("L", large.size, 0)
    lower.paste(mask.crop((0, top, w, h)), (0, top))
    k = int(0.1 * large.size[0] // 2 * 2) + 1
    blurred = cv2.GaussianBlur(np.array(lower), (k, k), 0)
    large.paste(Image.fromarray(face), rel)
    body.paste(large, region[:2], Image.fromarray(blurred))
    return np.array(body), blurred, region


def region_to_frame(mask: np.ndarray, region, shape) -> np.ndarray:
    """A region-sized mask placed in a frame of ``shape`` (H, W) at the region's corner, clipped."""
    out = np.zeros(shape, mask.dtype)
    n = mask.shape[0]
    y0, x0 = max(region[1], 0), max(region[0], 0)
    y1, x1 = min(region[1] + n, shape[0]), min(region[0] + n, shape[1])
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = mask[y0 - region[1]:y1 - region[1], x0 - region[0]:x1 - region[0]]
    return out


def smooth_faces(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 256, (n * size, size, 3), dtype=np.uint8)
    return torch.from_numpy(cv2.GaussianBlur(f, (9, 9), 0).reshape(n, size, size, 3))


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    from factory import make_models_folder

    root = make_models_folder(tmp_path_factory.mktemp("parsing"), only=["parsing"])
    return load_face_parser(root / "face-parse-bisent/79999_iter.pth")


# ------------------------------------------------------------------ the official geometry


def test_region_rule():
    boxes = torch.tensor([[10, 20, 110, 220], [0, 0, 5, 5], [3, 4, 10, 30], [-7, -3, 50, 60], [-9, -5, -2, 0]])
    expected = torch.tensor([[-60, 0, 180, 240],  # s = int(100 * 1.2)
                             [0, 0, 4, 4],  # s = int(2 * 1.2) = 2: the box pokes out of its region
                             [-9, 2, 21, 32],  # s = int(13 * 1.2) = int(15.6)
                             [-16, -9, 58, 65],  # centre (43 // 2, 57 // 2), s = int(31 * 1.2)
                             [-9, -6, -3, 0]])  # floor division of negative centres, as Python's //
    assert torch.equal(blend_regions(boxes), expected)
    assert torch.equal(blend_regions(boxes[:1], expand=1.5), torch.tensor([[-90, -30, 210, 270]]))


@pytest.mark.parametrize("side, k", [(180, 19), (108, 11), (70, 7), (60, 7), (59, 5), (30, 3), (20, 3), (19, 1),
                                     (240, 25), (2, 1)])
def test_blur_kernel_size(side, k):
    assert blur_kernel_size(side) == k


def test_blur_is_cv2_to_the_pixel():
    rng = np.random.default_rng(0)
    sides = [12, 61, 181, 230]
    n = max(sides)
    masks = np.zeros((len(sides), n, n), np.uint8)
    for i, s in enumerate(sides):
        masks[i, :s, :s] = cv2.GaussianBlur((rng.random((s, s)) > 0.6).astype(np.uint8) * 255, (3, 3), 0)
    ours = _blur_regions(torch.from_numpy(masks).double(), torch.tensor(sides)).numpy()
    for i, s in enumerate(sides):
        ref = cv2.GaussianBlur(masks[i, :s, :s], (blur_kernel_size(s),) * 2, 0)
        np.testing.assert_array_equal(ours[i, :s, :s], ref)
        assert not ours[i, s:].any() and not ours[i, :, s:].any()


def test_mask_is_the_box_lower_half_blurred():
    """Everything parses as face: the mask is exactly the box rows below the region centre, blurred."""
    frame = torch.full((1, 200, 200, 3), 255, dtype=torch.uint8)
    box = torch.tensor([[60, 40, 140, 160]])  # centre (100, 100), s = 72: region (28, 28, 172, 172)
    mask = blend_masks(Stand("all"), frame, box)[0].numpy()
    lower = np.zeros((144, 144), np.uint8)
    lower[72:132, 32:112] = 255  # rows from int(144 * 0.5) to the box bottom, columns of the box
    ref = cv2.GaussianBlur(lower, (15, 15), 0)
    np.testing.assert_array_equal(np.round(mask * 255), region_to_frame(ref, (28, 28), (200, 200)))
    assert mask[130, 100] == 1.0 and not mask[:100 - 7].any()  # nothing above the centre minus the blur radius
    assert not mask[:, : 60 - 7].any() and not mask[:, 140 + 7:].any()


def test_partly_outside_frames_match_pil(face_frames):
    """Regions cut by every frame edge (PIL crop zero-fill), and a box entirely outside the frame."""
    frames = torch.from_numpy(np.ascontiguousarray(face_frames[:4, :160, 100:300]))  # [4,160,200,3]
    boxes = torch.tensor([[-30, -20, 60, 90], [150, 100, 230, 190], [60, 30, 140, 130], [-100, -90, -20, -10]])
    faces = smooth_faces(4)
    model = Stand("bright")
    masks = blend_masks(model, frames, boxes)
    out = paste_faces(frames, faces, boxes, masks)
    for i in range(4):
        x1, y1, x2, y2 = boxes[i].tolist()
        face = cv2.resize(faces[i].numpy(), (x2 - x1, y2 - y1))
        ref, ref_mask, region = reference_get_image(frames[i].numpy(), face, boxes[i], model)
        np.testing.assert_array_equal(np.round(masks[i].numpy() * 255), region_to_frame(ref_mask, region, (160, 200)))
        np.testing.assert_array_equal(out[i].numpy(), ref)
    assert masks[0].any() and masks[1].any() and not masks[3].any()
    as_l = (masks * 255).round().to(torch.uint8)  # the pipeline's cached form: the 'L' values themselves
    assert torch.equal(paste_faces(frames, faces, boxes, as_l), out)
    assert torch.equal(out[3], frames[3])


def test_real_face_matches_official_blend(parser, face_frames):
    """One real face frame, the BiSeNet file (random weights), a 256x256 edited face resized to the box."""
    frame = torch.from_numpy(face_frames[0].copy())[None]
    box = torch.tensor([[40, 25, 120, 115]])  # the man's face
    face = smooth_faces(1, seed=3)
    masks = blend_masks(parser, frame, box)
    out = paste_faces(frame, face, box, masks)[0].numpy().astype(int)
    ref, ref_mask, region = reference_get_image(frame[0].numpy(), cv2.resize(face[0].numpy(), (80, 90)), box[0],
                                                parser)
    mask_diff = np.abs(np.round(masks[0].numpy() * 255) - region_to_frame(ref_mask, region, (350, 350)))
    diff = np.abs(out - ref)
    assert 0.05 < (ref_mask > 0).mean() < 0.5  # a mask with edges, not all or nothing
    assert (mask_diff <= 1).mean() > 0.999 and (diff <= 1).mean() > 0.999
    assert (diff > 0).mean() < 0.01  # bit-exact where the arithmetic agrees (all of it, on this machine)


# ------------------------------------------------------------------ what must stay untouched


def test_zero_mask_and_undetected_frames_are_untouched(face_frames):
    frames = torch.from_numpy(face_frames[:3, :200, :200].copy())
    boxes = torch.tensor([[40, 25, 120, 115], [40, 25, 120, 115], [90, 60, 90, 140]])  # the last box is empty
    detected = torch.tensor([True, False, True])
    masks = blend_masks(Stand("bright"), frames, boxes, detected)
    assert not masks[1].any() and not masks[2].any()
    out = paste_faces(frames, smooth_faces(3), boxes, masks, detected)
    assert torch.equal(out[1], frames[1]) and torch.equal(out[2], frames[2])
    zero = masks[0] == 0
    assert torch.equal(out[0][zero], frames[0][zero])
    outside = torch.ones(200, 200, dtype=torch.bool)
    outside[25:115, 40:120] = False
    assert torch.equal(out[0][outside], frames[0][outside])
    assert (out[0] != frames[0]).any(-1).float().mean() > 0.02  # the face did go in

    # an undetected frame keeps its pixels even with a non-zero mask handed in
    out = paste_faces(frames, smooth_faces(3), boxes, torch.ones(3, 200, 200), detected)
    assert torch.equal(out[1], frames[1])


def test_paste_is_pil_paste_with_l_mask():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    m8 = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    out = paste_faces(torch.from_numpy(frame), [face], torch.tensor([[0, 0, 80, 64]]),
                      torch.from_numpy(m8).float()[None] / 255)
    body = Image.fromarray(frame[0])
    body.paste(Image.fromarray(face), (0, 0), Image.fromarray(m8))
    np.testing.assert_array_equal(out[0].numpy(), np.asarray(body))


def test_face_resize_is_cv2_bilinear():
    faces = smooth_faces(4, seed=5)
    sizes = [(190, 140), (300, 301), (97, 333), (128, 128)]  # (h, w): down, up, mixed, exactly half
    res = _resize_faces_cv2(faces, torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes]))
    for i, (h, w) in enumerate(sizes):
        ref = cv2.resize(faces[i].numpy(), (w, h)).astype(int)
        d = np.abs(res[i, :h, :w].numpy().astype(int) - ref)
        assert d.max() <= 1 and (d == 0).mean() > 0.99, (h, w)


def test_faces_as_box_sized_list_or_tensor(face_frames):
    frames = torch.from_numpy(face_frames[:2, :200, :200].copy())
    boxes = torch.tensor([[40, 25, 120, 115], [-10, 50, 70, 150]])
    faces = smooth_faces(2)
    masks = torch.rand(2, 200, 200)
    listed = [cv2.resize(faces[i].numpy(), (80, h)) for i, h in enumerate((90, 100))]
    assert torch.equal(paste_faces(frames, listed, boxes, masks), paste_faces(frames, faces, boxes, masks))
    with pytest.raises(ValueError, match="box size"):
        paste_faces(frames, [listed[1], listed[0]], boxes, masks)
    with pytest.raises(ValueError, match="masks must be"):
        paste_faces(frames, faces, boxes, masks[:, :100])


def test_cpu_paste_on_views_equals_the_batched_windows(face_frames):
    """The CPU path (box views, uint16) and the any-device path (gathered windows, int32) give the same bytes:
    boxes across every border and off the frame, an empty box, an undetected frame, float and uint8 masks,
    faces resized or listed; and ``out=frames`` pastes in place."""
    n, h, w = 7, 180, 240
    frames = torch.from_numpy(np.ascontiguousarray(face_frames[np.arange(n) % len(face_frames), :h, :w]))
    boxes = torch.tensor([[40, 25, 130, 125], [-30, 10, 60, 110], [170, 100, 270, 210], [20, -40, 120, 50],
                          [90, 60, 90, 140], [300, 20, 360, 80], [60, 30, 181, 170]])
    detected = torch.tensor([True, True, True, True, True, True, False])
    rng = np.random.default_rng(3)
    soft = cv2.GaussianBlur(rng.random((n * h, w)).astype(np.float32), (21, 21), 0).reshape(n, h, w)
    masks = torch.from_numpy(np.clip((soft - 0.45) * 8, 0, 1))
    faces = smooth_faces(n, seed=2)
    bh, bw = (boxes[:, 3] - boxes[:, 1]).tolist(), (boxes[:, 2] - boxes[:, 0]).tolist()
    listed = [cv2.resize(faces[i].numpy(), (max(bw[i], 1), max(bh[i], 1)))[:bh[i], :bw[i]] for i in range(n)]
    todo = _detected(detected, boxes).nonzero().squeeze(1)
    for m in (masks, (masks * 255).round().to(torch.uint8)):
        for f in (faces, listed):
            ours = paste_faces(frames, f, boxes, m, detected, batch_size=3)
            ref = frames.clone()
            _paste_batched(ref, frames, f, boxes, m, todo, not isinstance(f, torch.Tensor), 3)
            assert torch.equal(ours, ref)
            assert (ours != frames).any()
            inplace = frames.clone()
            assert paste_faces(inplace, f, boxes, m, detected, out=inplace) is inplace
            assert torch.equal(inplace, ref)
    with pytest.raises(ValueError, match="out must be"):
        paste_faces(frames, faces, boxes, masks, out=frames[:, :10])


# ------------------------------------------------------------------ landmark mask


def synthetic_lm68() -> torch.Tensor:
    """Jaw on the lower half of an ellipse (centre (100, 90), radii 60 x 70), nose base at y = 100."""
    lm = torch.zeros(68, 2)
    theta = torch.pi - torch.arange(17) * torch.pi / 16
    lm[:17, 0] = 100 + 60 * torch.cos(theta)
    lm[:17, 1] = 90 + 70 * torch.sin(theta)
    lm[31:36, 0] = torch.linspace(85, 115, 5)
    lm[31:36, 1] = 100
    lm[17:31] = torch.tensor([100.0, 60.0])
    lm[36:] = torch.tensor([100.0, 130.0])
    return lm


def test_landmark_mask_lower_face_feathered():
    lm = synthetic_lm68()[None].repeat(3, 1, 1)
    lm[2, 5] = float("nan")
    boxes = torch.tensor([[40, 50, 161, 161]] * 3)
    m = landmark_mask(lm, boxes, (200, 220), feather=0.08, detected=torch.tensor([True, False, True]))
    assert m.shape == (3, 200, 220) and m.dtype == torch.float32
    assert not m[1].any() and not m[2].any()  # undetected, and landmarks that are not finite
    m = m[0]
    assert m.min() >= 0 and m.max() <= 1
    assert m[140, 100] == 1 and m[120, 70] == 1  # deep inside the polygon
    assert m[80, 100] == 0 and m[97, 100] == 0  # above the nose base
    assert m[150, 50] == 0  # outside the jaw
    outside = torch.ones_like(m, dtype=torch.bool)
    outside[50:161, 40:161] = False
    assert not m[outside].any() and not m[160].any()  # zero on the box's last row: no seam
    assert 0 < m[157, 100] < m[154, 100] < 1  # the feather ramps up inwards from the chin


def test_landmark_mask_paste_leaves_outside_untouched(face_frames):
    frames = torch.from_numpy(face_frames[:1, :200, :220].copy())
    boxes = torch.tensor([[40, 50, 161, 161]])
    m = landmark_mask(synthetic_lm68()[None], boxes, (200, 220))
    out = paste_faces(frames, smooth_faces(1), boxes, m)
    m = m[0]
    assert torch.equal(out[0][m == 0], frames[0][m == 0])
    assert (out[0][m == 1] != frames[0][m == 1]).any()
