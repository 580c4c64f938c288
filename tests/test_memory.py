"""Heap hygiene: the pinned mmap threshold keeps frame-sized blocks out of glibc's arenas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from joygen_core.memory import _libc

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: free one 30 MB block (glibc then raises its dynamic mmap threshold to 30 MB), then
# ask for 4 MB blocks and count how many of them malloc mapped on their own (mallinfo2's hblks).
PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
from joygen_core.memory import fix_mmap_threshold
pinned = fix_mmap_threshold() if sys.argv[2] == "pin" else False
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(30 << 20))
before = libc.mallinfo2().hblks
blocks = [libc.malloc(4 << 20) for _ in range(4)]
mapped = libc.mallinfo2().hblks - before
for b in blocks:
    libc.free(b)
print(json.dumps({"pinned": pinned, "mapped": mapped}))
"""


def _probe(mode: str, **env) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), mode], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    return json.loads(run.stdout)


@pytest.mark.skipif(_libc() is None or not hasattr(_libc(), "mallinfo2"), reason="glibc >= 2.33 only")
def test_pinned_threshold_maps_frame_sized_blocks_after_a_big_free():
    assert _probe("leave") == {"pinned": False, "mapped": 0}  # glibc's own behaviour: the arenas take them
    assert _probe("pin") == {"pinned": True, "mapped": 4}
    assert _probe("pin", JOYGEN_KEEP_MALLOC="1") == {"pinned": False, "mapped": 0}  # the user's choice wins
