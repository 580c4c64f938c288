"""Depth maps as JoyGen makes them: normalised face depth, pasted back into the frame, and the mouth-only map.

Official (JoyGen ``inference_edit_expression.py`` + ``inference_joygen.py``, Deep3DFaceRecon
``get_depth_lm468_edit_exp``), per frame:

1. re-pose the frame's BFM face with the audio-driven expression, render its depth at 224x224;
2. normalise over the covered pixels, ``255 - (d - dmin)/(dmax - dmin + 1e-8)*255`` (near is bright),
   truncate to uint8 (background 0);
3. paste the 224 map back through the alignment crop (PIL bicubic to the frame size), crop the face box;
4. fill the outer-lip polygon of the 468-point topology (landmarks minus the box corner, cast to int32)
   with ``cv2.fillPoly``, multiply, resize to 256x256 with ``cv2.INTER_LANCZOS4``, zero the top 128 rows.

Differences on purpose: no JPEG round trip between the steps (the official saved every map as JPEG),
whole batches rendered at once, frames without a face give all-zero maps instead of stopping the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from ..errors import InputError
from .raster import RENDER_SIZE, rasterize_depth

log = logging.getLogger(__name__)

# Outer-lip ring of the 468-point MediaPipe topology (official ``mouth_region_indices``).
MOUTH_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
MOUTH_SIZE = 256


def normalise_depth(depth: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Per-frame depth normalisation over covered pixels -> [B,S,S] float32 holding uint8 values 0..255.

    Official (``get_depth_lm468_edit_exp``, float32 numpy): ``255 - (d - dmin)/(dmax - dmin + 1e-8)*255``
    on pixels with depth > 0, then ``np.array(.., np.uint8)`` (truncation toward zero). Frames with no
    covered pixel give all zeros (the official crashes on an empty max).
    """
    d = depth.float()
    cov = covered.bool() & (d > 0)
    flat = d.flatten(1)
    cflat = cov.flatten(1)
    inf = torch.tensor(float("inf"), device=d.device)
    dmin = torch.where(cflat, flat, inf).amin(1)
    dmax = torch.where(cflat, flat, -inf).amax(1)
    any_cov = cflat.any(1)
    dmin = torch.where(any_cov, dmin, torch.zeros_like(dmin))[:, None, None]
    dmax = torch.where(any_cov, dmax, torch.zeros_like(dmax))[:, None, None]
    den = (dmax - dmin) + 1e-8  # float32, as numpy does with a float32 array and a Python float
    v = 255.0 - (d - dmin) / den * 255.0
    v = torch.trunc(v).clamp_(0.0, 255.0)
    return torch.where(cov, v, torch.zeros_like(v))


def crop_box(maps: torch.Tensor, box: torch.Tensor) -> list[np.ndarray]:
    """PIL ``Image.crop((x1, y1, x2, y2))`` of each map [B,H,W] (zero outside the frame) -> uint8 arrays."""
    out = []
    H, W = maps.shape[1:]
    m = maps.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    for i, (x1, y1, x2, y2) in enumerate(box.tolist()):
        w, h = max(int(x2) - int(x1), 0), max(int(y2) - int(y1), 0)
        a = np.zeros((h, w), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
        if sx2 > sx1 and sy2 > sy1 and w and h:
            a[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = m[i, sy1:sy2, sx1:sx2]
        out.append(a)
    return out


def mouth_depth_from_crops(crops: list[np.ndarray], lips: torch.Tensor, size: int = MOUTH_SIZE) -> torch.Tensor:
    """Mouth-only depth [B,size,size] (uint8 values as float) from face-box depth crops and lip points.

    ``lips`` [B,20,2]: the outer-lip points in face-box pixels (x, y). Official: points cast to int32
    (truncation), ``cv2.fillPoly`` of the polygon on a box-sized mask, ``crop * mask``, ``cv2.resize``
    to 256x256 with ``INTER_LANCZOS4``, rows ``[:128]`` set to 0.
    """
    import cv2

    out = np.zeros((len(crops), size, size), np.uint8)
    pts_all = lips.detach().cpu().to(torch.float64).numpy()
    for i, crop in enumerate(crops):
        if crop.size == 0 or not np.isfinite(pts_all[i]).all():
            continue
        pts = np.clip(pts_all[i], -(2**30), 2**30).astype(np.int32)  # official: np.array(lm, np.int32)
        mask = np.zeros_like(crop)
        cv2.fillPoly(mask, [pts], 1)
        m = cv2.resize(crop * mask, (size, size), interpolation=cv2.INTER_LANCZOS4)
        m[: size // 2] = 0
        out[i] = m
    return torch.from_numpy(out).float()


def mouth_depth_from_maps(norm: torch.Tensor, align: torch.Tensor, box: torch.Tensor, lips: torch.Tensor,
                          frame_size: tuple[int, int], size: int = MOUTH_SIZE) -> torch.Tensor:
    """Mouth-only depth [B,size,size] straight from normalised 224 maps: the same values as
    ``mouth_depth_from_crops(crop_box(paste_back(norm, align, frame_size, exact_uint8=True), box), lips)``.

    The lip polygon is filled first; the frame-size paste back is then computed only over the polygon's bounding
    rectangle (the product with the polygon is zero elsewhere), so the cost follows the mouth, not the frame.
    """
    import cv2

    from ..face.align import paste_back_window

    b = norm.shape[0]
    out = np.zeros((b, size, size), np.uint8)
    boxes = box.detach().cpu().long().tolist()
    pts_all = lips.detach().cpu().to(torch.float64).numpy()
    masks, rects = [], torch.zeros(b, 4, dtype=torch.long)  # rect: x, y, w, h of the filled pixels in the box
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = max(int(x2) - int(x1), 0), max(int(y2) - int(y1), 0)
        if w == 0 or h == 0 or not np.isfinite(pts_all[i]).all():
            masks.append(None)
            continue
        pts = np.clip(pts_all[i], -(2**30), 2**30).astype(np.int32)  # official: np.array(lm, np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        masks.append(mask)
        rects[i] = torch.tensor(cv2.boundingRect(mask))
    if not bool((rects[:, 2] > 0).any()):
        return torch.from_numpy(out).float()
    origin = torch.as_tensor(boxes, dtype=torch.long)[:, :2] + rects[:, :2]
    win = paste_back_window(norm.detach().cpu(), align, frame_size, origin,
                            (int(rects[:, 3].max()), int(rects[:, 2].max())))
    win = win.round().clamp_(0, 255).to(torch.uint8).numpy()
    for i, mask in enumerate(masks):
        rx, ry, rw, rh = rects[i].tolist()
        if mask is None or rw == 0:
            continue
        crop = np.zeros_like(mask)
        crop[ry:ry + rh, rx:rx + rw] = win[i, :rh, :rw]
        m = cv2.resize(crop * mask, (size, size), interpolation=cv2.INTER_LANCZOS4)
        m[: size // 2] = 0
        out[i] = m
    return torch.from_numpy(out).float()


def render_mouth_depth(track, exp: torch.Tensor | None, bfm, backend: str = "auto", *, batch_size: int = 32,
                       device: torch.device | str | None = None, preview: bool = True,
                       progress: Callable[..., None] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mouth depth [T,256,256] in 0..1 (official uint8 / 255) and the full-face depth preview [T,H,W] in 0..1.

    ``track``: a ``FaceTrack``; ``exp`` [T,64] audio-driven expressions (None: the track's own);
    ``bfm``: the loaded ``BFM`` (needs ``mp468``). Frames without a face give zero maps. The preview is
    the normalised depth pasted back into the frame (official ``depth_edit_exp_original_scale``);
    ``preview=False`` skips keeping it (long videos). ``device``: where to render (default: BFM's).
    """
    from ..face.align import paste_back
    from ..morphable.geometry import crop_to_frame, landmarks468, posed_camera_vertices

    T = len(track)
    H, W = track.frame_size
    exp_all = track.coeff("exp") if exp is None else torch.as_tensor(exp)
    if exp_all.shape != (T, 64):
        raise InputError(f"expression coefficients must be [{T},64] to match the face track, got "
                         f"{tuple(exp_all.shape)}; fit the lengths first (JoyGen Fit Length)")
    if getattr(bfm, "mp468", None) is None:
        raise InputError("the BFM was loaded without index_mp468_from_mesh35709.npy: the mouth polygon needs it")
    lip_idx = torch.tensor(MOUTH_OUTER_LIP)
    if bool((bfm.mp468[lip_idx] < 0).any()):
        raise InputError("index_mp468_from_mesh35709.npy has no vertex for some outer-lip points")
    dev = torch.device(device) if device is not None else bfm.meanshape.device
    mouth = torch.zeros(T, MOUTH_SIZE, MOUTH_SIZE)
    face = torch.zeros(T, H, W) if preview else None
    todo = track.detected.nonzero().squeeze(1)
    tri = bfm.tri.to(dev)
    for k in range(0, todo.numel(), batch_size):
        idx = todo[k:k + batch_size]
        coeffs = track.coeffs[idx].to(bfm.meanshape.device)
        e = exp_all[idx].to(bfm.meanshape.device)
        v_cam = posed_camera_vertices(bfm, coeffs, exp=e)
        depth, covered = rasterize_depth(v_cam.to(dev, torch.float32), tri, RENDER_SIZE, backend)
        norm = normalise_depth(depth, covered).cpu()
        align = track.align[idx]
        box = track.box[idx].long()
        lm = crop_to_frame(landmarks468(bfm, v_cam), align, (H, W))[:, lip_idx].cpu()
        lips = lm.double() - box[:, None, :2].double()  # official: lm468 / s - box corner, then int32
        mouth[idx] = mouth_depth_from_maps(norm, align, box, lips, (H, W)) / 255.0
        if face is not None:
            frame_maps = paste_back(norm.double(), align, (H, W), exact_uint8=True)  # official PIL bicubic, uint8
            face[idx] = frame_maps.float().round().clamp(0, 255) / 255.0
        if progress is not None:
            j = int(idx[-1])
            progress(min(k + batch_size, todo.numel()), todo.numel(),
                     preview=lambda j=j: _depth_image(mouth[j] if face is None else face[j]))
    return mouth, face


def _depth_image(depth: torch.Tensor) -> np.ndarray:
    """A 0..1 depth map as an RGB uint8 image (a progress preview)."""
    gray = (depth.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.repeat(gray[..., None], 3, axis=2)
