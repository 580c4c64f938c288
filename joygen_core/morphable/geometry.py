"""BFM geometry: shape from coefficients, pose, the Deep3DFaceRecon camera, and landmarks in frame pixels.

Official (Deep3DFaceRecon ``models/bfm.py``): ``S = mean + idBase@id + exBase@exp`` (interleaved xyz),
``R = Rz @ Ry @ Rx``, vertices are row vectors moved by ``S @ R.T + trans``, camera ``Zc = 10 - z``,
pinhole focal 1015 and centre 112 with v pointing up; image row = ``223 - v``.
"""

from __future__ import annotations

import torch

from ..face.align import crop_geometry
from ..face.track import COEFF_SPLITS
from .bfm import BFM

FOCAL = 1015.0
CENTER = 112.0
CAMERA_DISTANCE = 10.0
CROP = 224


def split_coeffs(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B,257] -> {'id','exp','tex','angle','gamma','trans'} (official order)."""
    return {k: coeffs[:, a:b] for k, (a, b) in COEFF_SPLITS.items()}


def face_shape(bfm: BFM, id_coeff: torch.Tensor, exp_coeff: torch.Tensor) -> torch.Tensor:
    """Vertices [B,N,3] in model space: mean + id basis + expression basis."""
    dt = bfm.id_base.dtype
    s = id_coeff.to(dt) @ bfm.id_base.T + exp_coeff.to(dt) @ bfm.exp_base.T
    return s.reshape(id_coeff.shape[0], -1, 3) + bfm.meanshape


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """[B,3] angles (x, y, z radians) -> [B,3,3] ``R = Rz @ Ry @ Rx`` (column-vector convention)."""
    x, y, z = angles[:, 0], angles[:, 1], angles[:, 2]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).reshape(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).reshape(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def posed_camera_vertices(bfm: BFM, coeffs: torch.Tensor, exp: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space vertices [B,N,3] = (X, Y, 10 - Z) of ``face_shape @ R.T + trans``.

    ``exp`` [B,64] replaces the coefficients' own expression (how JoyGen re-poses a frame's face
    with audio-driven expressions).
    """
    c = split_coeffs(coeffs.to(bfm.id_base.dtype))
    shape = face_shape(bfm, c["id"], c["exp"] if exp is None else exp)
    v = shape @ rotation_matrix(c["angle"]).transpose(1, 2) + c["trans"][:, None, :]
    return torch.cat([v[..., :2], CAMERA_DISTANCE - v[..., 2:]], dim=-1)


def project(v_cam: torch.Tensor) -> torch.Tensor:
    """Camera-space points [B,K,3] -> [B,K,2] (x, row) pixels of the 224 crop (row = 223 - v)."""
    uv = FOCAL * v_cam[..., :2] / v_cam[..., 2:] + CENTER
    return torch.stack([uv[..., 0], (CROP - 1) - uv[..., 1]], dim=-1)


def crop_to_frame(points: torch.Tensor, align: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """Crop pixels [B,K,2] -> frame pixels: official ``(p + (left, up)) / s``."""
    _, _, left, up = crop_geometry(align, frame_size)
    s = align[:, 0].to(points.device, torch.float64)
    off = torch.stack([left, up], dim=-1).to(points.device, torch.float64)
    return ((points.to(torch.float64) + off[:, None, :]) / s[:, None, None]).to(points.dtype)


def landmarks68(bfm: BFM, v_cam: torch.Tensor) -> torch.Tensor:
    """The 68 keypoints [B,68,2] in crop pixels."""
    return project(v_cam[:, bfm.keypoints.to(v_cam.device)])


def landmarks468(bfm: BFM, v_cam: torch.Tensor) -> torch.Tensor:
    """The 468 MediaPipe-topology points [B,468,2] in crop pixels; NaN where the index file has no vertex."""
    if bfm.mp468 is None:
        raise ValueError("This BFM was loaded without index_mp468_from_mesh35709.npy (mp468_path).")
    idx = bfm.mp468.to(v_cam.device)
    pts = project(v_cam[:, idx.clamp(min=0)])
    return torch.where((idx >= 0)[None, :, None], pts, torch.full_like(pts, float("nan")))


def face_box_from_lm68(lm68: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The editor's face box [B,4] int64 (x1, y1, x2, y2) from 68 landmarks in frame pixels.

    Official (JoyGen ``merge_bbox_landmark``): landmarks truncated to int; x from min/max x,
    ``y2 = max y``, ``y1 = int(lm[29].y - (max_y - lm[29].y))``. When that box is degenerate or starts
    left of the frame (``y2 <= y1``, ``x2 <= x1`` or ``x1 < 0``) the detector box ``fallback`` is used
    (truncated to int), as the official falls back to its detector's box.
    """
    lm = torch.trunc(lm68.to(torch.float64))  # official: astype(np.int32)
    x1, x2 = lm[..., 0].amin(-1), lm[..., 0].amax(-1)
    y2 = lm[..., 1].amax(-1)
    mid = lm[:, 29, 1]
    y1 = torch.trunc(mid - (y2 - mid))
    box = torch.stack([x1, y1, x2, y2], dim=-1)
    bad = (y2 - y1 <= 0) | (x2 - x1 <= 0) | (x1 < 0)
    if fallback is not None:
        box = torch.where(bad[:, None], torch.trunc(fallback.to(torch.float64)), box)
    return box.long()
