"""Optional refinement of the mouth mask by MediaPipe Face Mesh lips (when mediapipe is installed).

MediaPipe is never required: JoyGen's own region (the lower half of the face box) and its landmark and
parsing masks need none of it. With ``mediapipe`` importable (0.10.21 bundles its face-mesh model; newer
releases need a downloaded ``face_landmarker.task``), this finds the 468-point mesh in each face box and
fills the outer-lip ring (the same 20 indices as JoyGen's mouth depth), dilated and feathered.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import JoyGenError
from ..render.depth import MOUTH_OUTER_LIP

log = logging.getLogger(__name__)


def mediapipe_available() -> bool:
    try:
        import mediapipe as mp

        return hasattr(mp, "solutions") and hasattr(mp.solutions, "face_mesh")
    except Exception:  # a broken install (e.g. protobuf too new) must not break the pack
        return False


def lip_masks(frames: torch.Tensor, boxes: torch.Tensor, detected: torch.Tensor, *, dilate: float = 0.08,
              feather: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """MASK [T,H,W] of the lips found by MediaPipe in each face box, and a [T] bool of where it found them.

    ``dilate`` / ``feather``: grow and soften the lip polygon by these fractions of the box width.
    Frames where MediaPipe finds no face get an empty mask (the caller decides what to fall back to).
    """
    if not mediapipe_available():
        raise JoyGenError("MediaPipe lips need the optional package mediapipe (pip install mediapipe==0.10.21 "
                          "--no-deps with protobuf<5, or a newer mediapipe with its face_landmarker.task); use "
                          "mode region, landmarks or parsing without it.")
    import cv2
    import mediapipe as mp

    T, H, W = frames.shape[:3]
    out = np.zeros((T, H, W), np.float32)
    found = torch.zeros(T, dtype=torch.bool)
    arr = frames.cpu().numpy()
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        for i in detected.nonzero().squeeze(1).tolist():  # MediaPipe runs one image at a time
            x1, y1, x2, y2 = boxes[i].long().tolist()
            m = (x2 - x1) // 4
            cx1, cy1, cx2, cy2 = max(x1 - m, 0), max(y1 - m, 0), min(x2 + m, W), min(y2 + m, H)
            if cx2 - cx1 < 16 or cy2 - cy1 < 16:
                continue
            res = mesh.process(np.ascontiguousarray(arr[i, cy1:cy2, cx1:cx2]))
            if not res.multi_face_landmarks:
                continue
            lm = res.multi_face_landmarks[0].landmark
            pts = np.array([[lm[j].x * (cx2 - cx1) + cx1, lm[j].y * (cy2 - cy1) + cy1] for j in MOUTH_OUTER_LIP])
            mask = np.zeros((H, W), np.uint8)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
            bw = max(x2 - x1, 1)
            k = max(int(dilate * bw) | 1, 1)
            mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
            f = max(int(feather * bw) * 2 + 1, 3)
            out[i] = cv2.GaussianBlur(mask, (f, f), 0).astype(np.float32) / 255.0
            found[i] = True
    missing = int(detected.sum()) - int(found.sum())
    if missing:
        log.warning("MediaPipe found no lips in %d of %d frames with a face", missing, int(detected.sum()))
    return torch.from_numpy(out), found
