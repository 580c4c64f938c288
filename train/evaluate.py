"""``python -m train evaluate``: FID, LSE-D and LSE-C of generated videos, in a table like the paper's.

Paper protocol (JoyGen section 5.2, unpaired): each generated clip (~10 s) was driven by the audio of
another video and carries that driving audio as its sound track. LSE-D / LSE-C compare each generated
video's lips with its own sound track (SyncNet of Wav2Lip's evaluation, averaged over videos as
Wav2Lip's scripts do); FID compares the set of generated frames with the set of real frames. The real
videos' own LSE is reported as the "ground truth" row. With ``--pairs paired`` generated and real
videos are matched by file name (self-reconstruction): FID uses the same number of frames from both
sides of each pair, and a generated video without sound takes its real video's track.

Heavy imports (torch, the metric modules) happen inside the command, so ``python -m train --help``
stays quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from joygen_core.errors import MediaError

if TYPE_CHECKING:
    from joygen_core.score import SyncInputs

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PAIRS = ("unpaired", "paired")
FACE_CROPS = ("detect", "none")


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class MediaSet:
    """The videos and images found under the paths given for one side (generated or real)."""

    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.videos or self.images)


def collect_media(paths: Sequence[Path | str], what: str) -> MediaSet:
    """Videos and image frames from files and folders (folders searched recursively, sorted by name)."""
    out = MediaSet()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files = [p]
        else:
            raise MediaError(f"{what}: {p} does not exist.")
        for f in files:
            suffix = f.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                out.videos.append(f)
            elif suffix in IMAGE_SUFFIXES:
                out.images.append(f)
    if not out:
        raise MediaError(f"{what}: no videos ({', '.join(VIDEO_SUFFIXES)}) or images "
                         f"({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, paths))}.")
    return out


def _max_frames(fps: float, max_seconds: float | None) -> int | None:
    return None if max_seconds is None else max(1, int(math.ceil(max_seconds * fps - 1e-9)))


def video_frame_chunks(path: Path, *, max_frames: int | None = None, stride: int = 1, chunk: int = 50
                       ) -> Iterator[np.ndarray]:
    """uint8 RGB frames [n,H,W,3] of a video at its own rate, every ``stride``-th frame."""
    from joygen_core.video.io import iter_frames

    offset = 0
    for frames in iter_frames(path, chunk_size=chunk, max_frames=max_frames):
        picked = frames[(-offset) % stride::stride]
        offset += frames.shape[0]
        if picked.shape[0]:
            yield picked


def image_chunks(paths: Sequence[Path], *, stride: int = 1, chunk: int = 50) -> Iterator[np.ndarray]:
    """uint8 RGB images in batches of equal size (a size change starts a new batch)."""
    from PIL import Image

    batch: list[np.ndarray] = []
    for path in list(paths)[::stride]:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise MediaError(f"Cannot read image {path} ({exc}).") from exc
        if batch and (arr.shape != batch[0].shape or len(batch) == chunk):
            yield np.stack(batch)
            batch = []
        batch.append(arr)
    if batch:
        yield np.stack(batch)


# ------------------------------------------------------------------------------------------ LSE per video


def sync_inputs(path: Path, detector: Any | None, *, audio_from: Path | None = None,
                max_seconds: float | None = None, chunk: int = 64) -> SyncInputs:
    """Face crops, audio and per-frame face flags of a video, as the official SyncNet evaluation prepares them.

    The library's reader, :func:`joygen_core.score.read_sync_inputs` (frames re-timed to 25 fps, audio to
    16 kHz mono 16-bit; with a ``detector`` (MTCNN) faces found in a first pass and cut with the official crop
    geometry in a second; with ``None`` the frames are face crops already), so the Sync Score node and
    ``python -m joygen_core score`` read a video exactly as this evaluation does. Here a generated video must
    carry its driving audio unless ``audio_from`` names the file to take the sound from.
    """
    from joygen_core.score import read_sync_inputs
    from joygen_core.video.io import probe_video

    if audio_from is None and not probe_video(path).has_audio:
        raise MediaError(f"{path} has no sound track: LSE compares the lips with the driving audio, so the "
                         "generated video must carry it (JoyGen's outputs do), or use --pairs paired with the "
                         "real videos' sound.")
    return read_sync_inputs(path, detector, audio_from=audio_from, max_seconds=max_seconds, chunk=chunk)


@dataclass
class VideoSync:
    """One video's sync scores, for the per-video part of the report."""

    video: str
    role: str
    lse_d: float
    lse_c: float
    offset: int
    windows: int
    face_found: float
    audio: str


# ------------------------------------------------------------------------------------------ the report


@dataclass
class Row:
    """One table row: a method's FID (None for ground truth) and mean LSE-D / LSE-C over its videos."""

    name: str
    fid: float | None
    lse_d: float | None
    lse_c: float | None
    videos: int
    frames: int | None = None


@dataclass
class EvaluationReport:
    protocol: str
    rows: list[Row]
    per_video: list[VideoSync]
    fid: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "rows": [asdict(r) for r in self.rows],
                "per_video": [asdict(v) for v in self.per_video], "fid": self.fid, "settings": self.settings}

    def to_markdown(self) -> str:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        lines = [f"Protocol: {self.protocol}", "", "| method | FID | LSE-D | LSE-C |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {num(r.fid)} | {num(r.lse_d)} | {num(r.lse_c)} |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def write(self, out: Path | str) -> tuple[Path, Path]:
        """Write ``<out>.json`` and ``<out>.md`` (the suffix of ``out`` is replaced)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        js, md = out.with_suffix(".json"), out.with_suffix(".md")
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        md.write_text(self.to_markdown())
        return js, md


def _pair_up(generated: MediaSet, real: MediaSet) -> list[tuple[Path, Path]]:
    if generated.images or real.images:
        raise MediaError("--pairs paired matches videos by file name; give videos, not image frames.")
    by_stem = {p.stem: p for p in real.videos}
    missing = [p.name for p in generated.videos if p.stem not in by_stem]
    if missing:
        raise MediaError(f"--pairs paired: no real video named like {missing[:5]} (real videos: "
                         f"{sorted(by_stem)[:5]}...). Name each generated video after its real one, or use "
                         "--pairs unpaired.")
    return [(g, by_stem[g.stem]) for g in generated.videos]


def evaluate(generated: Sequence[Path | str], real: Sequence[Path | str], inception: Path | str,
             syncnet: Path | str, *, pairs: str = "unpaired", name: str = "generated", device: str = "cpu",
             batch_size: int = 50, sync_batch: int = 20, max_seconds: float | None = None, fid_stride: int = 1,
             face_crop: str = "detect", real_lse: bool = True, vshift: int = 15,
             fid_method: str = "auto") -> EvaluationReport:
    """FID (generated frames vs real frames) and LSE-D / LSE-C (generated videos vs their sound tracks).

    ``max_seconds`` keeps the first seconds of each video for both metrics (the paper scores ~10 s
    clips); ``fid_stride`` takes every n-th frame for FID; ``face_crop`` 'detect' (MTCNN, official crop
    geometry) or 'none' (the videos are face crops already); ``fid_method`` see
    :func:`train.metrics.fid.fid_score`.
    """
    import torch

    from joygen_core.video.io import probe_video

    from .metrics.fid import fid_score, frame_statistics, load_fid_inception
    from .metrics.syncnet import clip_sync_scores, load_syncnet

    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}; got {pairs!r}")
    if face_crop not in FACE_CROPS:
        raise ValueError(f"face_crop must be one of {FACE_CROPS}; got {face_crop!r}")
    gen = collect_media(generated, "--generated")
    ref = collect_media(real, "--real")
    if not gen.videos:
        raise MediaError("--generated holds no videos: LSE-D / LSE-C need generated videos with their sound.")
    pairs_list = _pair_up(gen, ref) if pairs == "paired" else []
    silent = [v.name for v in gen.videos if not probe_video(v).has_audio]
    if silent and not pairs_list:  # fail before minutes of FID, not after
        raise MediaError(f"Generated videos without a sound track: {silent[:5]}. LSE compares the lips with the "
                         "driving audio, so each generated video must carry it (JoyGen's outputs do), or use "
                         "--pairs paired to take the matching real video's sound.")
    dev = torch.device(device)
    fid_net = load_fid_inception(inception, dev)
    sync_net = load_syncnet(syncnet, dev)

    # ---- FID
    def frame_counts(path: Path) -> int:
        info = probe_video(path)
        cap = _max_frames(float(info.fps), max_seconds)
        return info.frame_count if cap is None else min(cap, info.frame_count)

    def side_chunks(media: MediaSet, side: int) -> Iterator[np.ndarray]:
        if pairs_list:
            for pair in pairs_list:
                n = min(frame_counts(pair[0]), frame_counts(pair[1]))
                yield from video_frame_chunks(pair[side], max_frames=n, stride=fid_stride, chunk=batch_size)
            return
        for v in media.videos:
            fps = float(probe_video(v).fps)
            yield from video_frame_chunks(v, max_frames=_max_frames(fps, max_seconds), stride=fid_stride,
                                          chunk=batch_size)
        yield from image_chunks(media.images, stride=fid_stride, chunk=batch_size)

    log.info("FID: Inception features of the generated frames")
    stats_g = frame_statistics(fid_net, side_chunks(gen, 0), batch_size)
    log.info("FID: Inception features of the real frames")
    stats_r = frame_statistics(fid_net, side_chunks(ref, 1), batch_size)
    if stats_g.count < 2 or stats_r.count < 2:
        raise MediaError(f"FID needs at least 2 frames on each side; got {stats_g.count} generated, "
                         f"{stats_r.count} real.")
    fd = fid_score(stats_g, stats_r, method=fid_method)
    if min(stats_g.count, stats_r.count) < 2048:
        log.warning("FID from %d / %d frames (fewer than the 2048 feature dimensions): the covariances are "
                    "singular and the value is biased upward; published FIDs use thousands of frames.",
                    stats_g.count, stats_r.count)

    # ---- LSE
    detector = None
    if face_crop == "detect":
        from joygen_core.face.detect import load_mtcnn

        detector = load_mtcnn(dev)
    real_audio = dict((g, r) for g, r in pairs_list)
    per_video: list[VideoSync] = []

    def score(video: Path, role: str, audio_from: Path | None = None) -> None:
        if audio_from is None and role == "generated" and video in real_audio and not probe_video(video).has_audio:
            audio_from = real_audio[video]
        try:
            inputs = sync_inputs(video, detector, audio_from=audio_from, max_seconds=max_seconds)
            s = clip_sync_scores(sync_net, inputs.faces, inputs.samples, vshift=vshift, batch_size=sync_batch,
                                 device=dev)
        except MediaError as exc:
            raise MediaError(f"LSE of {video}: {exc}") from exc
        log.info("%s %s: LSE-D %.3f  LSE-C %.3f  offset %+d (%d windows)", role, video.name, s.min_dist,
                 s.confidence, s.offset, s.windows)
        per_video.append(VideoSync(video=str(video), role=role, lse_d=s.min_dist, lse_c=s.confidence,
                                   offset=s.offset, windows=s.windows, face_found=inputs.face_found,
                                   audio=str(audio_from or video)))

    for v in gen.videos:
        score(v, "generated")
    if real_lse:
        for v in ref.videos:
            if probe_video(v).has_audio:
                score(v, "real")
            else:
                log.warning("real video %s has no sound track: left out of the ground-truth LSE", v)

    def mean(role: str, key: str) -> float | None:
        vals = [getattr(p, key) for p in per_video if p.role == role]
        return float(np.mean(vals)) if vals else None

    rows = [Row(name=name, fid=fd.value, lse_d=mean("generated", "lse_d"), lse_c=mean("generated", "lse_c"),
                videos=len(gen.videos), frames=stats_g.count)]
    if any(p.role == "real" for p in per_video):
        rows.append(Row(name="ground truth", fid=None, lse_d=mean("real", "lse_d"), lse_c=mean("real", "lse_c"),
                        videos=sum(p.role == "real" for p in per_video), frames=stats_r.count))
    return EvaluationReport(
        protocol=pairs, rows=rows, per_video=per_video,
        fid={"value": fd.value, "method": fd.method, "generated_frames": stats_g.count,
             "real_frames": stats_r.count, "eps_offset_used": fd.offset_used, "max_imag": fd.max_imag},
        settings={"generated": [str(p) for p in generated], "real": [str(p) for p in real],
                  "inception": str(inception), "syncnet": str(syncnet), "device": str(dev),
                  "max_seconds": max_seconds, "fid_stride": fid_stride, "fid_method": fid_method,
                  "face_crop": face_crop, "vshift": vshift})


# ------------------------------------------------------------------------------------------ command line


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_evaluate(args: argparse.Namespace) -> int:
    """The ``evaluate`` command: compute, print the table, write JSON + markdown when ``--out`` is given."""
    report = evaluate(args.generated, args.real, args.inception, args.syncnet, pairs=args.pairs, name=args.name,
                      device=args.device or _default_device(), batch_size=args.batch_size,
                      sync_batch=args.sync_batch, max_seconds=args.max_seconds, fid_stride=args.fid_stride,
                      face_crop=args.face_crop, real_lse=not args.no_real_lse, vshift=args.vshift,
                      fid_method=args.fid_method)
    print(report.to_markdown(), end="")
    if args.out:
        js, md = report.write(args.out)
        print(f"wrote {js} and {md}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``python -m train`` sub-parsers."""
    p = subparsers.add_parser(
        "evaluate", help="FID, LSE-D and LSE-C of generated videos (a table like the paper's)",
        description="FID of generated vs real frames (FID Inception, pt_inception-2015-12-05-6726825d.pth) and "
                    "LSE-D / LSE-C of each generated video against its own sound track (syncnet_v2.model, "
                    "the SyncNet of Wav2Lip's evaluation).")
    p.add_argument("--generated", nargs="+", required=True, metavar="DIR_OR_VIDEO",
                   help="generated videos, or folders of them (searched recursively); they must carry the "
                        "driving audio")
    p.add_argument("--real", nargs="+", required=True, metavar="DIR_OR_VIDEO",
                   help="real videos or image frames, or folders of them, for FID (and the ground-truth LSE)")
    p.add_argument("--inception", required=True, metavar="FILE",
                   help="FID Inception weights, pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release)")
    p.add_argument("--syncnet", required=True, metavar="FILE",
                   help="SyncNet weights, syncnet_v2.model (joonson/syncnet_python download_model.sh)")
    p.add_argument("--pairs", choices=PAIRS, default="unpaired",
                   help="unpaired (paper): audio from other videos, sets compared as wholes; paired: generated "
                        "and real matched by file name")
    p.add_argument("--out", metavar="REPORT", help="write REPORT.json and REPORT.md (suffix replaced)")
    p.add_argument("--name", default="generated", help="row name in the table (the method)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=50, help="frames per Inception pass")
    p.add_argument("--sync-batch", type=_positive_int, default=20, help="windows per SyncNet pass (official 20)")
    p.add_argument("--max-seconds", type=_positive_float, help="score only the first seconds of each video")
    p.add_argument("--fid-stride", type=_positive_int, default=1, help="use every n-th frame for FID")
    p.add_argument("--fid-method", choices=("auto", "sqrtm", "features"), default="auto",
                   help="sqrtm: the reference computation; features: exact from the features (sets smaller than "
                        "2048 frames); auto: features for small sets, else sqrtm")
    p.add_argument("--face-crop", choices=FACE_CROPS, default="detect",
                   help="detect: find the face (MTCNN) and cut the official SyncNet crop; none: the videos are "
                        "face crops already")
    p.add_argument("--no-real-lse", action="store_true", help="skip the ground-truth LSE of the real videos")
    p.add_argument("--vshift", type=_positive_int, default=15, help="largest AV offset searched, frames (official 15)")
    p.set_defaults(func=run_evaluate)
    return p
