"""``python -m train <command>``: the trainer's command line.

Each command lives in its own module, which defines ``add_<name>_command(subparsers)``: it adds its
sub-parser and sets ``func`` (called with the parsed arguments, returns an exit code). To add a
command, append its module, function name and one-line help to ``COMMANDS``. Only the module of the
command being run is imported (the command modules import torch), so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from joygen_core.cli import run_command

log = logging.getLogger("train")

# (module inside train/, registering function, help in the command list); a module not there yet is skipped.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("prepare", "add_prepare_command",
     "videos -> single-face 25 fps training clips (face crops, mouth depth, 3DMM, Whisper)"),
    ("fit", "add_fit_command", "train the editing UNet from a YAML config"),
    ("evaluate", "add_evaluate_command", "FID, LSE-D and LSE-C of generated videos (a table like the paper's)"),
)


def _command_in(argv: list[str] | None) -> str | None:
    """The command named on the command line (the first word that is not an option), if any."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return words[0] if words else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of the command named in ``argv`` (None: the process's arguments) is imported,
    the others are listed by name and help."""
    parser = argparse.ArgumentParser(prog="python -m train", description="Train and evaluate the JoyGen editor.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = _command_in(argv)
    for module_name, func_name, text in COMMANDS:
        if module_name != wanted:
            sub.add_parser(module_name, help=text)  # listed in --help, not run: its module is not imported
            continue
        try:
            module = importlib.import_module(f"{__package__ or 'train'}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"train.{module_name}":
                raise
            log.debug("command module train.%s is not present", module_name)
            continue
        getattr(module, func_name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(argv).parse_args(argv), log)


if __name__ == "__main__":
    sys.exit(main())
