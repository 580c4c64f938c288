"""Process heap hygiene for long videos, so resident memory does not grow with the video's length.

glibc (Linux) only; elsewhere these are no-ops. Two effects matter for a streamed pipeline:

- Freed mid-sized blocks stay resident in malloc's arenas until trimmed: :func:`trim_heap` between chunks.
- glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB). After a cold pass
  over a long video every frame-sized tensor is then carved from the arenas, whose freed holes fragment; the
  transients of later stages land in fresh pages and the peak rises with the length of what came before.
  :func:`fix_mmap_threshold` pins the threshold so such blocks are mapped and unmapped on their own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
_LIBC: list = []
_PINNED: list[bool] = []


def _libc():
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL("libc.so.6")
            except OSError:
                lib = None
        if lib is not None and not (hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt")):
            lib = None  # not glibc
        _LIBC.append(lib)
    return _LIBC[0]


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (``malloc_trim``)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


def trimmed(chunks: Iterator) -> Iterator:
    """``chunks`` with the heap trimmed after each one is used."""
    for chunk in chunks:
        yield chunk
        trim_heap()


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold (blocks of ``threshold`` bytes or more are mapped and returned when freed).

    Process-wide and done once. Left alone when the user set ``MALLOC_MMAP_THRESHOLD_`` or
    ``JOYGEN_KEEP_MALLOC=1``, or where glibc is absent. Returns whether the threshold is pinned by us.
    """
    if _PINNED:
        return _PINNED[0]
    lib = _libc()
    keep = os.environ.get("JOYGEN_KEEP_MALLOC", "") not in ("", "0") or "MALLOC_MMAP_THRESHOLD_" in os.environ
    ok = lib is not None and not keep and bool(lib.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if ok:
        lib.mallopt(M_TRIM_THRESHOLD, 2 * int(threshold))
        log.debug("glibc mmap threshold pinned at %d bytes", threshold)
    _PINNED.append(ok)
    return ok
