"""The face track: everything the later stages need to know about the face in each frame.

One ``FaceTrack`` covers a run of frames of one video. All per-frame fields are CPU tensors whose
first dimension is the frame index; frames with ``detected == False`` hold zeros and are passed
through unchanged by every later stage. It is what the per-video cache stores (safetensors + JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

COEFF_SPLITS = {"id": (0, 80), "exp": (80, 144), "tex": (144, 224), "angle": (224, 227), "gamma": (227, 254),
                "trans": (254, 257)}


@dataclass
class FaceTrack:
    """Per-frame face data for ``T`` frames of size ``frame_size`` = (H, W).

    - ``detected`` [T] bool: a face was found (else every other field is zero for that frame).
    - ``det_box`` [T,4] float: detector box x1, y1, x2, y2 (frame pixels); ``det_score`` [T].
    - ``five`` [T,5,2] float: left eye, right eye, nose, left / right mouth corner (x, y frame pixels).
    - ``align`` [T,3] float: official alignment (s, tx, ty): s = 102 / mean(|R1|,|R2|), t the 2D
      translation of the least-squares fit in y-up coordinates; the 224 crop is derived from these.
    - ``coeffs`` [T,257] float: BFM coefficients id 80, exp 64, tex 80, angle 3, gamma 27, trans 3.
    - ``lm68`` [T,68,2] float: the 68 BFM keypoints projected to frame pixels (x, y).
    - ``box`` [T,4] int: the face box the editor crops (x1, y1, x2, y2), refined from ``lm68``.
    """

    frame_size: tuple[int, int]
    detected: torch.Tensor
    det_box: torch.Tensor
    det_score: torch.Tensor
    five: torch.Tensor
    align: torch.Tensor
    coeffs: torch.Tensor
    lm68: torch.Tensor
    box: torch.Tensor
    fps: float | None = None
    meta: dict = field(default_factory=dict)

    _TENSORS = ("detected", "det_box", "det_score", "five", "align", "coeffs", "lm68", "box")

    def __post_init__(self) -> None:
        n = self.detected.shape[0]
        for name in self._TENSORS:
            t = getattr(self, name)
            if t.shape[0] != n:
                raise ValueError(f"FaceTrack.{name} has {t.shape[0]} frames, detected has {n}")

    def __len__(self) -> int:
        return int(self.detected.shape[0])

    @classmethod
    def empty(cls, n: int, frame_size: tuple[int, int], fps: float | None = None) -> FaceTrack:
        """A track of ``n`` frames with no face in any of them."""
        z = torch.zeros
        return cls(frame_size=(int(frame_size[0]), int(frame_size[1])), detected=z(n, dtype=torch.bool),
                   det_box=z(n, 4), det_score=z(n), five=z(n, 5, 2),
                   align=z(n, 3, dtype=torch.float64), coeffs=z(n, 257),
                   lm68=z(n, 68, 2), box=z(n, 4, dtype=torch.int64), fps=fps)

    def coeff(self, name: str) -> torch.Tensor:
        """One named slice of the coefficients, e.g. ``track.coeff('exp')`` -> [T,64]."""
        a, b = COEFF_SPLITS[name]
        return self.coeffs[:, a:b]

    def select(self, index: Sequence[int] | torch.Tensor) -> FaceTrack:
        """Frames picked by index (repeats allowed): how length fitting re-times a track."""
        idx = torch.as_tensor(index, dtype=torch.long)
        kw = {name: getattr(self, name)[idx] for name in self._TENSORS}
        return FaceTrack(frame_size=self.frame_size, fps=self.fps, meta=dict(self.meta), **kw)

    @classmethod
    def concat(cls, tracks: Sequence[FaceTrack]) -> FaceTrack:
        """Join tracks of consecutive chunks of one video."""
        if not tracks:
            raise ValueError("FaceTrack.concat needs at least one track")
        kw = {name: torch.cat([getattr(t, name) for t in tracks]) for name in cls._TENSORS}
        return cls(frame_size=tracks[0].frame_size, fps=tracks[0].fps, meta=dict(tracks[0].meta), **kw)

    def save(self, path: Path | str) -> None:
        """Write as safetensors (tensors) with the frame size, fps and meta in its JSON header."""
        from safetensors.torch import save_file

        tensors = {name: getattr(self, name).contiguous() for name in self._TENSORS}
        header = {"frame_size": json.dumps(list(self.frame_size)), "fps": json.dumps(self.fps),
                  "meta": json.dumps(self.meta), "format": "joygen.face_track.v1"}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> FaceTrack:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != "joygen.face_track.v1":
                raise ValueError(f"{path} is not a JoyGen face track file")
            kw = {name: f.get_tensor(name) for name in cls._TENSORS}
        size = json.loads(header["frame_size"])
        return cls(frame_size=(int(size[0]), int(size[1])), fps=json.loads(header["fps"]),
                   meta=json.loads(header["meta"]), **kw)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
