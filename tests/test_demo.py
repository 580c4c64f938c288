"""The demo without espeak-ng: one clear error before any other work."""

from __future__ import annotations

import argparse

import pytest

from joygen_core import demo
from joygen_core.errors import JoyGenError
from joygen_core.pipeline import LipSyncOptions


def test_demo_without_espeak_stops_first_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    args = argparse.Namespace(models=str(tmp_path / "none"), cache=str(tmp_path / "work"), out=str(tmp_path / "o.mp4"),
                              overwrite=False)
    with pytest.raises(JoyGenError, match="apt-get install espeak-ng"):
        demo.run_demo(args, LipSyncOptions(), "cpu")
    assert list((tmp_path / "work").iterdir()) == []  # no sample video, no untrained models written
    assert not (tmp_path / "o.mp4").exists()
