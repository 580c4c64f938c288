"""Command line: ``python -m joygen_core {models,download,edit,batch,demo,cache,score}``.

Building the parser imports no torch and no model code (``--help`` answers at once); each command imports what
it needs when it runs, and ``edit`` checks its files before any model loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, JoyGenError

if TYPE_CHECKING:
    import torch

    from .pipeline import LipSyncOptions, LipSyncReport, PipelineModels
    from .progress import TerminalProgress
    from .weights import ModelStore

log = logging.getLogger("joygen_core")

# the library's choices, written out so that building the parser imports no torch (test_cli checks they agree)
LENGTH_MODES = ("pingpong", "loop", "trim", "hold")  # joygen_core.video.length.MODES
ENCODERS = ("auto", "libx264", "h264_nvenc")  # joygen_core.video.io.ENCODERS
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "p1", "p2", "p3", "p4", "p5", "p6", "p7")  # joygen_core.video.io.X264_PRESETS, then NVENC's own
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _store(args: argparse.Namespace) -> ModelStore:
    from .weights import ModelStore, default_model_dirs

    return ModelStore([Path(args.models)] if args.models else default_model_dirs())


def cmd_models(args: argparse.Namespace) -> int:
    from .weights import format_status

    print(format_status(_store(args)))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download
    from .weights import default_model_dirs

    root = Path(args.models) if args.models else default_model_dirs()[0]
    for path in download(root, args.only.split(",") if args.only else None):
        print(f"downloaded {path}")
    return 0


# ---------------------------------------------------------------- edit and demo


def _options(args: argparse.Namespace) -> LipSyncOptions:
    from .pipeline import LipSyncOptions

    return LipSyncOptions(length_mode=args.length, use_depth=not args.audio_only, blend=args.blend,
                          reference_frame=args.reference_frame, face_policy=args.face_policy, smooth=args.smooth,
                          seed=args.seed, batch_size=args.batch_size, chunk_frames=args.chunk_frames, crf=args.crf,
                          preset=args.preset, encoder=args.encoder, pipelined=not args.serial,
                          motion_amplitude=args.motion_amplitude, motion_shift=args.motion_shift)


def _dtype(name: str) -> torch.dtype | None:
    """``--dtype``: None (auto: the fastest the device runs well) or the torch dtype named."""
    if name == "auto":
        return None
    import torch

    return getattr(torch, name)


def _load_models(args: argparse.Namespace, store: ModelStore, device: torch.device,
                 options: LipSyncOptions) -> PipelineModels:
    from .pipeline import load_models

    return load_models(store, device, _dtype(args.dtype), use_depth=options.use_depth, blend=options.blend,
                       channels_last=getattr(args, "channels_last", False), compile=getattr(args, "compile", False))


def _progress() -> TerminalProgress:
    from .progress import TerminalProgress

    return TerminalProgress()


def _add_common(p: argparse.ArgumentParser, out: bool = True) -> None:
    if out:
        p.add_argument("--out", required=True, help="output MP4 (never overwritten unless --overwrite)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="precision of the editing networks (auto: float16 on CUDA, float32 on the CPU)")
    p.add_argument("--serial", action="store_true",
                   help="run read, networks and write one after another instead of overlapped (for comparison)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory layout for the VAE and UNet (often faster on recent GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the VAE and UNet (slow first batch; pays off on long videos on a GPU)")
    p.add_argument("--length", choices=LENGTH_MODES, default="pingpong", help="fit the video to the audio's length")
    p.add_argument("--audio-only", action="store_true", help="no depth: edit from the audio features alone")
    p.add_argument("--blend", choices=("parsing", "landmarks", "box"), default="parsing",
                   help="blend mask: BiSeNet face parsing (official), feathered landmarks, or the half box")
    p.add_argument("--reference-frame", type=int, default=-1, help="-1: each frame its own reference (official)")
    p.add_argument("--face-policy", choices=("largest", "track"), default="largest")
    p.add_argument("--smooth", action="store_true", help="smooth face boxes over time")
    p.add_argument("--seed", type=int, default=0, help="seed of the audio-to-motion sample")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-frames", type=int, default=64, help="frames held in memory at once")
    p.add_argument("--crf", type=int, default=18,
                   help="H.264 quality: 0 lossless, 18 visually transparent, 23 x264's default; higher is smaller")
    p.add_argument("--preset", choices=PRESETS, default="medium", metavar="PRESET",
                   help="encoder speed: ultrafast .. veryslow (slower: smaller file at the same quality); "
                        "NVENC maps them to p1 .. p7, which are taken too")
    p.add_argument("--encoder", choices=ENCODERS, default="auto",
                   help="auto: h264_nvenc where CUDA and an FFmpeg with NVENC are present, else libx264")
    p.add_argument("--motion-amplitude", type=float, default=1.0,
                   help="scale the audio-driven mouth around its mean expression (0: the mean, 1: as predicted)")
    p.add_argument("--motion-shift", type=float, default=0.0, metavar="FRAMES",
                   help="delay the audio-driven mouth by FRAMES (fractional; negative: earlier). A score offset of "
                        "+k is undone by -k")


def _add_cache_cap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-max-gb", type=float, help="cache size cap; least recently used entries are evicted "
                                                      "after a run (default: $JOYGEN_CACHE_MAX_GB or 20)")


def _cache_root(args: argparse.Namespace) -> Path:
    from .cache import default_cache_dir

    return Path(args.cache) if args.cache else default_cache_dir()


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this PyTorch sees no CUDA GPU; use --device cpu (or auto).")
    return device


def _print_report(report: LipSyncReport) -> None:
    print(f"wrote {report.output}: {report.frames} frames at {report.fps:.3f} fps, "
          f"{report.frames_with_face} with a face{' (video cache reused)' if report.cache_hit else ''}")
    for stage, s in report.seconds.items():
        print(f"  {stage:<32} {s:8.2f} s")


def _write_plot(path: str | None, report: LipSyncReport, bfm: object) -> None:
    """``--plot``: the mouth opening of the motion that drove the edit, beside the video's own mouth."""
    if not path:
        return
    if report.motion is None:
        log.warning("--plot: audio-only editing drives no motion; no plot written")
        return
    from PIL import Image

    from .motion.plot import plot_mouth_opening

    img = plot_mouth_opening(report.motion, bfm, report.face_track, labels=["audio-driven motion"])
    Image.fromarray(img).save(path)
    print(f"wrote {path}")


def cmd_edit(args: argparse.Namespace) -> int:
    from .cache import max_bytes
    from .pipeline import check_inputs, lip_sync

    # every file problem is found here, in seconds, before the models load
    check_inputs(args.video, args.audio, args.out, overwrite=args.overwrite)
    max_bytes(args.cache_max_gb)
    options = _options(args)
    device = _device(args.device)
    models = _load_models(args, _store(args), device, options)
    progress = _progress()
    try:
        report = lip_sync(args.video, args.audio, args.out, models, options,
                          cache_root=None if args.no_cache else _cache_root(args), overwrite=args.overwrite,
                          progress=progress, cache_max_gb=args.cache_max_gb)
    finally:
        progress.close()
    _print_report(report)
    _write_plot(args.plot, report, models.recon.bfm)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    import os

    from .batch import parse_shard, read_manifest, run_batch, shard, shard_from_env
    from .cache import max_bytes

    items = read_manifest(args.manifest, args.out_dir)
    i, n = parse_shard(args.shard) if args.shard else shard_from_env()
    mine = shard(items, i, n)
    max_bytes(args.cache_max_gb)
    log.info("%s: %d items%s", args.manifest, len(items), f", shard {i}/{n} takes {len(mine)}" if n > 1 else "")
    todo = [it for it in mine if args.overwrite or not it.output.exists()]
    if not todo:  # nothing to do: no model loads
        result = run_batch(mine, None, overwrite=args.overwrite)
    else:
        options = _options(args)
        device = args.device
        if device == "auto" and os.environ.get("LOCAL_RANK") is not None:  # one process per GPU (torchrun)
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
        models = _load_models(args, _store(args), _device(device), options)
        result = run_batch(mine, models, options, cache_root=None if args.no_cache else _cache_root(args),
                           overwrite=args.overwrite, cache_max_gb=args.cache_max_gb,
                           progress=lambda item: _progress())
    print(result.summary())
    return 0 if result.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .pipeline import check_output

    check_output(args.out, overwrite=args.overwrite or args.out == DEMO_OUT)
    progress = _progress()
    try:
        report = run_demo(args, _options(args), _device(args.device), progress, dtype=_dtype(args.dtype))
    finally:
        progress.close()
    _print_report(report)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from . import cache

    root = _cache_root(args)
    if args.action == "info":
        print(cache.format_info(root, cache.max_bytes(args.cache_max_gb)))
        return 0
    if args.older_than is not None and args.older_than < 0:
        raise InputError("--older-than takes a number of days >= 0.")
    removed, busy = cache.clear(root, args.older_than)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} "
          f"({cache.format_bytes(sum(e.size for e in removed))}) from {root}")
    if busy:
        print(f"kept {len(busy)} in use by a running job")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from .face.detect import load_mtcnn
    from .score import load_syncnet, score_video, syncnet_file

    device = _device(args.device)
    weights = Path(args.syncnet) if args.syncnet else syncnet_file(_store(args))
    report = score_video(args.video, load_syncnet(weights, device), load_mtcnn(device),
                         max_seconds=args.max_seconds, vshift=args.vshift, device=device)
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


DEMO_OUT = "output/demo.mp4"
CACHE_DEFAULT_HELP = "$JOYGEN_CACHE, else ~/.cache/joygen (%%LOCALAPPDATA%%\\joygen\\cache on Windows)"


def add_cli_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit a video's lips to follow an audio track")
    e.add_argument("--video", required=True, help="input video (any fps, resolution, rotation)")
    e.add_argument("--audio", required=True, help="driving speech: an audio file or a video with sound")
    e.add_argument("--models", help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    _add_common(e)
    e.add_argument("--cache", help=f"per-video cache folder (default: {CACHE_DEFAULT_HELP})")
    e.add_argument("--no-cache", action="store_true", help="a temporary cache, deleted after the run")
    e.add_argument("--plot", metavar="PNG", help="also write the mouth opening over time (the motion that drove the "
                                                 "edit and the video's own mouth) as a picture")
    _add_cache_cap(e)
    e.set_defaults(func=cmd_edit)
    b = sub.add_parser("batch", help="edit many videos: a CSV manifest of video,audio[,output] rows, models "
                                     "loaded once, finished outputs skipped, split into shards for several GPUs",
                       description="MANIFEST is a CSV file with the header video,audio,output (output optional) and "
                                   "one row per job; # starts a comment. video and audio are relative to the "
                                   "manifest's folder, output to --out-dir (default: the manifest's folder; an "
                                   "empty output is <video>__<audio>.mp4). Outputs that exist are skipped; a "
                                   "failing row does not stop the others (exit code 1 if any failed).")
    b.add_argument("manifest", help="the CSV manifest")
    b.add_argument("--out-dir", help="folder of the outputs (default: the manifest's folder)")
    b.add_argument("--shard", metavar="I/N", help="run only rows whose position k (0-based, comments not counted) "
                                                  "has k %% N == I. Default: $RANK/$WORLD_SIZE (torchrun, "
                                                  "accelerate launch) or $SLURM_PROCID/$SLURM_NTASKS, else all; "
                                                  "with --device auto, $LOCAL_RANK picks the GPU")
    b.add_argument("--overwrite", action="store_true", help="redo rows whose output exists")
    b.add_argument("--models", help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    _add_common(b, out=False)
    b.add_argument("--cache", help=f"per-video cache folder (default: {CACHE_DEFAULT_HELP})")
    b.add_argument("--no-cache", action="store_true", help="a temporary cache for each row, deleted after it")
    _add_cache_cap(b)
    b.set_defaults(func=cmd_batch)
    d = sub.add_parser("demo", help="run the whole job on a built-in sample (a real face clip + synthesised speech)")
    d.add_argument("--models", help="the JoyGen model folder; without the official weights the demo runs small "
                                    "untrained models and says so")
    _add_common(d)
    d.add_argument("--cache", help="the demo's work folder: sample clip, speech, untrained models, cache "
                                   "(default: ./temp/joygen_demo)")
    d.set_defaults(func=cmd_demo, out=DEMO_OUT)
    for action in d._actions:
        if action.dest == "out":
            action.required = False
            action.default = DEMO_OUT
    c = sub.add_parser("cache", help="the per-video cache: where it is and what it holds, or clear it")
    actions = c.add_subparsers(dest="action", required=True)
    for name, text in (("info", "location, entries (least recently used first), total size and cap"),
                       ("clear", "delete the cached entries (those a running job uses are kept)")):
        a = actions.add_parser(name, help=text)
        a.add_argument("--cache", help=f"the cache folder (default: {CACHE_DEFAULT_HELP})")
        if name == "info":
            _add_cache_cap(a)
        else:
            a.add_argument("--older-than", type=float, metavar="DAYS", help="only entries unused for DAYS days")
        a.set_defaults(func=cmd_cache)
    s = sub.add_parser("score", help="lip-sync scores of a video against its own sound: LSE-D, LSE-C, AV offset")
    s.add_argument("video", help="a video with one visible face and the sound its lips should follow")
    s.add_argument("--syncnet", help="syncnet_v2.model (default: syncnet/syncnet_v2.model in the model folder)")
    s.add_argument("--models", help="the JoyGen model folder (default: $JOYGEN_MODELS or ./models/joygen)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    s.add_argument("--max-seconds", type=float, help="score only the first seconds")
    s.add_argument("--vshift", type=int, default=15, help="largest offset searched, in 25 fps frames (official 15)")
    s.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    s.set_defaults(func=cmd_score)


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
