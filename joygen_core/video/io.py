"""Video and audio file I/O with PyAV (its wheels carry libx264 and AAC: no system ffmpeg needed).

Frames stream through generators in chunks, so a long video never sits in memory; the writer takes
a frame iterator and the driving audio and produces one MP4 (H.264 yuv420p + AAC) in one encode,
written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import MediaError

log = logging.getLogger(__name__)

NTSC_RATES = (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001), Fraction(120000, 1001))


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds. ``width`` / ``height`` are after rotation metadata is applied."""

    path: Path
    fps: Fraction
    frame_count: int
    width: int
    height: int
    rotation: int
    duration: float
    has_audio: bool
    variable_frame_rate: bool
    pix_fmt: str
    start_time: float = 0.0
    """Seconds: frame i of a constant-rate file is shown at ``start_time + i / fps``."""


class DamagedStreamError(MediaError):
    """A stream read with ``strict=True`` holds damage: a packet the decoder refused, or the file cut short."""


@dataclass
class AudioClip:
    """A decoded audio track: float32 waveform [C, T] in [-1, 1] and its sample rate."""

    waveform: torch.Tensor
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.waveform.shape[-1] / float(self.sample_rate)

    @property
    def channels(self) -> int:
        return int(self.waveform.shape[0])


AAC_RATES = frozenset((8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000))
"""Sample rates the AAC encoder takes; other rates are resampled to 48 kHz for the output track."""


def as_fraction(fps: float | Fraction | int) -> Fraction:
    """An exact frame rate: NTSC rates written as 29.97 / 23.976 / 59.94 become their 1001 fractions."""
    if isinstance(fps, Fraction):
        return fps
    if not fps or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise MediaError(f"Frame rate must be a positive number; got {fps!r}.")
    for r in NTSC_RATES:
        if abs(float(fps) - float(r)) < 2e-3:
            return r
    return Fraction(float(fps)).limit_denominator(1001)


def _open(path: Path | str):
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Media file {path} does not exist.")
    if path.stat().st_size == 0:
        raise MediaError(f"Media file {path} is empty (0 bytes).")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.* subclasses vary between versions
        raise MediaError(f"Cannot read {path} as audio/video ({exc}). Is it a complete media file?") from exc


def _rotation(stream, first_frame=None) -> int:
    """Display rotation in degrees (multiple of 90, counter-clockwise as stored in the display matrix)."""
    rot = None
    if first_frame is not None:
        rot = getattr(first_frame, "rotation", None)
    if not rot:
        tag = stream.metadata.get("rotate") if stream.metadata else None
        rot = -int(tag) if tag else 0
    return int(round(rot / 90.0)) * 90 % 360


def _apply_rotation(arr: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate [H,W,3] so it displays upright; ``rotation`` is PyAV's counter-clockwise angle."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(arr, k=k)) if k else arr


def _av_error() -> type[Exception]:
    """PyAV's base error class (``av.FFmpegError``; only ``av.error.FFmpegError`` in older releases)."""
    import av

    return getattr(av, "FFmpegError", None) or av.error.FFmpegError


_WARNED: set[tuple] = set()


def _warn_once(path: Path, key: tuple, msg: str, *args) -> None:
    """One warning per damaged part of a file per process: probe, readers and seeks all meet the same damage."""
    try:
        st = path.stat()
        ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        ident = (str(path),)
    if (ident, key) in _WARNED:
        return
    if len(_WARNED) > 4096:
        _WARNED.clear()
    _WARNED.add((ident, key))
    log.warning(msg, *args)


class _Damage:
    """What one decode pass lost: packets the decoder refused (or cut short), and the frame spans held over them."""

    def __init__(self, path: Path):
        self.path = path
        self.lost = 0
        self.lost_times: list[float] = []
        self.read_error: Exception | None = None
        self.spans: list[tuple[int, int]] = []  # video frame indices filled by holding, inclusive
        self.gaps: list[tuple[float, float]] = []  # audio seconds filled with silence

    @property
    def seen(self) -> bool:
        return self.lost > 0 or self.read_error is not None

    def refused(self, packet, tb: float | None) -> None:
        self.lost += 1
        if packet.pts is not None and tb:
            self.lost_times.append(packet.pts * tb)

    def held(self, first: int, last: int) -> None:
        if self.spans and self.spans[-1][1] + 1 >= first:
            self.spans[-1] = (self.spans[-1][0], max(self.spans[-1][1], last))
        else:
            self.spans.append((first, last))

    def report_video(self, fps: Fraction, t0: float = 0.0, packets: bool = False) -> None:
        """One warning naming the frames (and times) that show a held frame; with ``packets``, else the packets
        lost (a variable-rate stream, where the re-timer holds frames; a cut end is :func:`probe_video`'s)."""
        if self.spans:
            rate = float(fps)
            parts = [f"frames {a}-{b} ({a / rate:.2f}-{(b + 1) / rate:.2f} s)" if b > a
                     else f"frame {a} ({a / rate:.2f} s)" for a, b in self.spans]
            _warn_once(self.path, ("video", tuple(self.spans)),
                       "%s: its video stream is damaged: %s could not be decoded; each shows the last good frame "
                       "before it, so the timing and frame count stay those of the stream.", self.path,
                       ", ".join(parts))
        elif packets and self.lost and self.lost_times:
            a, b = min(self.lost_times) - t0, max(self.lost_times) - t0
            _warn_once(self.path, ("video-packets", self.lost, round(a, 3)),
                       "%s: its video stream is damaged: %d packets between %.2f and %.2f s could not be decoded "
                       "and were skipped.", self.path, self.lost, a, b)


def _safe_decode(container, stream, damage: _Damage) -> Iterator:
    """Decoded frames of ``stream``, packet by packet, as ffmpeg does: a packet the decoder refuses (or that the
    file cut short) is skipped and counted in ``damage`` instead of ending the decode; a read error ends the
    stream there (what was decoded before it is kept)."""
    error = _av_error()
    tb = float(stream.time_base) if stream.time_base else None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except error as exc:
            damage.read_error = exc
            break
        if packet.is_corrupt:  # a partial packet (the file ends inside it): its frame is lost
            damage.refused(packet, tb)
            continue
        try:
            frames = packet.decode()
        except error:
            damage.refused(packet, tb)
            continue
        yield from frames
    try:  # the demuxer gave up: flush what the decoder still holds
        yield from stream.codec_context.decode(None)
    except error:
        pass


def probe_video(path: Path | str) -> VideoInfo:
    """Frame rate (exact), frame count, size (after rotation), duration, audio presence of a video file.

    The frame count is what :func:`iter_frames` and :class:`FrameReader` deliver: frames whose packets are
    missing or cut short at the end of a truncated file are not counted (one warning says so).
    """
    path = Path(path)
    error = _av_error()
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream.")
        stream = container.streams.video[0]
        try:
            return _probe(path, container, stream, error)
        except error as exc:
            raise MediaError(f"Cannot read the video stream of {path} ({exc}). Is it a complete video file?") from exc


def _probe(path: Path, container, stream, error: type[Exception]) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(f"{path}: the video stream has no frame rate.")
    fps = Fraction(rate.numerator, rate.denominator)
    fps = as_fraction(fps) if abs(float(fps) - round(float(fps))) > 1e-6 else fps
    tb = float(stream.time_base) if stream.time_base else 0.0
    # Count frames by demuxing (no decode): exact even when the header lacks or misstates it. Packets cut
    # short inside the file are counted (the readers hold the frame before them); at its end they are not.
    count = cut = 0
    pts: list[int] = []
    first_pts: int | None = None
    read_error = None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except error as exc:
            read_error = exc
            break
        if not packet.size or packet.pts is None or packet.is_discard:
            continue
        if packet.is_corrupt:
            cut += 1
            continue
        count += cut + 1
        cut = 0
        first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
        if len(pts) < 4096:
            pts.append(packet.pts)
    if count == 0:
        raise MediaError(f"{path} holds no video frames" + (" that can be read." if cut or read_error else "."))
    vfr = False
    if len(pts) > 2 and tb:
        d = np.diff(np.sort(np.asarray(pts, dtype=np.float64))) * tb
        vfr = bool(d.size and (d.max() - d.min()) > 0.5 / float(fps))
    announced = int(stream.frames or 0)
    if cut or read_error is not None:
        _warn_once(path, ("cut", count), "%s is cut short or damaged at its end: its video stops after frame %d "
                   "(%.2f s)%s; the rest is missing, so the video ends there.", path, count, count / float(fps),
                   f" of the {announced} its header announces" if announced > count else "")
    container.seek(0)
    damage = _Damage(path)
    first = next(_safe_decode(container, stream, damage), None)
    if first is None:
        raise MediaError(f"{path}: none of its {count} video frames can be decoded (the stream is damaged "
                         "or in a format this build of ffmpeg cannot decode).")
    rotation = _rotation(stream, first)
    w, h = stream.codec_context.width or first.width, stream.codec_context.height or first.height
    if rotation in (90, 270):
        w, h = h, w
    duration = count / float(fps)
    if container.duration:
        duration = min(max(duration, 0.0), container.duration / 1e6) if vfr else duration
    return VideoInfo(path=path, fps=fps, frame_count=count, width=w, height=h, rotation=rotation,
                     duration=duration, has_audio=bool(container.streams.audio), variable_frame_rate=vfr,
                     pix_fmt=str(stream.codec_context.pix_fmt),
                     start_time=float(first_pts * tb) if first_pts is not None and tb else 0.0)


def _decoded(path: Path | str, damage: _Damage | None = None) -> Iterator[tuple[np.ndarray, float | None]]:
    """Every decodable frame of the first video stream, upright RGB uint8, with its time in seconds (or None).

    Packets the decoder refuses are skipped and counted in ``damage``; see :func:`_video_frames` for timing.
    """
    damage = damage if damage is not None else _Damage(Path(path))
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        rotation = None
        for frame in _safe_decode(container, stream, damage):
            if rotation is None:
                rotation = _rotation(stream, frame)
            t = frame.pts * tb if (frame.pts is not None and tb) else None
            yield _apply_rotation(frame.to_ndarray(format="rgb24"), rotation), t


def _held(frames: Iterable[tuple[np.ndarray, float | None]], fps: Fraction, t0: float, damage: _Damage,
          first: int = 0, count: int | None = None) -> Iterator[tuple[np.ndarray, float | None]]:
    """Constant-rate frames at consecutive indices ``first, first+1, ..`` (frame i is shown at t0 + i / fps).

    Once the decode has lost packets, an index the decoder skipped shows the last good frame (the first good
    one, before any), and a frame for an index already given is dropped, so timing and count stay the stream's;
    with ``count`` a damaged stream is held to that many frames. An undamaged stream passes unchanged.
    """
    rate = float(fps)
    i = first
    held: np.ndarray | None = None
    for arr, t in frames:
        if damage.seen and t is not None:
            k = int(round((t - t0) * rate))
            if k < i:
                continue
            if k > i:
                damage.held(i, k - 1)
                fill = arr if held is None else held
                while i < k:
                    yield fill, t0 + i / rate
                    i += 1
        yield arr, t
        held = arr
        i += 1
    if held is not None and count is not None and damage.seen and i < count:
        damage.held(i, count - 1)
        while i < count:
            yield held, t0 + i / rate
            i += 1


def _video_frames(path: Path, info: VideoInfo, strict: bool = False) -> Iterator[tuple[np.ndarray, float | None]]:
    """Decoded frames with their times; for a constant-rate file damaged spans are held (:func:`_held`) so
    exactly ``info.frame_count`` frames come out. One warning names the damaged frames. ``strict``: the first
    damage raises :class:`DamagedStreamError` instead (only genuine frames come out)."""
    damage = _Damage(path)
    if strict:
        frames = _decoded(path, damage)
        try:
            for item in frames:
                if damage.seen:
                    break
                yield item
        finally:
            frames.close()
        if damage.seen:
            near = f" near {min(damage.lost_times) - info.start_time:.2f} s" if damage.lost_times else ""
            raise DamagedStreamError(f"{path}: its video stream is damaged{near} (a packet the decoder refuses, "
                                     "or the file cut short); re-encode or replace the file.")
        return
    try:
        if info.variable_frame_rate:  # times carry the timing: the re-timer holds frames across gaps
            yield from _decoded(path, damage)
        else:
            yield from _held(_decoded(path, damage), info.fps, info.start_time, damage, count=info.frame_count)
    finally:
        damage.report_video(info.fps, info.start_time, packets=info.variable_frame_rate)


def _retimed(frames: Iterator[tuple[np.ndarray, float | None]], fps: Fraction, end_time: float | None
             ) -> Iterator[np.ndarray]:
    """Constant-rate frames: output i shows the source frame nearest in time to i / fps (ffmpeg's fps filter)."""
    rate = float(fps)
    prev: np.ndarray | None = None
    prev_t = t0 = 0.0
    i = 0
    for n, (arr, t) in enumerate(frames):
        t = n / rate if t is None else t
        if prev is None:
            t0 = t
        t -= t0
        if prev is not None:
            mid = (prev_t + t) / 2
            while i / rate < mid - 1e-9:
                yield prev
                i += 1
        prev, prev_t = arr, t
    if prev is not None:
        end = prev_t + 1.0 / rate if end_time is None else max(end_time, prev_t + 0.5 / rate)
        while i == 0 or i / rate < end - 0.5 / rate - 1e-9:
            yield prev
            i += 1


def iter_frames(
    path: Path | str,
    chunk_size: int = 32,
    fps: float | Fraction | None = None,
    start: int = 0,
    max_frames: int | None = None,
    strict: bool = False,
) -> Iterator[np.ndarray]:
    """Decode a video to RGB uint8 chunks [n, H, W, 3] (rotation applied, any pixel format).

    With ``fps`` (or for a variable-frame-rate file) frames are re-timed to that constant rate by
    presentation time, each output frame showing the nearest source frame. ``start`` / ``max_frames``
    count output frames. Only one chunk is held in memory at a time. A damaged stream decodes as ffmpeg
    decodes it: frames lost inside it show the last good frame (one warning names them), a cut file ends early.
    ``strict=True`` (training data, which wants only genuine frames): the first damage raises
    :class:`DamagedStreamError` instead.
    """
    info = probe_video(path)
    target = as_fraction(fps) if fps is not None else (info.fps if info.variable_frame_rate else None)
    source: Iterator[np.ndarray]
    if target is None:
        source = (arr for arr, _ in _video_frames(info.path, info, strict))
    else:
        source = _retimed(_video_frames(info.path, info, strict), target,
                          info.duration if not info.variable_frame_rate else None)
    chunk: list[np.ndarray] = []
    stop = None if max_frames is None else start + max_frames
    for i, arr in enumerate(source):
        if stop is not None and i >= stop:
            break
        if i < start:
            continue
        chunk.append(arr)
        if len(chunk) == chunk_size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def read_frames(path: Path | str, fps: float | Fraction | None = None, max_frames: int | None = None) -> np.ndarray:
    """All frames at once, uint8 [T, H, W, 3]; for short clips (use :func:`iter_frames` for long ones)."""
    chunks = list(iter_frames(path, chunk_size=64, fps=fps, max_frames=max_frames))
    if not chunks:
        raise MediaError(f"{path} holds no decodable video frames.")
    return np.concatenate(chunks)


def probe_audio(path: Path | str) -> None:
    """A cheap check, before any model loads, that ``path`` has an audio track :func:`read_audio` can use.

    Decodes packet by packet (damage is skipped, as :func:`read_audio` skips it) until the first finite sample,
    so a good file costs one packet; a track with nothing decodable, or only NaN / inf samples (read to its
    end), is the :class:`MediaError` :func:`read_audio` would raise later.
    """
    path = Path(path)
    error = _av_error()
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio track. Give an audio file, or a video that has sound.")
        stream = container.streams.audio[0]
        damage = _Damage(path)
        samples = 0
        try:
            for frame in _safe_decode(container, stream, damage):
                if frame.samples:
                    if np.isfinite(frame.to_ndarray()).any():
                        return
                    samples += frame.samples * max(len(frame.layout.channels), 1)
        except error as exc:
            raise MediaError(f"Cannot decode the audio of {path} ({exc}). Is it a complete media file?") from exc
    if samples:
        raise MediaError(f"{path} holds no usable audio: all {samples} of its samples are NaN or infinite. "
                         "Give another audio file (or export this one again).")
    why = " that can be decoded (the file is damaged)" if damage.seen else ""
    raise MediaError(f"{path}: its audio track holds no samples{why}.")


def read_audio(path: Path | str) -> AudioClip:
    """Decode the first audio stream of an audio or video file to float32 [C, T] at its own rate.

    Damaged audio decodes as ffmpeg decodes it: packets the decoder refuses become silence of their length
    (the timing stays), a cut file ends early, NaN / inf samples become silence (one warning for each);
    a file with no usable sample is a :class:`MediaError` naming it.
    """
    path = Path(path)
    error = _av_error()
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio track. Give an audio file, or a video that has sound.")
        stream = container.streams.audio[0]
        try:
            data, rate, channels, end_s = _decode_audio(path, container, stream)
        except error as exc:
            raise MediaError(f"Cannot decode the audio of {path} ({exc}). Is it a complete media file?") from exc
    data = data[:channels] if data.shape[0] >= channels else data
    if end_s is not None:
        # AAC decodes whole 1024-sample frames: the stream duration says where the real samples end.
        n = int(round(end_s * rate))
        if 0 < n < data.shape[1]:
            data = data[:, :n]
    from ..audio.prepare import finite_audio

    wav = finite_audio(torch.from_numpy(np.ascontiguousarray(data)), str(path))
    return AudioClip(waveform=wav, sample_rate=int(rate))


def _decode_audio(path: Path, container, stream) -> tuple[np.ndarray, int, int, float | None]:
    """(samples [C', T] float32, rate, channel count, the header's end in seconds or None) of an open stream."""
    import av

    rate = stream.codec_context.sample_rate or stream.rate
    channels = stream.codec_context.channels or 1
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=rate)
    tb = float(stream.time_base) if stream.time_base else None
    damage = _Damage(path)
    parts: list[np.ndarray] = []
    start = end_t = max(float(stream.start_time * tb), 0.0) if stream.start_time is not None and tb else 0.0
    for frame in _safe_decode(container, stream, damage):
        t = frame.pts * tb if frame.pts is not None and tb else None
        if damage.seen and t is not None and round((t - end_t) * rate) > 0:
            # packets lost before this frame: silence of their length keeps the rest in time
            damage.gaps.append((end_t, t))
            rows = len(stream.layout.channels) if stream.layout else channels
            parts.append(np.zeros((rows, int(round((t - end_t) * rate))), np.float32))
        for out in resampler.resample(frame):
            parts.append(out.to_ndarray())
        if t is not None:
            end_t = t + frame.samples / float(frame.sample_rate or rate)
    for out in resampler.resample(None):
        parts.append(out.to_ndarray())
    # read while open: PyAV 17+ refuses stream properties once the container is closed
    end_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    if not parts:
        why = " that can be decoded (the file is damaged)" if damage.seen else ""
        raise MediaError(f"{path}: its audio track holds no samples{why}.")
    data = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
    del parts
    if data.shape[1] == 0:
        raise MediaError(f"{path}: its audio track holds no samples.")
    if damage.gaps:
        spans = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in damage.gaps)
        _warn_once(path, ("audio", tuple(damage.gaps)), "%s: its audio track is damaged: %s could not be decoded "
                   "and is silence (the rest keeps its timing).", path, spans)
    # an MP4's sample tables give the exact length (elsewhere a header's duration may be an estimate)
    exact = "mp4" in (container.format.name or "")
    if (damage.seen or exact) and end_s is not None and end_s - (end_t - start) > 0.05:
        _warn_once(path, ("audio-cut", round(end_t, 3)), "%s is cut short or damaged at its end: its audio stops "
                   "at %.2f s of the %.2f s its header announces.", path, end_t - start, end_s)
    return data, int(rate), int(channels), end_s


def _even(x: int) -> int:
    return x + (x % 2)


def _pad_even(chunk: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: odd frames get one replicated edge row / column."""
    h, w = chunk.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return chunk
    return np.pad(chunk, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


ENCODERS = ("auto", "libx264", "h264_nvenc")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# x264's presets on NVENC's p1 (fastest) .. p7 (best): medium is NVENC's own default p4, as in ffmpeg, whose
# nvenc encoder takes "medium" as an alias of p4; the rest spread evenly to either side.
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                 "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7"}
_PROBED: dict[tuple[str, int, int], str | None] = {}


def _encoder_failure(name: str, width: int = 256, height: int = 256) -> str | None:
    """None if this PyAV's FFmpeg can really encode H.264 with ``name`` at this size, else why not.

    A codec being listed proves nothing for NVENC: the wheels carry h264_nvenc, and opening it fails only
    where no NVIDIA driver and GPU answer. So one small frame is encoded, once per process and size.
    """
    key = (name, _even(width), _even(height))
    if key not in _PROBED:
        import av

        try:
            if name not in av.codecs_available:
                raise MediaError(f"this FFmpeg build (PyAV {av.__version__}) has no {name} encoder")
            ctx = av.CodecContext.create(name, "w")
            ctx.width, ctx.height = key[1], key[2]
            ctx.pix_fmt = "yuv420p"
            ctx.time_base = Fraction(1, 25)
            ctx.framerate = Fraction(25)
            frame = av.VideoFrame.from_ndarray(np.zeros((key[2], key[1], 3), np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = 0
            ctx.encode(frame)
            ctx.encode(None)
            _PROBED[key] = None
        except Exception as exc:  # av.error.* (PermissionError, ValueError, ...) differ between codecs and versions
            _PROBED[key] = str(exc) or type(exc).__name__
    return _PROBED[key]


def nvenc_available() -> bool:
    """True when torch sees a CUDA GPU and PyAV's FFmpeg opens h264_nvenc on it (probed once, then cached)."""
    import torch

    return bool(torch.cuda.is_available()) and _encoder_failure("h264_nvenc") is None


def resolve_encoder(encoder: str = "auto", size: tuple[int, int] | None = None) -> str:
    """The H.264 encoder ``write_video`` uses: ``auto`` is h264_nvenc where :func:`nvenc_available` (and it takes
    a frame of ``size`` (width, height): NVENC has a minimum size), else libx264. A named encoder that cannot
    encode here is a :class:`MediaError`."""
    if encoder not in ENCODERS:
        raise MediaError(f"Unknown video encoder {encoder!r}; use one of {', '.join(ENCODERS)}.")
    if encoder == "auto":
        if nvenc_available() and (size is None or _encoder_failure("h264_nvenc", *size) is None):
            return "h264_nvenc"
        return "libx264"
    why = _encoder_failure(encoder, *(size or (256, 256)))
    if why is not None:
        hint = (" NVENC needs an NVIDIA GPU with its driver; use encoder 'auto' or 'libx264'."
                if "nvenc" in encoder else "")
        raise MediaError(f"The video encoder {encoder} is not available here ({why}).{hint}")
    return encoder


def encoder_options(encoder: str, crf: int = 18, preset: str = "medium") -> dict[str, str]:
    """FFmpeg options of ``encoder`` for x264's quality scale ``crf`` and speed ``preset``.

    libx264 takes them as they are. NVENC has no CRF: its constant-quality mode (``rc vbr`` with ``cq`` and no
    bitrate target) on the same 0-51 quantiser scale stands in, ``cq`` = ``crf`` (0 is lossless, via NVENC's
    lossless tune, since cq 0 means "automatic" there); the preset maps by :data:`NVENC_PRESETS`, and NVENC's
    own ``p1`` .. ``p7`` are accepted too (for libx264 they map back to the x264 preset of the same rank).
    """
    crf = int(crf)
    if not 0 <= crf <= 51:
        raise MediaError(f"crf must be between 0 (lossless) and 51; got {crf}.")
    nvenc_own = tuple(f"p{i}" for i in range(1, 8))
    if preset not in X264_PRESETS and preset not in nvenc_own:
        raise MediaError(f"Unknown encoder preset {preset!r}; use one of {', '.join(X264_PRESETS)} "
                         "(or NVENC's p1 .. p7).")
    if encoder == "h264_nvenc":
        opts = {"preset": NVENC_PRESETS.get(preset, preset), "rc": "vbr"}
        if crf == 0:
            opts["tune"] = "lossless"
        else:
            opts.update({"tune": "hq", "cq": str(crf)})
        return opts
    if preset in nvenc_own:
        preset = ("ultrafast", "veryfast", "faster", "medium", "slow", "slower", "veryslow")[int(preset[1]) - 1]
    return {"crf": str(crf), "preset": preset}


def write_video(
    path: Path | str,
    frames: Iterable[np.ndarray | torch.Tensor],
    fps: float | Fraction,
    audio: AudioClip | None = None,
    crf: int = 18,
    preset: str = "medium",
    encoder: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Encode RGB uint8 chunks [n, H, W, 3] to an MP4 (H.264 yuv420p, AAC audio) in one pass.

    Frames are streamed in; audio is interleaved as the video advances. The file appears under its
    name only when complete: a failure or interruption leaves no partial output. Odd sizes are padded
    by one replicated row / column (yuv420p needs even sizes). ``crf`` is x264's quality (0 lossless,
    18 visually transparent, 23 default), ``preset`` its speed (ultrafast .. veryslow: slower is smaller at the
    same quality). ``encoder``: auto (h264_nvenc on a CUDA machine whose FFmpeg opens it, else libx264),
    libx264 or h264_nvenc; see :func:`encoder_options` for how crf and preset map to NVENC.
    """
    import av

    path = Path(path)
    if path.exists() and not overwrite:
        raise MediaError(f"{path} already exists; choose another name (outputs never overwrite files).")
    if encoder not in ENCODERS:
        raise MediaError(f"Unknown video encoder {encoder!r}; use one of {', '.join(ENCODERS)}.")
    encoder_options("libx264", crf, preset)  # bad settings fail here, before any file is made
    if encoder != "auto":
        resolve_encoder(encoder)  # so does an encoder this machine lacks
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = as_fraction(fps)
    tmp = path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")
    n_frames = 0
    codec = encoder
    try:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            vstream = None
            astream = None
            a_data = None
            a_pos = 0
            a_rate = 0
            if audio is not None:
                from ..audio.prepare import finite_audio, swr_resample

                a_rate = int(audio.sample_rate)
                # the models' cleaning (NaN / inf -> silence): the AAC encoder refuses non-finite samples
                wav = finite_audio(audio.waveform.detach().cpu(), f"The audio track for {path.name}")
                aac_rate = a_rate in AAC_RATES
                if not aac_rate or audio.channels > 2:  # resampled / downmixed to stereo as ffmpeg would
                    to_rate = a_rate if aac_rate else 48000
                    wav = swr_resample(wav, a_rate, to_rate, channels=min(audio.channels, 2))
                    a_rate = to_rate
                a_data = np.ascontiguousarray(np.clip(wav.numpy(), -1.0, 1.0), dtype=np.float32)
                del wav
                layout = "stereo" if a_data.shape[0] == 2 else "mono"
                astream = container.add_stream("aac", rate=a_rate, layout=layout)
                astream.bit_rate = 192000
                astream.time_base = Fraction(1, a_rate)

            def push_audio(until_s: float | None) -> None:
                nonlocal a_pos
                if astream is None or a_data is None:
                    return
                end = a_data.shape[1] if until_s is None else min(a_data.shape[1], int(until_s * a_rate))
                step = 1024 * 8
                while a_pos < end:
                    stop = min(a_pos + step, end)
                    block = a_data[:, a_pos:stop]
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp",
                                                    layout="stereo" if block.shape[0] == 2 else "mono")
                    af.sample_rate = a_rate
                    af.pts = a_pos
                    af.time_base = Fraction(1, a_rate)
                    for packet in astream.encode(af):
                        container.mux(packet)
                    a_pos = stop

            for chunk in frames:
                if isinstance(chunk, torch.Tensor):
                    chunk = chunk.detach().cpu().numpy()
                chunk = np.asarray(chunk)
                if chunk.ndim == 3:
                    chunk = chunk[None]
                if chunk.dtype != np.uint8:
                    raise MediaError(f"write_video expects uint8 frames; got {chunk.dtype}.")
                if chunk.shape[-1] != 3:
                    raise MediaError(f"write_video expects RGB frames [n,H,W,3]; got {chunk.shape}.")
                if vstream is None:
                    h, w = chunk.shape[1:3]
                    codec = resolve_encoder(encoder, (w, h))
                    vstream = container.add_stream(codec, rate=rate)
                    vstream.width, vstream.height = _even(w), _even(h)
                    vstream.pix_fmt = "yuv420p"
                    if codec != "libx264":
                        vstream.codec_context.bit_rate = 0  # constant quality: no bitrate target to cap it
                    vstream.options = encoder_options(codec, crf, preset)
                    if h % 2 or w % 2:
                        edge = "column and row" if w % 2 and h % 2 else ("column" if w % 2 else "row")
                        log.warning("Frame size %dx%d is odd: H.264 in 4:2:0 (yuv420p, the format players play) "
                                    "stores only even sizes, so %s is %dx%d, its last %s repeated.", w, h, path.name,
                                    _even(w), _even(h), edge)
                    size = (h, w)
                elif chunk.shape[1:3] != size:
                    raise MediaError(f"Frame size changed mid-video: {size} then {chunk.shape[1:3]}.")
                for arr in _pad_even(chunk):
                    vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
                    vf.pts = n_frames
                    vf.time_base = 1 / rate
                    for packet in vstream.encode(vf):
                        container.mux(packet)
                    n_frames += 1
                push_audio(n_frames / float(rate))
                if progress is not None:
                    progress(n_frames)
            if vstream is None:
                raise MediaError("No frames to write: the video would be empty.")
            for packet in vstream.encode():
                container.mux(packet)
            push_audio(None)
            if astream is not None:
                for packet in astream.encode():
                    container.mux(packet)
        except BaseException:
            # closing writes the trailer: after a failed write that fails too, and would hide the first error
            with contextlib.suppress(Exception):
                container.close()
            raise
        container.close()
        os.replace(tmp, path)
    except OSError as exc:  # disk full, file too large, folder gone
        tmp.unlink(missing_ok=True)
        raise MediaError(f"Cannot write {path}: {exc.strerror or exc}. Free some space or choose another folder."
                         ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("Wrote %s: %d frames at %s fps%s (%s)", path, n_frames, rate, " with audio" if audio is not None else "",
             codec)
    return path


class FrameReader:
    """Random access to frame ranges of a video, streamed: ``read(start, stop)`` -> uint8 [n,H,W,3].

    Reading forward continues the open decoder; reading backward (ping-pong's reverse runs) seeks to the
    nearest key frame before ``start`` on constant-rate files, or restarts the decode on variable-rate ones.
    Only the frames asked for are held.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.info = probe_video(self.path)
        self._container = None
        self._frames: Iterator[np.ndarray] | None = None
        self._pos = 0  # index of the next frame the iterator yields

    def close(self) -> None:
        if self._frames is not None and hasattr(self._frames, "close"):
            self._frames.close()  # ends the decode pass (its damage warning, its container)
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _from_start(self) -> None:
        self.close()
        frames = _video_frames(self.path, self.info)
        if self.info.variable_frame_rate:
            self._frames = iter(_retimed(frames, self.info.fps, None))
        else:
            self._frames = (arr for arr, _ in frames)
        self._pos = 0

    def _start(self, index: int) -> None:
        """Position the decoder so the next frame yielded has an index <= ``index``."""
        if self.info.variable_frame_rate or index == 0:
            self._from_start()
            return
        self.close()
        info, fps = self.info, float(self.info.fps)
        container = _open(self.path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        rotation = info.rotation
        damage = _Damage(self.path)
        try:
            container.seek(max(int((info.start_time + index / fps) / tb) - 1, 0), stream=stream, backward=True,
                           any_frame=False)
            decoded = ((_apply_rotation(f.to_ndarray(format="rgb24"), rotation), float(f.pts * tb))
                       for f in _safe_decode(container, stream, damage) if f.pts is not None)
            head = next(decoded, None)
        except _av_error():
            head = None
        k = int(round((head[1] - info.start_time) * fps)) if head is not None else index + 1
        if k > index:  # the seek overshot (no key frame where expected, or damage there): decode from the start
            container.close()
            self._from_start()
            return
        self._container = container

        def frames() -> Iterator[np.ndarray]:
            try:
                for arr, _ in _held(_prepend(head, decoded), info.fps, info.start_time, damage, first=k,
                                    count=info.frame_count):
                    yield arr
            finally:
                damage.report_video(info.fps, info.start_time)

        self._frames = frames()
        self._pos = k

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start .. stop-1`` (clamped to the video) as uint8 [n,H,W,3]."""
        start, stop = max(int(start), 0), int(stop)
        if self._frames is None or start < self._pos:
            self._start(start)
        out = []
        while self._pos < stop:
            arr = next(self._frames, None)
            if arr is None:
                break
            if self._pos >= start:
                out.append(arr)
            self._pos += 1
        if not out:
            raise MediaError(f"{self.path}: frames {start}..{stop - 1} are past its end ({self._pos} frames).")
        return np.stack(out)


def _prepend(head, rest: Iterator) -> Iterator:
    yield head
    yield from rest
