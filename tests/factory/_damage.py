"""Damaged weight files, made from good ones, and the one check every loader's error must pass.

Not a model family (the leading underscore keeps it out of ``make_models_folder``).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from joygen_core.errors import ModelFileError

# what the message must say for each kind of damage
KIND_WORDS = {"truncated": "is truncated", "corrupt": "is corrupt", "code": "would run code"}


class Exploit:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(path: Path, marker: Path, fmt: str = "zip", state: dict | None = None) -> Path:
    """``path`` holding tensors plus an object whose unpickling calls os.system: ``fmt`` is torch.save's
    ``zip`` or ``legacy`` container, or a plain ``pickle`` (protocol 5)."""
    obj = {**(state or {"w": torch.zeros(2)}), "payload": Exploit(marker)}
    if fmt == "pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def truncate(path: Path) -> Path:
    """Cut ``path`` in half, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def random_bytes(path: Path, n: int = 4096, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(n))
    return path


def to_safetensors(bin_path: Path) -> Path:
    """The tensors of a torch ``.bin`` as ``model.safetensors`` beside it; the ``.bin`` removed."""
    from safetensors.torch import save_file

    state = torch.load(bin_path, weights_only=True)
    out = bin_path.with_name("model.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    bin_path.unlink()
    return out


def expect_clear_error(load, file: Path, kind: str, marker: Path | None = None) -> str:
    """``load()`` raises exactly one ModelFileError naming ``file`` with the ``kind`` of damage; returns the text."""
    with pytest.raises(ModelFileError) as info:
        load()
    err = info.value
    msg = str(err)
    assert type(err) is ModelFileError
    assert str(file) in msg, msg
    assert KIND_WORDS[kind] in msg, msg
    assert "\x1b" not in msg and "weights_only" not in msg, msg
    if kind == "code":
        assert ("posix.system" in msg or "nt.system" in msg) and "os.system" in msg, msg
        assert "convert it to safetensors" in msg, msg
    else:
        assert "download it again" in msg, msg
    assert err.__cause__ is None, "the library's raw error is chained to ours"
    if marker is not None:
        assert not marker.exists(), "the pickled code was executed"
    return msg
