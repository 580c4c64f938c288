"""Write or check ``constraints.txt``: the exact versions of an environment where the whole suite passed.

``pip install -r requirements.txt -c constraints.txt`` then reproduces that known-good environment.
Run it with the Python of a freshly set-up, green environment (CI prints the difference on every run)::

    .venv/bin/python scripts/constraints.py            # rewrite constraints.txt from this environment
    .venv/bin/python scripts/constraints.py --check    # print what differs; exit 1 when something does
    .venv/bin/python scripts/constraints.py --lowest   # the lowest declared versions CI tests as well
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "constraints.txt"
# torch's own CUDA runtime wheels differ per platform; torch's version pins them
SKIP = re.compile(r"^(nvidia-|cuda-|triton$|pip$|setuptools$|wheel$)")
# dependencies whose APIs the code leans on hard: CI runs the media and model tests at their lower bounds too
LOWEST = ("av", "transformers", "diffusers")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """name -> version of every distribution in this environment, minus the platform-specific CUDA wheels."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and not SKIP.match(_norm(name)):
            out[_norm(name)] = dist.version
    return dict(sorted(out.items()))


def render(pins: dict[str, str]) -> str:
    head = [
        "# Exact versions of the last environment where the whole suite passed (written by scripts/constraints.py;",
        "# do not edit by hand). Reproduce it: pip install -r requirements.txt -c constraints.txt",
        f"# Python {platform.python_version()} on {platform.system()} {platform.machine()}",
    ]
    return "\n".join(head + [f"{n}=={v}" for n, v in pins.items()]) + "\n"


def read(path: Path) -> dict[str, str]:
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def lowest(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """``name==X`` for each package of LOWEST, X its declared lower bound (``name>=X``) in requirements.txt."""
    found = {}
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s#]*)", line)
        if m and _norm(m.group(1)) in LOWEST:
            found[_norm(m.group(1))] = m.group(2)
    missing = [n for n in LOWEST if n not in found]
    if missing:
        raise SystemExit(f"requirements.txt declares no lower bound (name>=X) for: {', '.join(missing)}")
    return [f"{n}=={found[n]}" for n in LOWEST]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="print the differences with constraints.txt")
    g.add_argument("--lowest", action="store_true", help="print the lowest declared versions, one per line")
    p.add_argument("--file", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.lowest:
        print("\n".join(lowest()))
        return 0
    now = installed()
    if not args.check:
        args.file.write_text(render(now))
        print(f"wrote {args.file} ({len(now)} packages)")
        return 0
    old = read(args.file)
    rows = [f"  {n}: constraints {old.get(n, '-')}, here {now.get(n, '-')}"
            for n in sorted(set(old) | set(now)) if old.get(n) != now.get(n)]
    if rows:
        print(f"{len(rows)} packages differ from {args.file.name} "
              "(run scripts/constraints.py in this environment to record them):")
        print("\n".join(rows))
        return 1
    print(f"this environment matches {args.file.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
