"""Frames -> face track: detect, align, regress BFM coefficients, project landmarks, refine the face box.

Follows JoyGen's per-frame preprocessing (``inference_edit_expression.py``) on batches: MTCNN five
points -> official 224 alignment -> Deep3DFaceRecon coefficients -> 68 keypoints in frame pixels ->
face box from the keypoints (the official uses DWPose's 68 points for that step; the 3DMM's own
keypoints stand in for them, so no mmcv is needed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..face.align import align_params, crop_faces
from ..face.detect import MIN_FACE_SIZE, Detections, detect_faces, load_mtcnn
from ..face.smooth import smooth_points
from ..face.track import FaceTrack
from .bfm import BFM, load_bfm
from .geometry import crop_to_frame, face_box_from_lm68, landmarks68, posed_camera_vertices
from .regressor import ReconNet, load_regressor, regress

log = logging.getLogger(__name__)

MP468_NAME = "index_mp468_from_mesh35709.npy"


@dataclass
class ReconModels:
    """Everything reconstruction needs (the JOYGEN_RECON_MODELS handle): detector, regressor, BFM."""

    detector: object
    regressor: ReconNet
    bfm: BFM
    device: torch.device

    def __repr__(self) -> str:
        return f"ReconModels(device={self.device}, vertices={self.bfm.num_vertices})"


def load_recon_models(bfm_path: Path | str, regressor_path: Path | str, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, *, mp468_path: Path | str | None = None,
                      min_face_size: int = MIN_FACE_SIZE) -> ReconModels:
    """Load MTCNN, the regressor and the BFM (with the 468-point index found beside the BFM file when
    ``mp468_path`` is not given). The BFM stays float32 on ``device``; the regressor runs in ``dtype``."""
    device = torch.device(device)
    bfm_path = Path(bfm_path)
    if mp468_path is None and (bfm_path.parent / MP468_NAME).is_file():
        mp468_path = bfm_path.parent / MP468_NAME
    bfm = load_bfm(bfm_path, mp468_path).to(device)
    return ReconModels(detector=load_mtcnn(device, min_face_size), regressor=load_regressor(regressor_path, device,
                       dtype), bfm=bfm, device=device)


def as_rgb_uint8(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames [T,H,W,C] with C = 1 (gray), 3 or 4 (alpha dropped) -> [T,H,W,3]; [H,W,C] -> [1,H,W,3]."""
    t = torch.as_tensor(frames)
    if t.dtype != torch.uint8:
        raise ValueError(f"Expected uint8 frames; got {t.dtype} (ComfyUI IMAGEs go through image_to_uint8 first).")
    if t.ndim == 2:
        t = t[None, ..., None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected frames [T,H,W,C] with C in (1, 3, 4); got {tuple(t.shape)}.")
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:3], 3)
    return t[..., :3]


def smooth_detections(det: Detections, fps: float = 25.0, **kw) -> Detections:
    """Detections with box corners and five points smoothed over time (see :func:`smooth_points`)."""
    size = ((det.box[:, 2] - det.box[:, 0]) + (det.box[:, 3] - det.box[:, 1])) / 2
    pts = torch.cat([det.box.reshape(-1, 2, 2), det.five], dim=1)
    pts = smooth_points(pts, det.found, size, fps, **kw)
    return Detections(box=pts[:, :2].reshape(-1, 4).contiguous(), five=pts[:, 2:].contiguous(), score=det.score,
                      found=det.found, count=det.count)


def detect_all(chunks, detector, policy: str = "largest", *, min_score: float = 0.0, batch_size: int = 64,
               progress: Callable[[int, int], None] | None = None) -> Detections:
    """One face per frame over a stream of uint8 frame chunks; ``policy='track'`` follows across chunks."""
    parts, prev, done = [], None, 0
    for chunk in chunks:
        chunk = as_rgb_uint8(torch.as_tensor(chunk))
        for i in range(0, chunk.shape[0], batch_size):
            d = detect_faces(chunk[i:i + batch_size], detector, policy, previous=prev, min_score=min_score)
            found = d.found.nonzero()
            if len(found):
                prev = d.box[found[-1, 0]]
            parts.append(d)
            done += len(d)
            if progress is not None:
                progress(done, done)
    if not parts:
        z = torch.zeros
        return Detections(z(0, 4), z(0, 5, 2), z(0), z(0, dtype=torch.bool), z(0, dtype=torch.long))
    return Detections.cat(parts)


def reconstruct(frames: torch.Tensor | np.ndarray, detector, regressor: ReconNet, bfm: BFM, batch_size: int = 64,
                *, policy: str = "largest", smooth: bool = False, fps: float | None = None,
                min_score: float = 0.0, progress: Callable[..., None] | None = None,
                detections: Detections | None = None) -> FaceTrack:
    """Build the face track of uint8 frames [T,H,W,C] (C = 1, 3 or 4).

    Detection runs over all frames first (so ``policy='track'`` and ``smooth`` see the whole run), then
    alignment, regression and projection run ``batch_size`` frames at a time on the regressor's device.
    Frames without a face are flagged (``detected == False``) with zeros elsewhere. ``detections``: the
    faces already found for these frames (a streamed caller detects and smooths the whole video first);
    detection and smoothing are then skipped.
    """
    frames = as_rgb_uint8(frames)
    n, h, w, _ = frames.shape
    track = FaceTrack.empty(n, (h, w), fps=fps)
    track.align = track.align.double()  # float64: crop integers identical to the official numpy code
    track.meta.update({"detector": "mtcnn", "policy": policy, "smoothed": bool(smooth)})
    if n == 0:
        return track
    bs = max(1, int(batch_size))
    if detections is not None:
        if len(detections) != n:
            raise ValueError(f"{len(detections)} detections for {n} frames")
        det = detections
    else:
        det = detect_all(iter([frames]), detector, policy, min_score=min_score, batch_size=bs,
                         progress=None if progress is None else (lambda d, t: progress(d, 2 * n)))
        if smooth:
            det = smooth_detections(det, fps or 25.0)
    track.detected[:] = det.found
    track.det_box[:] = det.box
    track.det_score[:] = det.score
    track.five[:] = det.five
    track.meta["multi_face_frames"] = int((det.count > 1).sum())
    idx = det.found.nonzero()[:, 0]
    if len(idx) == 0:
        log.warning("No face found in any of %d frames", n)
    dev = next(regressor.parameters()).device
    bfm_dev = bfm if bfm.meanshape.device == dev else bfm.to(dev)
    for i in range(0, len(idx), bs):
        sel = idx[i:i + bs]
        al = align_params(det.five[sel], (h, w))
        crops = crop_faces(frames[sel].to(dev), al)
        coeffs = regress(regressor, crops, batch_size=bs)
        with torch.inference_mode():
            v = posed_camera_vertices(bfm_dev, coeffs.to(dev))
            lm = crop_to_frame(landmarks68(bfm_dev, v), al, (h, w)).float().cpu()
        track.align[sel] = al
        track.coeffs[sel] = coeffs
        track.lm68[sel] = lm
        track.box[sel] = face_box_from_lm68(lm, fallback=det.box[sel])
        if progress is not None:
            progress(n + min(i + bs, len(idx)) * n // max(len(idx), 1), 2 * n,
                     preview=overlay_preview(frames, track, int(sel[-1])))
    if progress is not None:
        progress(2 * n, 2 * n)
    return track


def overlay_preview(frames: torch.Tensor, track: FaceTrack, j: int = -1) -> Callable[[], np.ndarray]:
    """A progress preview: frame ``j`` (-1: the last) with its landmarks, drawn only if a display asks for it."""
    j = j % len(track)
    return lambda: draw_preview(frames[j:j + 1], track.select([j]))[0].numpy()


def draw_preview(frames: torch.Tensor, track: FaceTrack, radius: int = 1) -> torch.Tensor:
    """uint8 frames [T,H,W,3] with the 68 landmarks (green), five points (red) and face box (yellow) drawn."""
    out = as_rgb_uint8(frames).clone()
    _, h, w, _ = out.shape
    idx = track.detected.nonzero()[:, 0]
    if len(idx) == 0:
        return out
    d = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")

    def dots(points: torch.Tensor, color: tuple[int, int, int]) -> None:
        p = points[idx].round().long()  # [n,K,2]
        x = (p[..., 0, None] + dx.reshape(-1)).clamp(0, w - 1)
        y = (p[..., 1, None] + dy.reshape(-1)).clamp(0, h - 1)
        fi = idx[:, None, None].expand_as(x)
        out[fi, y, x] = torch.tensor(color, dtype=torch.uint8)

    box = track.box[idx].long()
    x1, y1 = box[:, 0].clamp(0, w - 1), box[:, 1].clamp(0, h - 1)
    x2, y2 = box[:, 2].clamp(0, w - 1), box[:, 3].clamp(0, h - 1)
    yellow = torch.tensor((255, 220, 0), dtype=torch.uint8)
    fi, xi = ((torch.arange(w) >= x1[:, None]) & (torch.arange(w) <= x2[:, None])).nonzero(as_tuple=True)
    out[idx[fi], y1[fi], xi] = yellow  # top and bottom edges
    out[idx[fi], y2[fi], xi] = yellow
    fi, yi = ((torch.arange(h) >= y1[:, None]) & (torch.arange(h) <= y2[:, None])).nonzero(as_tuple=True)
    out[idx[fi], yi, x1[fi]] = yellow  # left and right edges
    out[idx[fi], yi, x2[fi]] = yellow
    dots(track.lm68, (0, 255, 0))
    dots(track.five, (255, 0, 0))
    return out
