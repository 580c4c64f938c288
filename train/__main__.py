"""``python -m train <command>``: the trainer's command line.

Each command lives in its own module, which defines ``add_<name>_command(subparsers)``: it adds its
sub-parser and sets ``func`` (called with the parsed arguments, returns an exit code). To add a
command, append its module and function name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from joygen_core.cli import run_command

log = logging.getLogger("train")

# (module inside train/, registering function); a module that is not there yet is skipped.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("prepare", "add_prepare_command"),
    ("fit", "add_fit_command"),
    ("evaluate", "add_evaluate_command"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train and evaluate the JoyGen editor.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name, func_name in COMMANDS:
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
    return run_command(build_parser().parse_args(argv), log)


if __name__ == "__main__":
    sys.exit(main())
