"""Face detection with MTCNN (facenet-pytorch, weights in its wheel), batched, one face per frame.

Official (JoyGen ``inference_edit_expression.py``): ``MTCNN(min_face_size=50)`` and ``detect(img,
landmarks=True)``, whose faces come sorted largest first; the first (largest) face is used and a
frame without a face is skipped. Here a frame without a face is flagged (``found == False``), and
with several faces the policy picks the largest, or the one that continues the previous frame's face.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

POLICIES = ("largest", "track")
MIN_FACE_SIZE = 50  # official
_PIXEL_BUDGET = 1 << 25  # pixels per MTCNN call (its first stage holds the frames as float32)


@dataclass
class Detections:
    """One chosen face per frame: ``box`` [B,4] (x1,y1,x2,y2), ``five`` [B,5,2] (x,y), ``score`` [B],
    ``found`` [B] bool (False: no face, other fields zero), ``count`` [B] faces seen in the frame."""

    box: torch.Tensor
    five: torch.Tensor
    score: torch.Tensor
    found: torch.Tensor
    count: torch.Tensor

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def slice(self, start: int, stop: int) -> Detections:
        """Frames ``start .. stop-1``."""
        return Detections(*(getattr(self, f)[start:stop] for f in ("box", "five", "score", "found", "count")))

    @classmethod
    def cat(cls, parts: list[Detections]) -> Detections:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("box", "five", "score", "found", "count")))


def load_mtcnn(device: torch.device | str = "cpu", min_face_size: int = MIN_FACE_SIZE,
               thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)):
    """The MTCNN detector of facenet-pytorch (official settings: min face 50 px, largest first)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("Face detection needs facenet-pytorch 2.5.3: pip install facenet-pytorch==2.5.3 --no-deps"
                          ) from exc
    return MTCNN(min_face_size=int(min_face_size), thresholds=list(thresholds), select_largest=True,
                 keep_all=True, device=torch.device(device)).eval()


def _iou(box: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """IoU of boxes [n,4] with one box [4]."""
    x1 = np.maximum(box[:, 0], ref[0])
    y1 = np.maximum(box[:, 1], ref[1])
    x2 = np.minimum(box[:, 2], ref[2])
    y2 = np.minimum(box[:, 3], ref[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    return inter / np.maximum(area + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter, 1e-9)


def _pick(boxes: np.ndarray, previous: np.ndarray | None, policy: str) -> int:
    """Index of the face to keep among ``boxes`` (sorted largest first by MTCNN)."""
    if policy == "largest" or previous is None or len(boxes) == 1:
        return 0
    iou = _iou(boxes, previous)
    if iou.max() > 0:
        return int(iou.argmax())
    centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return int(np.linalg.norm(centre - (previous[:2] + previous[2:]) / 2, axis=1).argmin())


def detect_faces(frames: torch.Tensor | np.ndarray, detector, policy: str = "largest", *,
                 previous: torch.Tensor | None = None, min_score: float = 0.0) -> Detections:
    """Detect one face per frame in uint8 frames [B,H,W,3] with as few MTCNN calls as memory allows.

    ``policy``: 'largest' (official) or 'track' (the face overlapping the previous frame's chosen face
    most, else the nearest; the first frame, or ``previous`` box [4] when given, starts the track).
    Faces scoring below ``min_score`` are ignored.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}; got {policy!r}")
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"detect_faces wants uint8 RGB frames [B,H,W,3]; got {frames.dtype} {tuple(frames.shape)}")
    b, h, w, _ = frames.shape
    out = Detections(box=torch.zeros(b, 4), five=torch.zeros(b, 5, 2), score=torch.zeros(b),
                     found=torch.zeros(b, dtype=torch.bool), count=torch.zeros(b, dtype=torch.long))
    if b == 0:
        return out
    chunk = max(1, _PIXEL_BUDGET // (h * w))
    prev = None if previous is None else previous.detach().cpu().numpy().astype(np.float64)
    for start in range(0, b, chunk):
        batch = frames[start:start + chunk].to(detector.device)
        with torch.inference_mode():
            boxes, probs, points = detector.detect(batch, landmarks=True)
        for j in range(len(boxes)):  # choosing among a few faces: inherently per frame (tracking)
            if boxes[j] is None:
                continue
            bx = np.asarray(boxes[j], np.float64).reshape(-1, 4)
            pr = np.asarray(probs[j], np.float64).reshape(-1)
            pt = np.asarray(points[j], np.float64).reshape(-1, 5, 2)
            keep = pr >= min_score
            if not keep.any():
                continue
            bx, pr, pt = bx[keep], pr[keep], pt[keep]
            k = _pick(bx, prev, policy)
            i = start + j
            out.box[i] = torch.from_numpy(bx[k]).float()
            out.five[i] = torch.from_numpy(pt[k]).float()
            out.score[i] = float(pr[k])
            out.found[i] = True
            out.count[i] = len(bx)
            prev = bx[k]
    return out
