"""Command line: ``python -m joygen_core {models,edit,demo}``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import JoyGenError
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
    try:
        from . import pipeline
    except ImportError as exc:  # the editing pipeline is optional while stages are missing
        log.debug("pipeline unavailable: %s", exc)
    else:
        pipeline.add_cli_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except JoyGenError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted; no partial output was left behind.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
