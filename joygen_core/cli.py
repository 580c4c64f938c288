"""Command line: ``python -m joygen_core {models,download,edit,demo}``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import JoyGenError
from .pipeline import LipSyncOptions, LipSyncReport, lip_sync, load_models
from .weights import ModelStore, default_model_dirs, format_status

log = logging.getLogger("joygen_core")


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore([Path(args.models)] if args.models else default_model_dirs())


def cmd_models(args: argparse.Namespace) -> int:
    print(format_status(_store(args)))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download

    root = Path(args.models) if args.models else default_model_dirs()[0]
    for path in download(root, args.only.split(",") if args.only else None):
        print(f"downloaded {path}")
    return 0


# ---------------------------------------------------------------- edit and demo


def _options(args: argparse.Namespace) -> LipSyncOptions:
    return LipSyncOptions(length_mode=args.length, use_depth=not args.audio_only, blend=args.blend,
                          reference_frame=args.reference_frame, face_policy=args.face_policy, smooth=args.smooth,
                          seed=args.seed, batch_size=args.batch_size, chunk_frames=args.chunk_frames, crf=args.crf)


def _add_common(p: argparse.ArgumentParser) -> None:
    from .video.length import MODES

    p.add_argument("--out", required=True, help="output MP4 (never overwritten unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--length", choices=MODES, default="pingpong", help="fit the video to the audio's length")
    p.add_argument("--audio-only", action="store_true", help="no depth: edit from the audio features alone")
    p.add_argument("--blend", choices=("parsing", "landmarks", "box"), default="parsing",
                   help="blend mask: BiSeNet face parsing (official), feathered landmarks, or the half box")
    p.add_argument("--reference-frame", type=int, default=-1, help="-1: each frame its own reference (official)")
    p.add_argument("--face-policy", choices=("largest", "track"), default="largest")
    p.add_argument("--smooth", action="store_true", help="smooth face boxes over time")
    p.add_argument("--seed", type=int, default=0, help="seed of the audio-to-motion sample")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-frames", type=int, default=64, help="frames held in memory at once")
    p.add_argument("--crf", type=int, default=18, help="x264 quality (lower is better)")
    p.add_argument("--cache", help="per-video cache folder (default: ./temp/joygen_cache)")


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log_progress() -> Callable[[str, int, int], None]:
    last: dict[str, float] = {}

    def report(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done >= total or now - last.get(stage, 0.0) > 2.0:
            last[stage] = now
            log.info("%s: %d/%d", stage, done, total)

    return report


def _print_report(report: LipSyncReport) -> None:
    print(f"wrote {report.output}: {report.frames} frames at {report.fps:.3f} fps, "
          f"{report.frames_with_face} with a face{' (video cache reused)' if report.cache_hit else ''}")
    for stage, s in report.seconds.items():
        print(f"  {stage:<32} {s:8.2f} s")


def cmd_edit(args: argparse.Namespace) -> int:
    options = _options(args)
    store = ModelStore([Path(args.models)] if args.models else default_model_dirs())
    models = load_models(store, _device(args.device), use_depth=options.use_depth, blend=options.blend)
    report = lip_sync(args.video, args.audio, args.out, models, options, cache_root=args.cache or
                      Path("temp") / "joygen_cache", overwrite=args.overwrite, progress=_log_progress())
    _print_report(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args, _options(args), _device(args.device), _log_progress())
    _print_report(report)
    return 0


def add_cli_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit a video's lips to follow an audio track")
    e.add_argument("--video", required=True, help="input video (any fps, resolution, rotation)")
    e.add_argument("--audio", required=True, help="driving speech: an audio file or a video with sound")
    e.add_argument("--models", help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    _add_common(e)
    e.set_defaults(func=cmd_edit)
    d = sub.add_parser("demo", help="run the whole job on a built-in sample (a real face clip + synthesised speech)")
    d.add_argument("--models", help="the JoyGen model folder; without the official weights the demo runs small "
                                    "untrained models and says so")
    _add_common(d)
    d.set_defaults(func=cmd_demo, out="output/demo.mp4")
    for action in d._actions:
        if action.dest == "out":
            action.required = False
            action.default = "output/demo.mp4"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m joygen_core", description="JoyGen lip editing of talking-face videos.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list every expected model file: present or missing, and where to get it")
    m.add_argument("--models", help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    m.set_defaults(func=cmd_models)
    d = sub.add_parser("download", help="fetch the pieces published on the Hugging Face hub (VAE, HuBERT, Whisper)")
    d.add_argument("--models", help="the JoyGen model folder to fill")
    d.add_argument("--only", help="comma-separated subset of: vae, hubert, whisper")
    d.set_defaults(func=cmd_download)
    add_cli_commands(sub)
    return p


def run_command(args: argparse.Namespace, logger: logging.Logger = log) -> int:
    """Configure logging, run ``args.func``; a JoyGenError is one clear line and exit code 2 (shared by both CLIs)."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except JoyGenError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted; no partial output was left behind.")
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
