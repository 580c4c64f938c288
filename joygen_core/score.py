"""Lip-sync scores of a video: LSE-D, LSE-C and the audio-video offset, with the SyncNet of the evaluation.

The metric itself is :mod:`joygen_core.metrics.syncnet` (the SyncNet of Wav2Lip's evaluation, which
``python -m train evaluate`` uses too, through ``train.metrics.syncnet``): its crop geometry, MFCC front end,
embeddings, distances and scores are called, never restated, and a video file's crops and sound are read by
:func:`read_sync_inputs`, the evaluation's own reader, so a score here equals the evaluation's on the same video.
What this module adds:

- scoring on the face boxes the pipeline tracks (a :class:`~joygen_core.face.track.FaceTrack`'s detector boxes),
  or on MTCNN boxes found here the way the evaluation finds them (policy 'track');
- frames without a face are left out and counted: a 5-frame window that holds one is dropped before the
  distances are averaged (the evaluation instead interpolates a box across them and scores them anyway; with a
  face in every frame the two are identical);
- frames at any fps are re-timed to SyncNet's 25 fps as ffmpeg's fps filter does (the nearest frame in time,
  :func:`joygen_core.video.io.iter_frames` with ``fps=25``), the audio to 16 kHz mono 16-bit.

The offset is in 25 fps frames; positive means the lips lag the sound. To correct it, shift the motion by
minus the offset (JoyGen Adjust Motion).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, MediaError, ModelFileError
from .metrics import syncnet as S
from .video.io import AudioClip

log = logging.getLogger(__name__)

SYNCNET_FPS = S.FPS
SYNCNET_FILE = "syncnet/syncnet_v2.model"  # its place in the model folder
SYNCNET_KEY = "syncnet"  # its key in joygen_core.weights' manifest (an optional file)


def syncnet_file(store: Any, name: str | None = None) -> Path:
    """``syncnet_v2.model`` in the model folder (``store``: a ModelStore): the manifest entry when there is one,
    else ``syncnet/syncnet_v2.model``; a missing file is a ModelFileError saying where to get it."""
    from .weights import MANIFEST_BY_KEY

    if name is None and SYNCNET_KEY in MANIFEST_BY_KEY:
        return store.path(SYNCNET_KEY)
    name = name or SYNCNET_FILE
    found = store.find(name)
    if found is None:
        raise ModelFileError(f"Missing SyncNet weights {name!r} (needed for LSE-D / LSE-C). Expected at "
                             f"{Path(store.roots[0]) / name}. Get syncnet_v2.model from: {S.WEIGHTS_SOURCE}.")
    return found


def load_syncnet(path: Path | str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The evaluation's SyncNet from ``syncnet_v2.model``, checked strictly (:func:`.metrics.syncnet.load_syncnet`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"SyncNet weights {path} do not exist. Get syncnet_v2.model from: "
                             f"{S.WEIGHTS_SOURCE}.")
    return S.load_syncnet(path, device)


@dataclass(frozen=True)
class SyncReport:
    """Sync scores of one clip. ``lse_d`` lower is better, ``lse_c`` higher is better; ``offset`` in 25 fps
    frames (positive: the lips lag the sound); ``windows`` 5-frame windows averaged, ``windows_left_out`` those
    dropped for holding a frame without a face; ``frames`` at 25 fps, ``frames_without_face`` among them."""

    lse_d: float
    lse_c: float
    offset: int
    windows: int
    windows_left_out: int
    frames: int
    frames_without_face: int
    retimed_from: float | None = None

    def summary(self) -> str:
        lines = [f"LSE-D {self.lse_d:.3f} (lower is better), LSE-C {self.lse_c:.3f} (higher is better), "
                 f"audio-video offset {self.offset:+d} frames ({self.offset / SYNCNET_FPS:+.2f} s; positive: "
                 f"the lips lag the sound)",
                 f"{self.windows} windows of 5 frames scored from {self.frames} frames at {SYNCNET_FPS} fps"]
        if self.retimed_from is not None:
            lines.append(f"frames re-timed from {self.retimed_from:g} fps to {SYNCNET_FPS} fps (nearest frame)")
        if self.frames_without_face:
            lines.append(f"{self.frames_without_face} frames without a face left out "
                         f"({self.windows_left_out} windows dropped)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def retime_index(n: int, fps: float, target: float = SYNCNET_FPS) -> torch.Tensor:
    """Source frame shown by each output frame when ``n`` frames at ``fps`` are re-timed to ``target`` fps:
    the nearest in time (ties to the later), as ffmpeg's fps filter and ``iter_frames(fps=...)`` do."""
    if not fps or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise MediaError(f"The frames' fps must be a positive number; got {fps!r}")
    count = max(1, math.ceil(float(target) * n / float(fps) - 0.5 - 1e-9))
    pos = torch.arange(count, dtype=torch.float64) * (float(fps) / float(target))
    return torch.floor(pos + 0.5 + 1e-9 * float(fps)).long().clamp(max=n - 1)


def pcm16_mono(audio: AudioClip) -> torch.Tensor:
    """What the evaluation reads as sound: 16 kHz mono, 16-bit sample values (ffmpeg ``-ac 1 -ar 16000``)."""
    from .audio.prepare import to_mono_16k

    return S.pcm16(to_mono_16k(audio.waveform, audio.sample_rate))


def _check_faces(found: torch.Tensor) -> None:
    if not bool(found.any()):
        raise MediaError("No face was found in any frame, so there are no lips to score: LSE-D / LSE-C need a "
                         "video with one visible face.")


def score_crops(model: Any, faces: torch.Tensor, found: torch.Tensor, samples: torch.Tensor, *,
                vshift: int = 15, batch_size: int = 20, device: torch.device | str | None = None,
                progress: Callable[[int, int], None] | None = None) -> SyncReport:
    """Scores of SyncNet face crops [T,224,224,3] uint8 at 25 fps and their 16 kHz int16-scale audio [S].

    Windows holding a frame where ``found`` [T] is False are dropped before averaging; otherwise exactly
    ``joygen_core.metrics.syncnet.clip_sync_scores``.
    """
    found = torch.as_tensor(found, dtype=torch.bool).reshape(-1)
    _check_faces(found)
    v, a = S.embed_clip(model, faces, samples, batch_size=batch_size, device=device, progress=progress)
    dists = S.sync_distances(v, a, vshift)
    n = dists.shape[0]
    keep = found[:n + S.VIDEO_WINDOW - 1].unfold(0, S.VIDEO_WINDOW, 1).all(1)
    if not bool(keep.any()):
        raise MediaError(f"No {S.VIDEO_WINDOW} consecutive frames (0.2 s) with a face among the {n} windows that "
                         "fit the audio; SyncNet needs the face in view for a run of frames.")
    s = S.sync_scores(dists[keep], vshift)
    return SyncReport(lse_d=s.min_dist, lse_c=s.confidence, offset=s.offset, windows=s.windows,
                      windows_left_out=int(n - s.windows), frames=int(faces.shape[0]),
                      frames_without_face=int((~found).sum()))


def score_frames(model: Any, frames: torch.Tensor | np.ndarray, fps: float, audio: AudioClip, *,
                 boxes: torch.Tensor | None = None, found: torch.Tensor | None = None, detector: Any = None,
                 vshift: int = 15, batch_size: int = 20, device: torch.device | str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> SyncReport:
    """Scores of frames in memory (uint8 [T,H,W,3] at ``fps``) and their sound; ``progress(done, total)`` per
    batch of SyncNet windows.

    Face boxes [T,4] (x1, y1, x2, y2) with ``found`` [T] from a face track (``track.det_box``, ``track.detected``),
    or found here with ``detector`` (MTCNN, :func:`joygen_core.face.detect.load_mtcnn`) as the evaluation does.
    """
    from .face.detect import detect_faces

    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise MediaError(f"Expected frames [T,H,W,3]; got {tuple(frames.shape)}")
    n = int(frames.shape[0])
    index = retime_index(n, fps)
    frames = frames[index]
    if boxes is None:
        if detector is None:
            raise ValueError("score_frames needs face boxes (from a face track) or a detector")
        det = detect_faces(frames, detector, policy="track")
        boxes, found = det.box, det.found
    else:
        if found is None or len(boxes) != n or len(found) != n:
            raise InputError(f"The face track has {len(boxes)} frames but there are {n} video frames: score the "
                             "frames the track was made from (or re-time both the same way).")
        boxes, found = torch.as_tensor(boxes)[index], torch.as_tensor(found, dtype=torch.bool)[index]
    _check_faces(found)
    faces = S.syncnet_face_crops(frames, S.syncnet_crop_boxes(boxes, found))
    report = score_crops(model, faces, found, pcm16_mono(audio), vshift=vshift, batch_size=batch_size, device=device,
                         progress=progress)
    return SyncReport(**{**report.to_dict(), "retimed_from": None if float(fps) == SYNCNET_FPS else float(fps)})


@dataclass
class SyncInputs:
    """What SyncNet reads from one video: face crops and their sound at 25 fps, and where a face was found."""

    faces: torch.Tensor  # uint8 RGB face crops [T,224,224,3]
    samples: torch.Tensor  # float64 [S]: 16 kHz mono, int16 sample values
    found: torch.Tensor  # bool [T]: a face was detected in that frame (all True without detection)

    @property
    def face_found(self) -> float:
        """The fraction of frames with a detected face."""
        return int(self.found.sum()) / len(self.found) if len(self.found) else 0.0


def read_sync_inputs(path: Path | str, detector: Any | None, *, audio_from: Path | str | None = None,
                     max_seconds: float | None = None, chunk: int = 64) -> SyncInputs:
    """Face crops and sound of a video file as the official SyncNet evaluation prepares them.

    Frames are re-timed to 25 fps and the audio resampled to 16 kHz mono 16-bit (official: ffmpeg ``-r 25`` and
    ``-ac 1 -ar 16000 pcm_s16le``). With a ``detector`` (MTCNN, :func:`joygen_core.face.detect.load_mtcnn`,
    standing in for the official S3FD) faces are found in a first pass over the frames and cut with the
    official crop geometry in a second, so only the 224x224 crops are ever held; with ``None`` the frames are
    face crops already and are resized whole (as Wav2Lip's ``calculate_scores_LRS.py`` does). ``audio_from``:
    the sound track of that file instead. ``max_seconds``: the first seconds of both.
    """
    from .face.detect import detect_faces
    from .video.io import iter_frames, read_audio

    samples = pcm16_mono(read_audio(audio_from or path))
    max_frames = None if max_seconds is None else max(1, math.ceil(max_seconds * S.FPS - 1e-9))
    if max_seconds is not None:
        samples = samples[: int(round(max_seconds * S.SAMPLE_RATE))]

    def frames() -> Iterator[np.ndarray]:
        return iter_frames(path, chunk_size=chunk, fps=S.FPS, max_frames=max_frames)

    found: list[torch.Tensor] = []
    crop_boxes = None
    if detector is not None:
        boxes, previous = [], None
        for f in frames():
            det = detect_faces(f, detector, policy="track", previous=previous)
            boxes.append(det.box)
            found.append(det.found)
            if det.found.any():
                previous = det.box[det.found][-1]
        if found and not bool(torch.cat(found).any()):
            raise MediaError(f"No face was found in any frame of {path}, so there are no lips to score: LSE-D / "
                             "LSE-C need a video with one visible face.")
        if found:
            crop_boxes = S.syncnet_crop_boxes(torch.cat(boxes), torch.cat(found))
    crops, start = [], 0
    for f in frames():
        n, h, w, _ = f.shape
        if crop_boxes is None:
            crops.append(S.syncnet_face_crops(f, np.tile(np.array([[0, h, 0, w]], np.int64), (n, 1))))
            found.append(torch.ones(n, dtype=torch.bool))
        else:
            crops.append(S.syncnet_face_crops(f, crop_boxes[start:start + n]))
        start += n
    if not crops:
        raise MediaError(f"{path} holds no decodable video frames.")
    return SyncInputs(faces=torch.cat(crops), samples=samples, found=torch.cat(found))


def score_video(path: Path | str, model: Any, detector: Any, *, max_seconds: float | None = None,
                vshift: int = 15, batch_size: int = 20, chunk: int = 64,
                device: torch.device | str | None = None) -> SyncReport:
    """Scores of a video file against its own sound track, read by :func:`read_sync_inputs` (the evaluation's
    reader: faces found with ``detector`` over the 25 fps frames, only the 224x224 crops held)."""
    from .video.io import probe_video

    info = probe_video(path)
    if not info.has_audio:
        raise MediaError(f"{path} has no sound track: the lips are scored against the video's own audio.")
    inputs = read_sync_inputs(path, detector, max_seconds=max_seconds, chunk=chunk)
    report = score_crops(model, inputs.faces, inputs.found, inputs.samples, vshift=vshift, batch_size=batch_size,
                         device=device)
    fps = float(info.fps)
    return SyncReport(**{**report.to_dict(), "retimed_from": None if fps == SYNCNET_FPS else fps})
