"""Blending the edited face back into the frame: JoyGen's parsing mask, or a landmark mask, then the paste.

Official (JoyGen ``utils/blending.py`` ``get_image``, from MuseTalk), per frame with face box
``(x, y, x1, y1)`` and the edited face already resized to the box (``cv2.resize``, bilinear):

1. region: a square around the box centre ``((x+x1)//2, (y+y1)//2)`` with half side
   ``s = int(max(w, h)//2 * 1.2)``, cut with PIL ``crop`` (zero outside the frame);
2. BiSeNet face mask of the region (``parsing.py``: 512x512, labels 1..13, PIL bicubic back);
3. the mask kept only inside the face box, and only in the region's rows ``>= int(2s * 0.5)``;
4. ``cv2.GaussianBlur`` with kernel ``int(0.1 * 2s // 2 * 2) + 1`` (sigma from the kernel size);
5. the face pasted into the region at the box, the region pasted into the frame through the mask
   (PIL ``paste`` with an 'L' mask: ``(dst*(255-m) + src*m) / 255`` in its integer rounding).

Reproduced on batched tensors in the same integer arithmetic: PIL's resizes and paste exactly,
cv2's uint8 Gaussian blur (fixed-point taps) exactly, cv2's bilinear face resize exactly as its
x86 SIMD path computes it (other builds round some pixels one grey level differently). Differences on
purpose: a frame without a face (``detected`` False) or with an empty box is passed through unchanged
(the official skips writing it, or fails on a 1-pixel box); no JPEG round trip.

Public API::

    blend_masks(parser, frames uint8 [B,H,W,3], boxes int [B,4], detected=None) -> float32 [B,H,W] 0..1
    landmark_mask(lm68 [B,68,2], boxes, frame_size=(H, W), feather=0.08, detected=None) -> float32 [B,H,W]
    paste_faces(frames, faces, boxes, masks, detected=None) -> uint8 [B,H,W,3]
    blend_regions(boxes) -> int64 [B,4]; blur_kernel_size(side) -> int    (the official geometry rules)

Pixels where the mask is 0, and every pixel outside the face box, come back bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .parsing import BiSeNet, _face_mask_of_windows, _gather

EXPAND = 1.2  # JoyGen get_image(expand=1.2); MuseTalk's own default is 1.5
UPPER_BOUNDARY_RATIO = 0.5
# Lower face for the landmark mask (iBUG 68 order): jaw 1..15 along the chin, then the nose base 35..31.
LOWER_FACE = (*range(1, 16), 35, 34, 33, 32, 31)


# ------------------------------------------------------------------ official geometry


def _boxes(boxes: torch.Tensor | np.ndarray | Sequence, n: int) -> torch.Tensor:
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes)
    if b.shape != (n, 4):
        raise ValueError(f"boxes must be [{n},4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    return b.detach().cpu().long()  # official: int(e) per coordinate


def _detected(detected: torch.Tensor | None, boxes: torch.Tensor) -> torch.Tensor:
    n = boxes.shape[0]
    det = torch.ones(n, dtype=torch.bool) if detected is None else torch.as_tensor(detected).cpu().bool()
    if det.shape != (n,):
        raise ValueError(f"detected must be [{n}] booleans, got {tuple(det.shape)}")
    return det & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # an empty box: nothing to paste


def blend_regions(boxes: torch.Tensor, expand: float = EXPAND) -> torch.Tensor:
    """Official square regions (x_s, y_s, x_e, y_e) int64 [B,4] around face boxes [B,4] (x1, y1, x2, y2).

    ``x_c = (x1+x2)//2``, ``s = int(max(w, h)//2 * expand)``, region ``[x_c-s, x_c+s)``; may reach
    outside the frame.
    """
    b = _boxes(boxes, torch.as_tensor(boxes).shape[0])
    x1, y1, x2, y2 = b.unbind(1)
    xc = torch.div(x1 + x2, 2, rounding_mode="floor")
    yc = torch.div(y1 + y2, 2, rounding_mode="floor")
    half = torch.div(torch.maximum(x2 - x1, y2 - y1), 2, rounding_mode="floor")
    s = torch.trunc(half.to(torch.float64) * expand).long()  # Python int(float): truncation
    return torch.stack([xc - s, yc - s, xc + s, yc + s], dim=1)


def blur_kernel_size(side: int) -> int:
    """Official Gaussian kernel for a region of ``side`` pixels: ``int(0.1 * side // 2 * 2) + 1`` (odd)."""
    return int(0.1 * side // 2 * 2) + 1


def _gaussian_taps(k: int) -> list[int]:
    """cv2's 8-bit Gaussian kernel of size k, sigma 0: taps in 1/256 (error-diffused, summing to 256).

    cv2.GaussianBlur on uint8 runs in fixed point (``GaussianBlurFixedPoint``): the double kernel of
    ``getGaussianKernel`` is rounded to 8 fractional bits from the outside in, carrying the error,
    and the centre tap takes the rest.
    """
    import cv2

    g = cv2.getGaussianKernel(k, 0, ktype=cv2.CV_64F)[:, 0]
    taps = [0] * k
    err = 0.0
    for i in range(k // 2):
        v = g[i] * 256 + err
        q = int(np.rint(v))  # cvRound
        err = v - q
        taps[i] = taps[k - 1 - i] = q
    taps[k // 2] = 256 - 2 * sum(taps[: k // 2])
    return taps


def _gaussian_matrix(sides: torch.Tensor, n: int) -> torch.Tensor:
    """cv2.GaussianBlur rows (official kernel size, BORDER_REFLECT_101) for lines of ``sides`` pixels.

    [B,n,n] float64 holding cv2's integer taps (1/256 units); rows past a side are 0.
    """
    sizes = [blur_kernel_size(int(s)) for s in sides.tolist()]
    kmax = max(sizes)
    taps = torch.zeros(len(sizes), kmax, dtype=torch.float64)
    for i, k in enumerate(sizes):  # one tiny 1-D kernel per frame, centred in kmax taps
        taps[i, (kmax - k) // 2:(kmax - k) // 2 + k] = torch.tensor(_gaussian_taps(k), dtype=torch.float64)
    side = sides.reshape(-1, 1, 1)
    i = torch.arange(n).reshape(1, -1, 1)
    p = i + torch.arange(kmax).reshape(1, 1, -1) - kmax // 2
    p = torch.where(p < 0, -p, p)
    p = torch.where(p >= side, 2 * (side - 1) - p, p)  # reflect-101 about the region edge
    p = torch.minimum(p.clamp(min=0), (side - 1).clamp(min=0))
    w = taps[:, None, :] * (i < side)
    return torch.zeros(len(sizes), n, n, dtype=torch.float64).scatter_add_(2, p.expand_as(w), w)


def _blur_regions(m: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """cv2.GaussianBlur(uint8 region, (k, k), 0) of masks [V,n,n] (integer values, float64) per region side."""
    g = _gaussian_matrix(sides, m.shape[-1]).to(m.device)
    # cv2 fixed point: uint8 x 8-bit taps per pass (exact sums), then (sum + 2**15) >> 16 to uint8
    return torch.floor((g @ (m @ g.transpose(1, 2)) + 32768.0) / 65536.0).clamp_(0, 255)


def _scatter_windows(out: torch.Tensor, idx: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                     hgt: torch.Tensor, wid: torch.Tensor, values: torch.Tensor) -> None:
    """Write windows values [V,nh,nw,(C)] into out[idx] [V,H,W,(C)] at (y0, x0), clipped to the frame."""
    h, w = out.shape[1:3]
    nh, nw = values.shape[1:3]
    dev = out.device
    rows = y0.to(dev)[:, None] + torch.arange(nh, device=dev)
    cols = x0.to(dev)[:, None] + torch.arange(nw, device=dev)
    ok_r = (rows >= 0) & (rows < h) & (torch.arange(nh, device=dev) < hgt.to(dev)[:, None])
    ok_c = (cols >= 0) & (cols < w) & (torch.arange(nw, device=dev) < wid.to(dev)[:, None])
    ok = ok_r[:, :, None] & ok_c[:, None, :]
    flat = (idx.to(dev)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
    out.view(out.shape[0] * h * w, *out.shape[3:])[flat[ok]] = values.to(dev, out.dtype)[ok]


# ------------------------------------------------------------------ masks


def blend_masks(parser: BiSeNet, frames: torch.Tensor, boxes: torch.Tensor, detected: torch.Tensor | None = None,
                *, batch_size: int = 8, expand: float = EXPAND,
                upper_boundary_ratio: float = UPPER_BOUNDARY_RATIO, max_elements: int = 1 << 25) -> torch.Tensor:
    """The official blending masks float32 [B,H,W] in 0..1 (multiples of 1/255), in frame coordinates.

    ``frames`` uint8 RGB [B,H,W,3]; ``boxes`` [B,4] the face boxes (x1, y1, x2, y2) the edited faces are
    pasted into; ``detected`` [B] bool (None: all). Frames without a face get an all-zero mask. The
    parser runs on its own device and dtype, ``batch_size`` frames at a time (fewer for regions so
    large that a chunk would exceed ``max_elements`` float64 values, 256 MB by default).
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"blend_masks wants uint8 RGB frames [B,H,W,3]; got {frames.dtype} {tuple(frames.shape)}")
    b, h, w = frames.shape[:3]
    box = _boxes(boxes, b)
    todo = _detected(detected, box).nonzero().squeeze(1)
    region = blend_regions(box, expand)
    out = torch.zeros(b, h, w, dtype=torch.float32, device=frames.device)
    if todo.numel() == 0:
        return out
    # a region costs 3*side**2 float64 values before its 512 resize: keep a chunk under max_elements
    side_max = int((region[todo, 2] - region[todo, 0]).max())
    batch_size = max(1, min(batch_size, max_elements // max(3 * side_max**2, 1)))
    for k in range(0, todo.numel(), batch_size):
        idx = todo[k:k + batch_size]
        x1, y1, x2, y2 = box[idx].unbind(1)
        xs, ys = region[idx, 0], region[idx, 1]
        side = region[idx, 2] - xs
        m = _face_mask_of_windows(parser, frames[idx], ys, xs, side, side)  # [V,n,n] 0..255, region coords
        dev = m.device
        n = m.shape[-1]
        ar = torch.arange(n)
        top = torch.maximum(y1 - ys, torch.trunc(side.double() * upper_boundary_ratio).long())  # lower half
        rows = (ar >= top[:, None]) & (ar < torch.minimum(y2 - ys, side)[:, None])  # ... of the face box
        cols = (ar >= (x1 - xs).clamp(min=0)[:, None]) & (ar < torch.minimum(x2 - xs, side)[:, None])
        m = m * (rows[:, :, None] & cols[:, None, :]).to(dev)
        m = _blur_regions(m, side)
        _scatter_windows(out, idx, ys, xs, side, side, (m / 255.0).float())
    return out


def landmark_mask(lm68: torch.Tensor, boxes: torch.Tensor, frame_size: tuple[int, int], feather: float = 0.08,
                  detected: torch.Tensor | None = None) -> torch.Tensor:
    """A feathered lower-face mask float32 [B,H,W] in 0..1 from 68 landmarks (no face parser needed).

    The polygon of jaw points 1..15 and the nose base 35..31 (``lm68`` [B,68,2] x, y frame pixels),
    intersected with the face box. The mask rises from 0 on the polygon and box edges to 1 at
    ``feather * box height`` inside (smoothstep), so the paste has no seam and never leaves the box.
    Computed on ``lm68``'s device; frames without a face or with non-finite landmarks get zeros.
    """
    h, w = int(frame_size[0]), int(frame_size[1])
    lm = torch.as_tensor(lm68).detach()
    dev = lm.device
    lm = lm.to(torch.float32)
    b = lm.shape[0]
    if lm.shape != (b, 68, 2):
        raise ValueError(f"lm68 must be [B,68,2], got {tuple(lm.shape)}")
    box = _boxes(boxes, b)
    det = _detected(detected, box) & torch.isfinite(lm).flatten(1).all(1).cpu()
    out = torch.zeros(b, h, w, dtype=torch.float32, device=dev)
    idx = det.nonzero().squeeze(1)
    if idx.numel() == 0:
        return out
    poly = lm[idx.to(dev)][:, list(LOWER_FACE)]
    x1, y1, x2, y2 = box[idx].unbind(1)
    # work over the polygon's bounding box inside the face box: the mask is 0 elsewhere
    lo = poly.amin(1).floor().cpu().long()
    hi = poly.amax(1).ceil().cpu().long() + 1
    ox, oy = torch.maximum(lo[:, 0], x1), torch.maximum(lo[:, 1], y1)
    ww = (torch.minimum(hi[:, 0], x2) - ox).clamp(min=0)
    wh = (torch.minimum(hi[:, 1], y2) - oy).clamp(min=0)
    nh, nw = int(wh.max()), int(ww.max())
    if nh == 0 or nw == 0:
        return out
    py = (oy[:, None] + torch.arange(nh)).to(dev, torch.float32)[:, :, None]  # pixel centres at integers
    px = (ox[:, None] + torch.arange(nw)).to(dev, torch.float32)[:, None, :]
    inside = torch.zeros(idx.numel(), nh, nw, dtype=torch.bool, device=dev)
    dist2 = torch.full((idx.numel(), nh, nw), float("inf"), device=dev)
    n_edges = poly.shape[1]
    for e in range(n_edges):  # edges one at a time: memory [V,nh,nw]
        ax, ay = poly[:, e, 0, None, None], poly[:, e, 1, None, None]
        bx, by = poly[:, (e + 1) % n_edges, 0, None, None], poly[:, (e + 1) % n_edges, 1, None, None]
        dx, dy = bx - ax, by - ay
        rx, ry = px - ax, py - ay  # [V,1,nw], [V,nh,1]
        cross = (ay > py) != (by > py)  # even-odd rule, per row
        xint = ax + ry * dx / torch.where(dy == 0, torch.ones_like(dy), dy)
        inside ^= cross & (px < xint)
        t = ((rx * dx + ry * dy) / (dx * dx + dy * dy).clamp(min=1e-12)).clamp_(0, 1)
        ex, ey = rx - t * dx, ry - t * dy
        dist2 = torch.minimum(dist2, ex * ex + ey * ey)

    def to(v: torch.Tensor) -> torch.Tensor:
        return v.to(dev, torch.float32)[:, None, None]

    edge = torch.minimum(torch.minimum(px - to(x1), to(x2 - 1) - px), torch.minimum(py - to(y1), to(y2 - 1) - py))
    ramp = to((feather * (y2 - y1).float()).clamp(min=1.0))
    t = (torch.minimum(dist2.sqrt_() * inside, edge) / ramp).clamp_(0, 1)
    _scatter_windows(out, idx, oy, ox, wh, ww, t * t * (3 - 2 * t))
    return out


# ------------------------------------------------------------------ paste


def _cv2_linear_taps(in_size: int, out_size: torch.Tensor, n_out: int, clamp_frac: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.resize INTER_LINEAR taps along one axis, in -> out per frame: (i0, i1, w0, w1) int64 [B,n_out].

    cv2 (``resizeGeneric``): ``f = (float)((o + 0.5) * scale - 0.5)``, ``s = floor(f)``, 11-bit weights
    ``round((1 - f') * 2048)``, ``round(f' * 2048)``. Along x the fraction is zeroed past either edge
    (``clamp_frac``); along y it is kept and the two source rows are clamped into the image.
    """
    out_f = out_size.to(torch.float64).reshape(-1, 1)
    scale = 1.0 / (out_f / in_size)  # cv2: scale_x = 1 / ((double)dsize / ssize)
    f = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    s = torch.floor(f)
    f = f - s
    s = s.long()
    if clamp_frac:
        low, high = s < 0, s >= in_size - 1
        f = torch.where(low | high, torch.zeros_like(f), f)
        s = torch.where(low, 0, torch.where(high, in_size - 1, s))
    w1 = torch.round(f * 2048).long()  # saturate_cast<short>(cbuf * INTER_RESIZE_COEF_SCALE): round half even
    w0 = torch.round((1 - f) * 2048).long()
    return s.clamp(0, in_size - 1), (s + 1).clamp(0, in_size - 1), w0, w1


def _resize_faces_cv2(faces: torch.Tensor, hgt: torch.Tensor, wid: torch.Tensor) -> torch.Tensor:
    """faces uint8 [V,fh,fw,3] -> [V,max h,max w,3] uint8, each ``cv2.resize(face, (wid, hgt))`` (bilinear).

    Bit-exact with cv2 4.x/5.x on x86: exact horizontal sums in 11-bit fixed point, then its SIMD
    vertical step ``((b0*(S0>>4))>>16 + (b1*(S1>>4))>>16 + 2) >> 2``.
    """
    v, fh, fw = faces.shape[:3]
    dev = faces.device
    nh, nw = int(hgt.max()), int(wid.max())
    x0, x1, a0, a1 = (t.to(dev) for t in _cv2_linear_taps(fw, wid, nw, clamp_frac=True))
    y0, y1, b0, b1 = (t.to(dev) for t in _cv2_linear_taps(fh, hgt, nh, clamp_frac=False))
    # int32 is exact: horizontal sums <= 255 * 2048, vertical products <= 2048 * (2**20 >> 4)
    img = faces.permute(0, 3, 1, 2).to(torch.int32)  # [V,3,fh,fw]
    a0, a1, b0, b1 = (t.to(torch.int32) for t in (a0, a1, b0, b1))

    def cols(i: torch.Tensor) -> torch.Tensor:
        return img.gather(3, i[:, None, None, :].expand(v, 3, fh, nw))

    hs = cols(x0) * a0[:, None, None, :] + cols(x1) * a1[:, None, None, :]  # [V,3,fh,nw]

    def rows(i: torch.Tensor) -> torch.Tensor:
        return hs.gather(2, i[:, None, :, None].expand(v, 3, nh, nw))

    res = ((b0[:, None, :, None] * (rows(y0) >> 4)) >> 16) + ((b1[:, None, :, None] * (rows(y1) >> 4)) >> 16)
    res = ((res + 2) >> 2).clamp_(0, 255)
    return res.permute(0, 2, 3, 1).to(torch.uint8)


def paste_faces(frames: torch.Tensor, faces: torch.Tensor | Sequence, boxes: torch.Tensor, masks: torch.Tensor,
                detected: torch.Tensor | None = None, *, batch_size: int = 16,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Paste edited faces into the frames through blending masks -> new uint8 frames [B,H,W,3].

    ``faces``: a uint8 tensor [B,h,w,3] (e.g. the 256x256 UNet output) resized to each box as the
    official ``cv2.resize(face, (x2-x1, y2-y1))``, or a sequence of B uint8 arrays already of each
    box's size [y2-y1, x2-x1, 3]. ``masks`` float [B,H,W] in 0..1 (``blend_masks`` or
    ``landmark_mask``), applied with PIL's 'L' paste arithmetic on ``round(mask * 255)``, or uint8 [B,H,W]:
    those 'L' values themselves (the cached form: a quarter of the memory, the same result). Only pixels
    inside the box (and inside the frame) can change; undetected frames come back unchanged. Runs on
    the frames' device, ``batch_size`` frames at a time. ``out``: a uint8 tensor shaped like ``frames`` to write
    the result into (``frames`` itself pastes in place); by default a copy of ``frames``.

    On the CPU the blend touches only each face box: the box of the frame, of the mask and of the face are views,
    combined in uint16 (PIL's sums fit: at most 255 * 255 + 128 + 254), so the cost follows the boxes, not the
    frames. Elsewhere (CUDA) the batch goes through gathered windows; both give the same bytes.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"paste_faces wants uint8 RGB frames [B,H,W,3]; got {frames.dtype} {tuple(frames.shape)}")
    b, h, w = frames.shape[:3]
    box = _boxes(boxes, b)
    masks = torch.as_tensor(masks)
    if masks.shape != (b, h, w) or not (masks.is_floating_point() or masks.dtype == torch.uint8):
        raise ValueError(f"masks must be float [{b},{h},{w}] in 0..1 (or uint8 0..255) like the frames, got "
                         f"{masks.dtype} {tuple(masks.shape)}")
    listed = not isinstance(faces, torch.Tensor) and not (isinstance(faces, np.ndarray) and faces.ndim == 4)
    if listed:
        if len(faces) != b:
            raise ValueError(f"faces has {len(faces)} entries for {b} frames")
    else:
        faces = torch.as_tensor(faces)
        if faces.dtype != torch.uint8 or faces.ndim != 4 or faces.shape[0] != b or faces.shape[-1] != 3:
            raise ValueError(f"faces must be uint8 [{b},h,w,3]; got {faces.dtype} {tuple(faces.shape)}")
    todo = _detected(detected, box).nonzero().squeeze(1)
    if out is None:
        out = frames.clone()
    else:
        if out.shape != frames.shape or out.dtype != torch.uint8 or out.device != frames.device:
            raise ValueError(f"out must be uint8 {tuple(frames.shape)} on {frames.device}; got {out.dtype} "
                             f"{tuple(out.shape)} on {out.device}")
        if out.data_ptr() != frames.data_ptr():
            out.copy_(frames)
    if frames.device.type == "cpu" and out.is_contiguous():
        _paste_on_views(out, faces, box, masks, todo, listed, batch_size)
    else:
        _paste_batched(out, frames, faces, box, masks, todo, listed, batch_size)
    return out


def _paste_batched(out: torch.Tensor, frames: torch.Tensor, faces, box: torch.Tensor, masks: torch.Tensor,
                   todo: torch.Tensor, listed: bool, batch_size: int) -> None:
    """``paste_faces`` on any device, ``batch_size`` frames at a time through gathered and scattered windows."""
    dev = frames.device
    for k in range(0, todo.numel(), batch_size):
        idx = todo[k:k + batch_size]
        x1, y1, x2, y2 = box[idx].unbind(1)
        bw, bh = x2 - x1, y2 - y1
        nh, nw = int(bh.max()), int(bw.max())
        if listed:
            src = torch.zeros(idx.numel(), nh, nw, 3, dtype=torch.uint8, device=dev)
            for j, i in enumerate(idx.tolist()):  # a list of per-frame sizes: placing them is a copy each
                f = _listed_face(faces, i, int(bh[j]), int(bw[j]))
                src[j, :f.shape[0], :f.shape[1]] = f.to(dev)
        else:
            src = _resize_faces_cv2(faces[idx].to(dev), bh, bw)
        dst = _gather(frames[idx], y1, x1, bh, bw, nh, nw).to(torch.int32)
        if masks.dtype == torch.uint8:
            m = _gather(masks[idx].to(dev)[..., None], y1, x1, bh, bw, nh, nw).to(torch.int32)
        else:
            m = _gather(masks[idx].to(dev, torch.float32)[..., None], y1, x1, bh, bw, nh, nw)
            m = torch.round(m * 255.0).clamp_(0, 255).to(torch.int32)
        t = dst * (255 - m) + src.to(torch.int32) * m + 128  # PIL paste_mask_L: DIV255(in1*(255-m) + in2*m)
        res = ((t >> 8) + t) >> 8
        res = torch.where(m == 0, dst, res)
        _scatter_windows(out, idx, y1, x1, bh, bw, res.to(torch.uint8))


def _listed_face(faces: Sequence, i: int, bh: int, bw: int) -> torch.Tensor:
    """Face ``i`` of a list, checked to be uint8 of its box size [bh,bw,3]."""
    f = torch.as_tensor(np.ascontiguousarray(faces[i]) if isinstance(faces[i], np.ndarray) else faces[i])
    if f.dtype != torch.uint8 or tuple(f.shape) != (bh, bw, 3):
        raise ValueError(f"face {i} must be uint8 [{bh},{bw},3] (its box size); got {f.dtype} {tuple(f.shape)}")
    return f


def _paste_on_views(out: torch.Tensor, faces, box: torch.Tensor, masks: torch.Tensor, todo: torch.Tensor,
                    listed: bool, batch_size: int) -> None:
    """``paste_faces`` on the CPU, in place in ``out``: each frame's box (clipped to the frame) blended on views."""
    h, w = out.shape[1:3]
    frames_np = out.numpy()
    for k in range(0, todo.numel(), batch_size):
        idx = todo[k:k + batch_size]
        x1, y1, x2, y2 = box[idx].unbind(1)
        bw, bh = x2 - x1, y2 - y1
        if not listed:  # the batch's faces resized to their boxes at once
            src_all = _resize_faces_cv2(faces[idx].cpu(), bh, bw).numpy()
        for j, (i, fx1, fy1, fx2, fy2) in enumerate(zip(idx.tolist(), *(v.tolist() for v in (x1, y1, x2, y2)))):
            src = _listed_face(faces, i, fy2 - fy1, fx2 - fx1).cpu().numpy() if listed else src_all[j]
            cy1, cy2, cx1, cx2 = max(fy1, 0), min(fy2, h), max(fx1, 0), min(fx2, w)
            if cy2 <= cy1 or cx2 <= cx1:
                continue
            m = masks[i, cy1:cy2, cx1:cx2].cpu()
            if m.dtype != torch.uint8:  # PIL 'L' values of a float mask, as the batched path rounds them
                m = torch.round(m.to(torch.float32) * 255.0).clamp_(0, 255).to(torch.uint8)
            m = m.numpy().astype(np.uint16)[..., None]
            dst = frames_np[i, cy1:cy2, cx1:cx2]  # a view: written in place
            face = src[cy1 - fy1:cy2 - fy1, cx1 - fx1:cx2 - fx1]
            # PIL paste_mask_L: DIV255(dst*(255-m) + src*m); with m = 0 it gives dst back exactly
            t = dst * (255 - m)
            t += face * m
            t += 128
            t += t >> 8
            t >>= 8
            dst[...] = t
