"""Training data preparation: talking-face videos -> single-face clips with everything the trainer reads.

``python -m train prepare --videos DIR --out DATA --models MODELS``. Per video (official JoyGen
``preprocess_dataset.py`` / ``preprocess_dataset_extra.py``, paper section 4.5): re-time to 25 fps, find
the face in every frame, keep runs of frames holding exactly one face (runs with no face or several
faces are cut out, runs shorter than ``min_clip_frames`` dropped), and store per clip the 256x256 face
crops, the mouth depth maps, the face track (3DMM coefficients, boxes, landmarks) and the Whisper
features of every frame. Long videos are sampled to ``max_frames_per_video`` frames (paper: 10,000) as
evenly spaced runs of ``segment_frames``.

On-disk layout under ``out_dir`` (see :data:`FORMAT`)::

    manifest.jsonl                 one line per clip: {"clip", "video", "frames", "start", "fps", "source"}
    summary.json                   what the last run did and dropped (summary-shard<i>of<n>.json per shard)
    videos/<video_id>/video.json   per video: source, frame counts, drops by reason, its clips (written last)
    videos/<video_id>/c000.face.npy         uint8 [T,256,256,3] RGB face crops (memory-mappable)
    videos/<video_id>/c000.depth.npy        uint8 [T,256,256] mouth depth (0 = background)
    videos/<video_id>/c000.track.safetensors  the clip's FaceTrack (``FaceTrack.load``), fps 25
    videos/<video_id>/c000.whisper.safetensors "features": float16 [T,50,384], no positional encoding

Differences from the official scripts on purpose: lossless maps (the official saved JPEGs), frames with
no face or several faces cut out instead of kept with gaps, frames past the end of the audio dropped
(the official trimmed them afterwards), one streaming pass per video.

A video folder is written under a temporary name and renamed when complete, so a killed run or a full
disk leaves no half-written video; a later run skips finished videos and retries the rest.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from joygen_core.errors import JoyGenError, MediaError
from joygen_core.video.io import DamagedStreamError

log = logging.getLogger(__name__)

FORMAT = "joygen.train.prepared.v1"
VIDEOS_DIR = "videos"
VIDEO_META = "video.json"
MANIFEST = "manifest.jsonl"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")
FACE_SIZE = 256
DROP_REASONS = ("no_face", "several_faces", "too_short", "no_audio", "sampled_out")
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class PrepareSettings:
    """How clips are cut and sampled (stored in each video.json so a dataset says how it was made)."""

    fps: float = 25.0
    min_clip_frames: int = 25
    max_frames_per_video: int | None = 10000
    segment_frames: int = 250
    chunk_size: int = 64
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number; got {self.fps}")
        if self.min_clip_frames < 1:
            raise ValueError(f"min_clip_frames must be at least 1; got {self.min_clip_frames}")
        if self.max_frames_per_video is not None and self.max_frames_per_video < 1:
            raise ValueError(f"max_frames_per_video must be at least 1 (or None: all); got {self.max_frames_per_video}")
        if self.segment_frames < 1 or self.chunk_size < 1 or self.batch_size < 1:
            raise ValueError("segment_frames, chunk_size and batch_size must be at least 1")


# ----------------------------------------------------------------------------------------------- video list


def find_videos(paths: Iterable[Path | str]) -> list[Path]:
    """Video files named by ``paths``: files as given, folders searched recursively by suffix, ``.txt`` files
    read as lists (one path per line, relative to the list). Missing paths are an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
                          and not f.name.startswith("."))
        elif p.is_file() and p.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            out += [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines
                    if ln and not ln.startswith("#")]
        elif p.exists():
            out.append(p)
        else:
            raise MediaError(f"{p} does not exist; give video files, folders of videos or .txt lists of them.")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def video_id(path: Path | str) -> str:
    """Folder name of a video's output: its file stem (made filesystem-safe) + 8 hex of its absolute path,
    so two ``clip.mp4`` in different folders do not collide and the same file always maps to one name."""
    path = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "video"
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{stem[:80]}-{digest}"


def shard_of(vid: str, count: int) -> int:
    """The shard a video id belongs to: a hash, so the split needs no coordination between machines and
    does not move videos between shards when others are added."""
    return int(hashlib.sha1(vid.encode("utf-8")).hexdigest()[:12], 16) % int(count)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> (i, n)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"shard must be i/n with 0 <= i < n (e.g. 0/4); got {text!r}")
    return int(m.group(1)), int(m.group(2))


def sample_windows(n_frames: int, max_frames: int | None, segment: int) -> list[tuple[int, int]]:
    """Frame ranges [start, end) to keep: everything when short enough, else ``ceil(max/segment)`` runs
    spread evenly over the video, ``max_frames`` frames in all."""
    if max_frames is None or n_frames <= max_frames:
        return [(0, max(int(n_frames), 0))]
    k = math.ceil(max_frames / segment)
    lengths = [segment] * (k - 1) + [max_frames - segment * (k - 1)]
    if k == 1:
        start = (n_frames - lengths[0]) // 2
        return [(start, start + lengths[0])]
    span = n_frames - segment  # windows never overlap: segments fit since k*segment <= max+segment <= n
    starts = [round(i * span / (k - 1)) for i in range(k)]
    return [(s, s + n) for s, n in zip(starts, lengths)]


# ----------------------------------------------------------------------------------------------- models


@dataclass
class PrepareModels:
    """What preparation runs: the reconstruction models (detector, regressor, BFM) and the Whisper encoder."""

    recon: object
    whisper: torch.nn.Module
    device: torch.device


def load_prepare_models(models_dir: Path | str | Sequence[Path | str] | None, device: torch.device | str = "cpu"
                        ) -> PrepareModels:
    """Load from a model folder in the official layout (``ModelStore``: BFM, face_recon, whisper/tiny.pt)."""
    from joygen_core.audio.whisper import load_whisper_encoder
    from joygen_core.morphable.reconstruct import load_recon_models
    from joygen_core.weights import ModelStore

    store = ModelStore(models_dir)
    device = torch.device(device)
    recon = load_recon_models(store.path("bfm"), store.path("face_recon"), device,
                              mp468_path=store.path("bfm_mp468"))
    whisper = load_whisper_encoder(store.path("whisper"), device)
    return PrepareModels(recon=recon, whisper=whisper, device=device)


# ----------------------------------------------------------------------------------------------- writing


class NpyAppender:
    """Stream frames into a ``.npy`` file whose length is known only at the end.

    The header has a fixed 128-byte size, written with length 0 first and rewritten on close, so frames
    go straight to disk (a long clip never sits in memory) and the result is a plain memory-mappable npy.
    """

    HEADER = 128

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: str = "uint8"):
        self.path = Path(path)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(self.path, "wb")  # closed in close() / discard()
        self._write_header()

    def _write_header(self) -> None:
        shape = (self.count, *self.frame_shape)
        text = f"{{'descr': {self.dtype.str!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        pad = self.HEADER - 10 - len(text) - 1
        if pad < 0:  # pragma: no cover - shapes here are 4 small numbers
            raise ValueError(f"npy header too long for {shape}")
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little")
                      + (text + " " * pad + "\n").encode("latin1"))
        self._f.seek(0, os.SEEK_END)

    def append(self, frames: np.ndarray) -> None:
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        if frames.shape[1:] != self.frame_shape:
            raise ValueError(f"{self.path.name}: frames {frames.shape[1:]} != {self.frame_shape}")
        self._f.write(frames.tobytes())
        self.count += frames.shape[0]

    def close(self) -> None:
        self._write_header()
        self._f.close()

    def discard(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class _ClipWriter:
    """One clip being written: face crops and depth stream to npy files, the track and frame ids are kept."""

    def __init__(self, folder: Path, name: str, start: int, window: int):
        self.folder, self.name, self.start, self.window = folder, name, start, window
        self.faces = NpyAppender(folder / f"{name}.face.npy", (FACE_SIZE, FACE_SIZE, 3))
        self.depth = NpyAppender(folder / f"{name}.depth.npy", (FACE_SIZE, FACE_SIZE))
        self.tracks: list = []
        self.end = start

    def append(self, faces: np.ndarray, depth: np.ndarray, track) -> None:
        self.faces.append(faces)
        self.depth.append(depth)
        self.tracks.append(track)
        self.end += len(track)

    @property
    def frames(self) -> int:
        return self.end - self.start

    def discard(self) -> None:
        self.faces.discard()
        self.depth.discard()

    def finish(self, features: torch.Tensor, fps: float, video: str) -> dict:
        from safetensors.torch import save_file

        from joygen_core.face.track import FaceTrack

        self.faces.close()
        self.depth.close()
        track = FaceTrack.concat(self.tracks)
        track.meta.pop("multi_face_frames", None)  # a per-chunk count; the clip has one face throughout
        track.meta.update({"video": video, "clip": self.name, "start": self.start})
        track.save(self.folder / f"{self.name}.track.safetensors")
        save_file({"features": features.to(torch.float16).contiguous()},
                  str(self.folder / f"{self.name}.whisper.safetensors"),
                  metadata={"format": "joygen.whisper_frames.v1", "fps": json.dumps(fps),
                            "positional_encoding": "not added"})
        return {"name": self.name, "start": self.start, "frames": self.frames}


def _tmp_beside(path: Path) -> Path:
    """A temporary name next to ``path``, unique per machine and process (shards may share a folder)."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _write_json(path: Path, data) -> None:
    """Write then rename: a reader never sees half a file."""
    tmp = _tmp_beside(path)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ----------------------------------------------------------------------------------------------- one video


def _runs(index: torch.Tensor, window: torch.Tensor) -> list[tuple[int, int]]:
    """[a, b) ranges of ``index`` (ascending frame numbers) that are consecutive and in one sampling window."""
    if len(index) == 0:
        return []
    cut = ((index[1:] - index[:-1]) != 1) | (window[1:] != window[:-1])
    edges = [0] + (cut.nonzero()[:, 0] + 1).tolist() + [len(index)]
    return list(zip(edges[:-1], edges[1:]))


def _frame_status(track, frames_in_window: torch.Tensor, audio_frames: int, index: torch.Tensor,
                  detector) -> torch.Tensor:
    """Per frame: 0 usable (exactly one face, inside the audio), else 1 + the index of its DROP_REASONS."""
    from joygen_core.face.detect import detect_faces

    status = torch.zeros(len(index), dtype=torch.long)
    box = track.box
    ok_box = ((box[:, 2] - box[:, 0]) > 1) & ((box[:, 3] - box[:, 1]) > 1)
    status[~(track.detected & ok_box)] = 1 + DROP_REASONS.index("no_face")
    if track.meta.get("multi_face_frames", 0):
        # reconstruct counts frames with several faces but keeps only the chosen face; find which frames
        count = detect_faces(frames_in_window, detector).count
        status[(count > 1) & (status == 0)] = 1 + DROP_REASONS.index("several_faces")
    status[(index >= audio_frames) & (status == 0)] = 1 + DROP_REASONS.index("no_audio")
    return status


def prepare_video(path: Path, out_dir: Path, models: PrepareModels, settings: PrepareSettings = PrepareSettings(),
                  *, progress: Callable[[int, int], None] | None = None) -> dict:
    """Prepare one video into ``out_dir/videos/<video_id>``; returns its video.json record.

    Raises ``MediaError`` for an unreadable file (nothing is written) and re-raises disk-full errors after
    removing the partial folder.
    """
    from joygen_core.audio.prepare import TARGET_RATE, to_mono_16k
    from joygen_core.audio.whisper import whisper_hidden_states
    from joygen_core.audio.windows import frame_windows
    from joygen_core.edit.editor import face_crops
    from joygen_core.morphable.reconstruct import reconstruct
    from joygen_core.render.depth import render_mouth_depth
    from joygen_core.video.io import iter_frames, probe_video, read_audio

    path = Path(path)
    vid = video_id(path)
    videos = out_dir / VIDEOS_DIR
    final = videos / vid
    videos.mkdir(parents=True, exist_ok=True)
    for stale in videos.glob(f"{_PARTIAL}{vid}-*"):  # left by a killed run of this video
        shutil.rmtree(stale, ignore_errors=True)
    info = probe_video(path)  # MediaError when unreadable: nothing written yet
    fps = float(settings.fps)
    n_est = max(int(round(info.duration * fps)), 1)
    record: dict = {"format": FORMAT, "video_id": vid, "source": str(path.resolve()),
                    "source_bytes": path.stat().st_size, "source_fps": str(info.fps), "fps": fps,
                    "frame_size": [info.height, info.width], "settings": asdict(settings),
                    "frames_total": 0, "frames_kept": 0, "dropped": dict.fromkeys(DROP_REASONS, 0),
                    "clips": [], "status": "ok"}
    audio16k = None
    if info.has_audio:
        try:
            clip = read_audio(path)
            audio16k = to_mono_16k(clip.waveform, clip.sample_rate)
            del clip  # the source-rate audio is not needed again
        except MediaError as exc:
            log.warning("%s: audio unreadable (%s); its frames are dropped as no_audio", path, exc)
    audio_frames = int(audio16k.shape[0] * fps // TARGET_RATE) if audio16k is not None else 0
    windows = sample_windows(n_est, settings.max_frames_per_video, settings.segment_frames)
    if len(windows) == 1 and windows[0] == (0, n_est):
        windows = [(0, 2**62)]  # not sampled: the frame count is an estimate, keep every frame decoded
    bounds = torch.tensor(windows, dtype=torch.long)  # [K,2]

    tmp = videos / f"{_PARTIAL}{vid}-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    writer: _ClipWriter | None = None
    states = None
    recon = models.recon
    dropped = record["dropped"]

    def close_clip() -> None:
        nonlocal writer, states
        if writer is None:
            return
        w, writer = writer, None
        if w.frames < settings.min_clip_frames:
            w.discard()
            dropped["too_short"] += w.frames
            return
        if states is None:  # Whisper once per video, only when it has a clip
            states = whisper_hidden_states(models.whisper, audio16k, dtype=torch.float16)  # saved as half
        rows = frame_windows(w.end, fps, states.shape[0])[w.start:w.end]  # [T,10]
        feats = states[rows].reshape(w.frames, -1, states.shape[-1])  # [T,50,384], official chunk layout
        record["clips"].append(w.finish(feats, fps, vid))
        record["frames_kept"] += w.frames

    try:
        if audio_frames == 0:
            record["status"] = "no_audio"
            dropped["no_audio"] = n_est
            record["frames_total"] = n_est
        else:
            pos = 0
            # training takes genuine frames only: a damaged stream fails the video instead of holding frames
            for chunk in iter_frames(path, chunk_size=settings.chunk_size, fps=fps, strict=True):
                n = chunk.shape[0]
                index = torch.arange(pos, pos + n)
                pos += n
                win = ((index[:, None] >= bounds[:, 0]) & (index[:, None] < bounds[:, 1]))
                in_win = win.any(1)
                win_id = win.float().argmax(1)
                dropped["sampled_out"] += int((~in_win).sum())
                sel = in_win.nonzero()[:, 0]
                status = torch.full((n,), -1, dtype=torch.long)
                if len(sel):
                    frames = torch.from_numpy(chunk[sel.numpy()])
                    track = reconstruct(frames, recon.detector, recon.regressor, recon.bfm,
                                        batch_size=settings.batch_size, fps=fps)
                    status[sel] = _frame_status(track, frames, audio_frames, index[sel], recon.detector)
                    for r, name in enumerate(DROP_REASONS):
                        if name not in ("too_short", "sampled_out"):
                            dropped[name] += int((status == 1 + r).sum())
                    usable = (status[sel] == 0).nonzero()[:, 0]  # positions within sel
                    if len(usable):
                        t_good = track.select(usable)
                        faces = face_crops(frames[usable], t_good.box).numpy()
                        depth, _ = render_mouth_depth(t_good, None, recon.bfm, batch_size=settings.batch_size,
                                                      preview=False)
                        depth = (depth * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
                good = (status == 0).nonzero()[:, 0]  # chunk positions, ascending
                for a, b in _runs(index[good], win_id[good]):  # runs of consecutive usable frames
                    g0, w0 = int(index[good[a]]), int(win_id[good[a]])
                    if writer is not None and (writer.end != g0 or writer.window != w0):
                        close_clip()
                    if writer is None:
                        writer = _ClipWriter(tmp, f"c{len(record['clips']):03d}", g0, w0)
                    writer.append(faces[a:b], depth[a:b], t_good.select(range(a, b)))
                if progress is not None:
                    progress(pos, max(n_est, pos))
            close_clip()
            record["frames_total"] = pos
            if not record["clips"]:
                record["status"] = "no_clips"
        _write_json(tmp / VIDEO_META, record)
        if final.exists():  # --overwrite: swap in the new folder, then drop the old one
            old = videos / f"{_PARTIAL}{vid}-old{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if writer is not None:
            writer.discard()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


# ----------------------------------------------------------------------------------------------- many videos


def read_video_records(out_dir: Path | str) -> list[dict]:
    """The video.json of every finished video under ``out_dir`` (partial folders ignored), sorted by id."""
    base = Path(out_dir) / VIDEOS_DIR
    records = []
    if not base.is_dir():
        return records
    for meta in sorted(base.glob(f"*/{VIDEO_META}")):
        if meta.parent.name.startswith("."):
            continue
        try:
            rec = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            log.warning("Ignoring %s: unreadable (%s)", meta, exc)
            continue
        if rec.get("format") == FORMAT:
            records.append(rec)
    return records


def is_prepared(out_dir: Path | str, vid: str) -> bool:
    """A video's folder is complete (it exists under its final name only once fully written)."""
    meta = Path(out_dir) / VIDEOS_DIR / vid / VIDEO_META
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def rebuild_manifest(out_dir: Path | str) -> list[dict]:
    """Write ``manifest.jsonl`` (one line per clip of every finished video) from the video folders.

    Rebuilt rather than appended, so shards on several machines sharing ``out_dir`` never interleave
    half lines; whichever finishes last lists everything.
    """
    out_dir = Path(out_dir)
    rows = []
    for rec in read_video_records(out_dir):
        for clip in rec["clips"]:
            rows.append({"clip": f"{rec['video_id']}/{clip['name']}", "video": rec["video_id"], "name": clip["name"],
                         "frames": int(clip["frames"]), "start": int(clip["start"]), "fps": rec["fps"],
                         "source": rec["source"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(out_dir / MANIFEST)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out_dir / MANIFEST)
    return rows


def _run_one(path: Path, out_dir: Path, models: PrepareModels, settings: PrepareSettings,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Prepare one video; failures become a result instead of an exception (disk full is marked fatal)."""
    try:
        rec = prepare_video(path, out_dir, models, settings, progress=progress)
        return {"video": str(path), "outcome": "prepared", "record": rec}
    except DamagedStreamError as exc:
        return {"video": str(path), "outcome": "failed", "error": f"corrupt: {exc}"}
    except MediaError as exc:
        return {"video": str(path), "outcome": "failed", "error": f"unreadable: {exc}"}
    except Exception as exc:  # a corrupt stream can fail deep inside the decoder: report, go on
        if _is_disk_full(exc):
            return {"video": str(path), "outcome": "failed", "fatal": True,
                    "error": f"disk full while writing {out_dir} ({exc}); free space and run again "
                             "(finished videos are kept and skipped)"}
        log.debug("Preparing %s failed", path, exc_info=True)
        if type(exc).__module__.split(".")[0] == "av":
            return {"video": str(path), "outcome": "failed",
                    "error": f"corrupt: decoding failed part way ({exc}); re-encode or replace the file"}
        return {"video": str(path), "outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}


_WORKER: dict = {}


def _init_worker(models_dir, devices, out_dir: str, settings: PrepareSettings, threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    try:
        device = devices.get(timeout=60)
        _WORKER.update(models=load_prepare_models(models_dir, device), out_dir=Path(out_dir), settings=settings)
    except Exception as exc:  # a failing initializer would be respawned forever: report it per task instead
        _WORKER["error"] = f"worker could not load the models: {type(exc).__name__}: {exc}"


def _work(path: str) -> dict:
    if "error" in _WORKER:
        return {"video": path, "outcome": "failed", "fatal": True, "error": _WORKER["error"]}
    return _run_one(Path(path), _WORKER["out_dir"], _WORKER["models"], _WORKER["settings"])


def _devices(device: str | torch.device, workers: int) -> list[str]:
    """One device per worker: a comma list is used round robin; plain ``cuda`` spreads over every GPU."""
    names = [d.strip() for d in str(device).split(",") if d.strip()] or ["cpu"]
    if names == ["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [names[i % len(names)] for i in range(max(1, workers))]


def summary_path(out_dir: Path | str, shard: tuple[int, int] = (0, 1)) -> Path:
    """``summary.json``, or ``summary-shard<i>of<n>.json`` when the work is split (shards never overwrite
    each other's summary)."""
    i, n = shard
    return Path(out_dir) / ("summary.json" if n == 1 else f"summary-shard{i}of{n}.json")


def prepare(videos: Sequence[Path | str], out_dir: Path | str, models_dir: Path | str | None = None, *,
            fps: float = 25.0, min_clip_frames: int = 25, max_frames_per_video: int | None = 10000,
            segment_frames: int = 250, shard: tuple[int, int] = (0, 1), workers: int = 1,
            device: str | torch.device = "cpu", batch_size: int = 32, chunk_size: int = 64,
            overwrite: bool = False, progress: bool = True, models: PrepareModels | None = None) -> dict:
    """Prepare the videos of one shard into ``out_dir``; returns the run summary (also written to
    :func:`summary_path`) and rebuilds ``manifest.jsonl``.

    ``shard=(i, n)``: this call handles the videos whose id hashes to ``i`` (run ``n`` calls, on any
    machines, over the same list and ``out_dir``). ``workers`` processes share the shard, one model copy
    each, on ``device`` (a comma list is used round robin). Finished videos are skipped unless
    ``overwrite``. ``models``: already loaded models (single process only; tests and notebooks).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    settings = PrepareSettings(fps=float(fps), min_clip_frames=int(min_clip_frames),
                               max_frames_per_video=int(max_frames_per_video) if max_frames_per_video else None,
                               segment_frames=int(segment_frames), chunk_size=int(chunk_size),
                               batch_size=int(batch_size))
    i, n = int(shard[0]), int(shard[1])
    if not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n; got {shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id: dict[str, Path] = {}
    for p in map(Path, videos):
        by_id.setdefault(video_id(p), p)
    mine = {vid: p for vid, p in sorted(by_id.items()) if shard_of(vid, n) == i}
    pending = {vid: p for vid, p in mine.items() if overwrite or not is_prepared(out_dir, vid)}
    log.info("Shard %d/%d: %d videos, %d already prepared, %d to do", i, n, len(mine), len(mine) - len(pending),
             len(pending))
    results: list[dict] = []
    fatal = None
    bar = tqdm(total=len(pending), desc="videos", unit="video", disable=not progress, dynamic_ncols=True)
    try:
        if pending and (workers <= 1 or models is not None):
            if models is None:
                models = load_prepare_models(models_dir, _devices(device, 1)[0])
            for p in pending.values():
                frame_bar = tqdm(total=0, desc=p.name[:30], unit="frame", leave=False, disable=not progress,
                                 dynamic_ncols=True)

                def tick(done: int, total: int, _bar=frame_bar) -> None:
                    _bar.total = total
                    _bar.n = done
                    _bar.refresh()

                res = _run_one(p, out_dir, models, settings, progress=tick)
                frame_bar.close()
                results.append(res)
                bar.update(1)
                if res.get("fatal"):
                    fatal = res["error"]
                    break
        elif pending:
            import multiprocessing as mp

            from joygen_core.weights import ModelStore

            store = ModelStore(models_dir)  # missing files: one clear error here, not one per worker
            for key in ("bfm", "bfm_mp468", "face_recon", "whisper"):
                store.path(key)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            for d in _devices(device, workers):
                queue.put(d)
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ctx.Pool(workers, initializer=_init_worker,
                          initargs=(store.roots, queue, str(out_dir), settings, threads)) as pool:
                for res in pool.imap_unordered(_work, [str(p) for p in pending.values()]):
                    results.append(res)
                    bar.update(1)
                    if res.get("fatal"):
                        fatal = res["error"]
                        pool.terminate()
                        break
    finally:
        bar.close()
    rows = rebuild_manifest(out_dir)
    summary = _summarise(results, len(mine), len(mine) - len(pending), settings, (i, n), rows,
                         time.perf_counter() - t0)
    _write_json(summary_path(out_dir, (i, n)), summary)
    if fatal:
        raise JoyGenError(fatal)
    return summary


def _summarise(results: list[dict], in_shard: int, skipped: int, settings: PrepareSettings,
               shard: tuple[int, int], rows: list[dict], elapsed: float) -> dict:
    dropped = dict.fromkeys(DROP_REASONS, 0)
    decoded = kept = clips = 0
    failed, without = [], []
    for res in results:
        if res["outcome"] != "prepared":
            failed.append({"video": res["video"], "error": res["error"]})
            continue
        rec = res["record"]
        decoded += rec["frames_total"]
        kept += rec["frames_kept"]
        clips += len(rec["clips"])
        for k, v in rec["dropped"].items():
            dropped[k] = dropped.get(k, 0) + int(v)
        if not rec["clips"]:
            without.append({"video": res["video"], "reason": rec["status"]})
    return {
        "format": FORMAT, "shard": list(shard), "settings": asdict(settings), "elapsed_s": round(elapsed, 2),
        "videos": {"in_shard": in_shard, "skipped_done": skipped,
                   "prepared": sum(r["outcome"] == "prepared" for r in results), "without_clips": len(without),
                   "failed": len(failed)},
        "frames": {"decoded": decoded, "kept": kept, "dropped": dropped},
        "clips_written": clips,
        "failed": failed,
        "without_clips": without,
        "dataset": {"videos": len({r["video"] for r in rows}), "clips": len(rows),
                    "frames": sum(r["frames"] for r in rows)},
    }


def format_summary(summary: dict) -> str:
    """The run summary as a plain-text table (what the CLI prints)."""
    v, f = summary["videos"], summary["frames"]
    i, n = summary["shard"]
    lines = [f"shard {i}/{n}: {v['in_shard']} videos; {v['skipped_done']} already prepared (skipped), "
             f"{v['prepared']} prepared, {v['failed']} failed, {v['without_clips']} gave no clip "
             f"({summary['elapsed_s']:.1f} s)"]
    decoded = max(f["decoded"], 1)
    lines.append(f"frames decoded {f['decoded']}, kept {f['kept']} ({100 * f['kept'] / decoded:.1f}%) "
                 f"in {summary['clips_written']} clips")
    lines.append("dropped frames      count      %")
    for k, c in f["dropped"].items():
        lines.append(f"  {k:<16} {c:>8} {100 * c / decoded:6.1f}")
    if summary["failed"]:
        lines.append("failed videos (retried by the next run):")
        lines += [f"  {e['video']}: {e['error']}" for e in summary["failed"]]
    if summary["without_clips"]:
        lines.append("videos without any clip (done, not retried):")
        lines += [f"  {e['video']}: {e['reason']}" for e in summary["without_clips"]]
    d = summary["dataset"]
    lines.append(f"dataset now: {d['videos']} videos, {d['clips']} clips, {d['frames']} frames (manifest.jsonl)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command line


def add_prepare_command(subparsers) -> argparse.ArgumentParser:
    """Register ``prepare`` on an argparse sub-parsers object; the handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "prepare", help="videos -> single-face 25 fps training clips (face crops, mouth depth, 3DMM, Whisper)",
        description="Prepare JoyGen training data. Resumable: finished videos are skipped. Split big jobs "
                    "with --shard i/n (one per machine) and --workers (processes per machine).")
    p.add_argument("--videos", nargs="+", required=True, type=Path,
                   help="video files, folders (searched recursively) or .txt lists of video paths")
    p.add_argument("--out", required=True, type=Path, help="output folder (manifest.jsonl, videos/<id>/...)")
    p.add_argument("--models", type=Path, default=None,
                   help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate clips are re-timed to (official 25)")
    p.add_argument("--min-clip-frames", type=int, default=25, help="shorter single-face runs are dropped")
    p.add_argument("--max-frames", type=int, default=10000,
                   help="frames sampled from a long video (paper 10,000; 0 = all)")
    p.add_argument("--segment-frames", type=int, default=250,
                   help="a long video is sampled as evenly spaced runs of this many frames")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: this run's part of the video list")
    p.add_argument("--workers", type=int, default=1, help="processes (each loads its own models)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 or a comma list used round robin by workers")
    p.add_argument("--batch-size", type=int, default=32, help="frames per detector / regressor / render batch")
    p.add_argument("--chunk-size", type=int, default=64, help="frames decoded at a time")
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already prepared")
    p.add_argument("--manifest-only", action="store_true",
                   help="only rebuild manifest.jsonl from the finished video folders (after all shards end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prepare_command)
    return p


def run_prepare_command(args: argparse.Namespace) -> int:
    if args.manifest_only:
        rows = rebuild_manifest(args.out)
        print(f"{args.out / MANIFEST}: {len({r['video'] for r in rows})} videos, {len(rows)} clips, "
              f"{sum(r['frames'] for r in rows)} frames")
        return 0
    videos = find_videos(args.videos)
    if not videos:
        raise MediaError(f"No video files found in {', '.join(map(str, args.videos))}.")
    summary = prepare(videos, args.out, args.models, fps=args.fps, min_clip_frames=args.min_clip_frames,
                      max_frames_per_video=args.max_frames or None, segment_frames=args.segment_frames,
                      shard=args.shard, workers=args.workers, device=args.device, batch_size=args.batch_size,
                      chunk_size=args.chunk_size, overwrite=args.overwrite, progress=not args.no_progress)
    print(format_summary(summary))
    print(f"summary: {summary_path(args.out, args.shard)}")
    return 0
