"""Command line: ``python -m train {prepare,...}``.

Each sub-command lives in its own module and registers itself with ``add_<name>_command(subparsers)``;
its handler is ``args.func(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from joygen_core.errors import JoyGenError

from .prepare import add_prepare_command

log = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="JoyGen training: data, training, evaluation.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    add_prepare_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except JoyGenError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted; finished videos are kept, the one in progress left no output.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
