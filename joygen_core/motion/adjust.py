"""Motion from a video and motion adjustments: re-timing, gap filling, amplitude, smoothing, shift and mixing.

Every function takes and returns :class:`~joygen_core.motion.types.Motion` (or its ``exp`` [T,64]) and says
in ``meta['notes']`` what it changed that a user should know (re-timed, filled, held at an edge), so the
nodes and the CLI can show it. Everything works on whole [T,64] tensors: no per-frame Python loops.

Conventions:

- re-timing is linear interpolation in time: output frame ``i`` is at ``i / target_fps`` seconds, read at
  source position ``i * fps / target_fps`` (:func:`joygen_core.motion.a2m.resample_motion`); beyond the source's
  last frame that frame is held. At the same fps and length it is the identity, bit for bit.
- amplitude scales the deviation from the motion's own mean expression over time (0: the mean, 1: unchanged).
- smoothing is a zero-phase Butterworth low-pass (order 2, run forward and backward) with its cutoff in Hz,
  so it means the same at any fps; at the cutoff the amplitude of a sine is halved. A cutoff of 0 means off;
  a negative one is an error; one at or above the Nyquist frequency (fps / 2) removes nothing and is left out.
- a shift of ``k`` frames (fractional allowed) delays the mouth: ``out[i] = exp[i - k]`` (linear interpolation
  between frames, the first / last frame held past the edges). To undo a Sync Score offset of ``+k`` (lips
  lagging the sound by ``k`` frames), shift by ``-k``.
"""

from __future__ import annotations

import logging
import math

import torch

from ..errors import InputError
from ..face.track import COEFF_SPLITS, FaceTrack
from .a2m import resample_motion
from .types import Motion

log = logging.getLogger(__name__)

SMOOTHING_ORDER = 2  # Butterworth order of one pass; filtfilt doubles it (no overshoot worth seeing at 2)


def _positive_fps(fps: float | None, what: str) -> float:
    if fps is None or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise InputError(f"{what} must be a positive number of frames per second; got {fps!r}")
    return float(fps)


def _notes(motion: Motion) -> list[str]:
    return list((motion.meta or {}).get("notes", []))


def _with_notes(exp: torch.Tensor, fps: float, meta: dict | None, notes: list[str]) -> Motion:
    out = dict(meta or {})
    out["notes"] = notes
    return Motion(exp=exp.contiguous(), fps=float(fps), meta=out)


def duration_frames(frames: int, fps: float, target_fps: float) -> int:
    """Frames at ``target_fps`` covering ``frames`` frames at ``fps`` (the same duration, rounded, at least 1)."""
    return max(1, int(round(frames * float(target_fps) / float(fps))))


def retime(exp: torch.Tensor, fps: float, target_fps: float, num_frames: int | None = None
           ) -> tuple[torch.Tensor, list[str]]:
    """Expressions [T,64] at ``fps`` -> ``num_frames`` frames at ``target_fps`` (linear in time; last frame held).

    ``num_frames`` None or 0: the same duration. The notes say what changed (nothing at the same fps and length).
    """
    fps = _positive_fps(fps, "The source fps")
    target_fps = _positive_fps(target_fps, "The target fps")
    t = int(exp.shape[0])
    if t == 0:
        raise InputError("The motion has no frames to re-time.")
    n = duration_frames(t, fps, target_fps) if not num_frames else int(num_frames)
    if n < 0:
        raise InputError(f"The frame count must be 0 (the same duration) or positive; got {num_frames}")
    notes: list[str] = []
    if n == t and fps == target_fps:
        return exp.clone(), notes
    out = resample_motion(exp, target_fps, n, src_fps=fps)
    if fps != target_fps or n != t:
        notes.append(f"re-timed {t} frames at {fps:g} fps ({t / fps:.2f} s) to {n} frames at {target_fps:g} fps "
                     f"({n / target_fps:.2f} s) by linear interpolation in time")
    held = n - int(math.floor((t - 1) * target_fps / fps)) - 1  # frames past the source's last one
    if held > 0:
        notes.append(f"the last {held} frame{'s' if held > 1 else ''} hold the source's last frame (the source "
                     f"covers {t / fps:.2f} s, {n / target_fps:.2f} s were asked for)")
    return out, notes


def fill_gaps(values: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Rows [T,...] where ``present`` [T] is False, interpolated linearly from the nearest present rows on both
    sides; before the first / after the last present row that row is held. Notes say how many were filled."""
    present = present.to(torch.bool).reshape(-1)
    t = int(present.shape[0])
    if t != values.shape[0]:
        raise InputError(f"{values.shape[0]} rows but {t} presence flags")
    if not bool(present.any()):
        raise InputError("No frame of the face track has a face: there is no expression to take. Check the video "
                         "(one visible face) or lower min_face_size in JoyGen Load 3DMM Models.")
    missing = int((~present).sum())
    if missing == 0:
        return values.clone(), []
    idx = torch.arange(t)
    prev = torch.where(present, idx, torch.full_like(idx, -1)).cummax(0).values
    nxt = torch.where(present, idx, torch.full_like(idx, t)).flip(0).cummin(0).values.flip(0)
    lo = torch.where(prev < 0, nxt, prev)
    hi = torch.where(nxt >= t, prev, nxt)
    span = (hi - lo).to(torch.float64)
    w = torch.where(span > 0, (idx - lo).to(torch.float64) / span.clamp(min=1), torch.zeros(()))  # 0: held edge
    w = w.to(values.dtype).reshape(-1, *([1] * (values.ndim - 1)))
    filled = torch.where(present.reshape(w.shape), values, values[lo] * (1 - w) + values[hi] * w)
    runs = int((present[1:] & ~present[:-1]).sum()) + int(not bool(present[-1]))  # gaps end at a face or the end
    first, last = int(present.nonzero()[0]), int(present.nonzero()[-1])
    edges = [f"{first} at the start" if first else "", f"{t - 1 - last} at the end" if last < t - 1 else ""]
    edge = " and ".join(e for e in edges if e)
    notes = [f"{missing} of {t} frames had no face ({runs} gap{'s' if runs > 1 else ''}): filled by linear "
             f"interpolation between the neighbouring faces" + (f"; {edge} hold the nearest face" if edge else "")]
    return filled, notes


def motion_from_track(track: FaceTrack, fps: float | None = None, num_frames: int | None = None,
                      target_fps: float | None = None) -> Motion:
    """The expression coefficients of a face track (coeffs[:, 80:144]) as a Motion, re-timed.

    ``fps``: the track's frame rate (None: ``track.fps``, else 25 with a note). ``target_fps`` (None: the same)
    and ``num_frames`` (None / 0: the track's duration) set the output. Frames without a face are filled first
    (:func:`fill_gaps`). ``meta['notes']`` says what was filled and re-timed.
    """
    notes: list[str] = []
    if fps is None or fps == 0:
        fps = track.fps
        if fps is None:
            fps = 25.0
            notes.append("the face track does not say its fps: taken as 25 fps")
    fps = _positive_fps(fps, "The face track's fps")
    target = fps if target_fps is None or target_fps == 0 else _positive_fps(target_fps, "The target fps")
    a, b = COEFF_SPLITS["exp"]
    exp = track.coeffs[:, a:b].to(torch.float32).cpu()
    exp, filled = fill_gaps(exp, track.detected.cpu())
    exp, timed = retime(exp, fps, target, num_frames)
    notes += filled + timed
    for note in notes:
        log.info("motion from video: %s", note)
    meta = {"source": "face track", "source_fps": fps, "source_frames": len(track),
            "frames_without_face": int((~track.detected.to(torch.bool)).sum())}
    return _with_notes(exp, target, meta, notes)


def scale_amplitude(exp: torch.Tensor, amplitude: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """``center + amplitude * (exp - center)``; ``center`` defaults to the mean expression over time.

    Amplitude 1 returns the input unchanged (a copy), 0 the centre in every frame.
    """
    amplitude = float(amplitude)
    if not math.isfinite(amplitude):
        raise InputError(f"The amplitude must be a finite number; got {amplitude!r}")
    if amplitude == 1.0:
        return exp.clone()
    c = exp.mean(0, keepdim=True) if center is None else center.to(exp).reshape(1, -1)
    return (c + amplitude * (exp - c)).expand_as(exp).contiguous()


def smooth(exp: torch.Tensor, fps: float, cutoff_hz: float) -> tuple[torch.Tensor, list[str]]:
    """Zero-phase low-pass over time: order-2 Butterworth at ``cutoff_hz``, run forward and backward.

    0 is off (a copy, no note). Negative or not finite: InputError. At or above fps / 2: nothing to remove
    (a copy and a note). Edges are extended by odd reflection (scipy's default), so levels and slopes there hold.
    """
    fps = _positive_fps(fps, "The motion's fps")
    cutoff = float(cutoff_hz)
    if not math.isfinite(cutoff) or cutoff < 0:
        raise InputError(f"The smoothing cutoff must be 0 (off) or a positive frequency in Hz; got {cutoff_hz!r}")
    if cutoff == 0:
        return exp.clone(), []
    nyquist = fps / 2
    if cutoff >= nyquist:
        return exp.clone(), [f"smoothing cutoff {cutoff:g} Hz is at or above half the frame rate ({nyquist:g} Hz): "
                             "there is nothing faster to remove, the motion is unchanged"]
    t = int(exp.shape[0])
    if t < 2:
        return exp.clone(), [f"smoothing needs at least 2 frames; the motion has {t}: unchanged"]
    from scipy.signal import butter, sosfiltfilt

    sos = butter(SMOOTHING_ORDER, cutoff, btype="low", fs=fps, output="sos")
    pad = min(3 * (2 * sos.shape[0] + 1), t - 1)  # scipy's default, shortened for short clips
    out = sosfiltfilt(sos, exp.double().numpy(), axis=0, padlen=pad)
    return torch.from_numpy(out.copy()).to(exp.dtype), [f"smoothed with a zero-phase low-pass at {cutoff:g} Hz"]


def shift(exp: torch.Tensor, frames: float, fps: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """Delay by ``frames`` (negative: earlier): ``out[i] = exp[i - frames]``, linear between frames, edges held.

    An integer shift is exact indexing. A shift as long as the clip or longer holds the edge frame everywhere
    (and says so).
    """
    k = float(frames)
    if not math.isfinite(k):
        raise InputError(f"The shift must be a finite number of frames; got {frames!r}")
    t = int(exp.shape[0])
    if k == 0 or t == 0:
        return exp.clone(), []
    pos = (torch.arange(t, dtype=torch.float64) - k).clamp(0, t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo.to(torch.float64)).to(exp.dtype)[:, None]
    out = exp[lo] if float(w.abs().max()) == 0 else exp[lo] * (1 - w) + exp[hi] * w
    edge = "first" if k > 0 else "last"
    secs = f" ({k / fps:+.3f} s)" if fps else ""
    held = min(t, int(math.ceil(abs(k))))
    if abs(k) >= t - 1:
        note = (f"shift of {k:+g} frames{secs} is as long as the {t}-frame clip or longer: every frame holds the "
                f"{edge} frame")
    else:
        note = (f"shifted by {k:+g} frames{secs}: the mouth moves {'later' if k > 0 else 'earlier'}; the {edge} "
                f"{held} frame{'s' if held > 1 else ''} hold the {edge} frame")
    return out, [note]


def mix(a: Motion, b: Motion, weight: float) -> Motion:
    """``(1 - weight) * a + weight * b``, with ``b`` re-timed to ``a``'s fps and length first (said in the notes)."""
    w = float(weight)
    if not math.isfinite(w) or not 0.0 <= w <= 1.0:
        raise InputError(f"The mix weight must be between 0 (only the first motion) and 1 (only the second); got "
                         f"{weight!r}")
    notes = _notes(a)
    b_exp, timed = retime(b.exp, b.fps, a.fps, len(a))
    if timed:
        notes.append("second motion: " + "; ".join(timed) + " to match the first")
    if w == 0:
        out = a.exp.clone()
    elif w == 1:
        out = b_exp
    else:
        out = (1 - w) * a.exp + w * b_exp.to(a.exp.dtype)
    notes.append(f"mixed {1 - w:g} x first + {w:g} x second motion")
    return _with_notes(out, a.fps, a.meta, notes)


def adjust_motion(motion: Motion, amplitude: float = 1.0, smoothing_hz: float = 0.0, shift_frames: float = 0.0,
                  other: Motion | None = None, mix_weight: float = 0.0) -> Motion:
    """Mix (when ``other`` is given), then amplitude, smoothing and shift; the identity at the defaults.

    This is what the Adjust Motion node runs, and what a pipeline applies to its audio-driven motion
    (``adjust_motion(motion, amplitude=..., shift_frames=...)``). ``meta['notes']`` lists what changed.
    """
    out = mix(motion, other, mix_weight) if other is not None else _with_notes(motion.exp, motion.fps, motion.meta,
                                                                             _notes(motion))
    notes = _notes(out)
    exp = scale_amplitude(out.exp, amplitude)
    if float(amplitude) != 1.0:
        notes.append(f"mouth amplitude x{float(amplitude):g} around the mean expression")
    exp, n = smooth(exp, out.fps, smoothing_hz)
    notes += n
    exp, n = shift(exp, shift_frames, out.fps)
    notes += n
    changes = notes[len(_notes(motion)):]
    for note in changes:
        log.info("adjust motion: %s", note)
    result = _with_notes(exp, out.fps, out.meta, notes)
    if changes:
        result.meta["adjusted"] = True  # plots label it apart from the motion it came from
    return result
