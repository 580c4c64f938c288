"""The command lines: help without torch, every bad file found before a model loads, the cache commands."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "av", "cv2", "transformers", "diffusers", "safetensors")

PROBE = """
import sys
from joygen_core.cli import build_parser, main
from train.__main__ import build_parser as train_parser
for argv in ([], ["edit"], ["batch"], ["demo"], ["cache"], ["cache", "info"], ["cache", "clear"], ["models"]):
    try:
        build_parser().parse_args(argv + ["--help"])
    except SystemExit:
        pass
for argv in ([], ["evaluate"]):
    try:
        train_parser(argv + ["--help"]).parse_args(argv + ["--help"])
    except SystemExit:
        pass
assert main(["cache", "info", "--cache", sys.argv[1]]) == 0
print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
"""


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)


def test_help_and_cache_info_import_no_torch(tmp_path):
    proc = _run("-c", PROBE.format(heavy=set(HEAVY)), str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "usage: python -m joygen_core edit" in proc.stdout and "--cache-max-gb" in proc.stdout
    assert "usage: python -m joygen_core batch" in proc.stdout and "--shard I/N" in proc.stdout
    assert "--encoder {auto,libx264,h264_nvenc}" in proc.stdout
    assert "--dtype {auto,float32,float16,bfloat16}" in proc.stdout
    assert "video cache:" in proc.stdout


def test_choices_of_the_parser_are_the_library_s():
    import torch

    from joygen_core.cli import DTYPES, ENCODERS, LENGTH_MODES, PRESETS
    from joygen_core.video import io
    from joygen_core.video.length import MODES

    assert LENGTH_MODES == MODES
    assert ENCODERS == io.ENCODERS
    assert PRESETS == io.X264_PRESETS + tuple(f"p{i}" for i in range(1, 8))
    for preset in PRESETS:
        io.encoder_options("libx264", 18, preset)
        io.encoder_options("h264_nvenc", 18, preset)
    assert all(isinstance(getattr(torch, d), torch.dtype) for d in DTYPES[1:])


@pytest.fixture(scope="module")
def media(tmp_path_factory, speech_wav):
    """A short silent video with no audio track, a video with sound, and a text file."""
    from joygen_core.video.io import read_audio, write_video

    d = tmp_path_factory.mktemp("cli_media")
    frames = np.full((4, 32, 32, 3), 100, np.uint8)
    write_video(d / "mute.mp4", iter([frames]), fps=25)
    write_video(d / "talk.mp4", iter([frames]), fps=25, audio=read_audio(speech_wav))
    (d / "notes.mp4").write_text("this is not a video\n" * 100)
    (d / "a_file").write_text("x")
    return d


def _bad_cases(m: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    ok = ["--video", str(m / "talk.mp4"), "--audio", str(m / "talk.mp4")]
    return {
        "missing video": (["--video", str(m / "nowhere.mp4"), "--audio", str(m / "talk.mp4"), "--out", str(out)],
                          "does not exist"),
        "text file as video": (["--video", str(m / "notes.mp4"), "--audio", str(m / "talk.mp4"), "--out", str(out)],
                               "Cannot read"),
        "audio without an audio track": (["--video", str(m / "talk.mp4"), "--audio", str(m / "mute.mp4"),
                                          "--out", str(out)], "has no audio track"),
        "missing audio": (["--video", str(m / "talk.mp4"), "--audio", str(m / "gone.wav"), "--out", str(out)],
                          "does not exist"),
        "output folder under a file": ([*ok, "--out", str(m / "a_file" / "out.mp4")], "Cannot write the output"),
        "output exists": ([*ok, "--out", str(m / "talk.mp4")], "already exists"),
        "output is the input": ([*ok, "--out", str(m / "talk.mp4"), "--overwrite"], "is also an input"),
        "output is a folder": ([*ok, "--out", str(m)], "is a folder"),
        "unknown device": ([*ok, "--out", str(out), "--device", "tpu:7"], "Unknown device"),
    }


@pytest.mark.parametrize("case", ["missing video", "text file as video", "audio without an audio track",
                                  "missing audio", "output folder under a file", "output exists",
                                  "output is the input", "output is a folder", "unknown device"])
def test_bad_input_is_one_error_line_before_any_model_loads(media, tmp_path, monkeypatch, caplog, case):
    import joygen_core.pipeline as pipeline
    from joygen_core.cli import main

    def no_models(*a, **kw):
        raise AssertionError("models were loaded before the inputs were checked")

    monkeypatch.setattr(pipeline, "load_models", no_models)
    monkeypatch.setattr(pipeline, "lip_sync", no_models)
    argv, message = _bad_cases(media, tmp_path / "out.mp4")[case]
    with caplog.at_level(logging.INFO):
        assert main(["edit", *argv, "--models", str(tmp_path / "no_models")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and message in errors[0], errors
    assert "\n" not in errors[0]
    assert not (tmp_path / "out.mp4").exists()
    assert (media / "talk.mp4").stat().st_size > 1000  # never overwritten


def test_read_only_output_folder_fails_before_the_models(media, tmp_path, monkeypatch, caplog):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    import joygen_core.pipeline as pipeline
    from joygen_core.cli import main

    monkeypatch.setattr(pipeline, "load_models", lambda *a, **kw: pytest.fail("models loaded"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["edit", "--video", str(media / "talk.mp4"), "--audio", str(media / "talk.mp4"),
                     "--out", str(ro / "out.mp4")]) == 2
    finally:
        ro.chmod(0o755)
    assert "cannot write in" in caplog.text


def test_bad_input_from_the_shell_is_one_line_and_exit_code_2(media, tmp_path):
    proc = _run("-m", "joygen_core", "edit", "--video", str(media / "notes.mp4"), "--audio",
                str(media / "talk.mp4"), "--out", str(tmp_path / "out.mp4"), "--models", str(tmp_path / "none"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR") and "notes.mp4" in lines[0], proc.stderr


def test_cache_commands_info_and_clear(tmp_path):
    from test_cache import _entry, _key

    from joygen_core.cli import main

    now = __import__("time").time()
    _entry(tmp_path, _key(1), last_used=now - 10 * 86400)
    _entry(tmp_path, _key(2), last_used=now)
    proc = _run("-m", "joygen_core", "cache", "info", "--cache", str(tmp_path))
    assert proc.returncode == 0 and "entries: 2" in proc.stdout and _key(1) in proc.stdout
    assert main(["cache", "clear", "--cache", str(tmp_path), "--older-than", "5"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [_key(2)]
    proc = _run("-m", "joygen_core", "cache", "clear", "--cache", str(tmp_path))
    assert proc.returncode == 0 and "removed 1 entry" in proc.stdout and list(tmp_path.iterdir()) == []


def _fake_run(monkeypatch, fail: bool = False) -> dict:
    """load_models / lip_sync replaced by recorders; TerminalProgress.close counted."""
    from types import SimpleNamespace

    import joygen_core.pipeline as pipeline
    from joygen_core.errors import MediaError
    from joygen_core.progress import TerminalProgress

    seen: dict = {"closed": 0}

    def load_models(store, device, dtype=None, **kw):
        seen.update(device=device, dtype=dtype, **kw)
        return SimpleNamespace(recon=SimpleNamespace(bfm=None))

    def lip_sync(video, audio, out, models, options, progress=None, **kw):
        seen.update(options=options, progress=progress)
        progress("edit", 1, 4)
        if fail:
            raise MediaError("the disk is full")
        return pipeline.LipSyncReport(output=Path(out), frames=4, fps=25.0)

    real_close = TerminalProgress.close

    def close(self):
        seen["closed"] += 1
        real_close(self)

    monkeypatch.setattr(pipeline, "load_models", load_models)
    monkeypatch.setattr(pipeline, "lip_sync", lip_sync)
    monkeypatch.setattr(TerminalProgress, "close", close)
    return seen


def test_edit_settings_reach_the_options_and_the_models(media, tmp_path, monkeypatch):
    import torch

    from joygen_core.cli import main
    from joygen_core.progress import TerminalProgress

    seen = _fake_run(monkeypatch)
    argv = ["edit", "--video", str(media / "talk.mp4"), "--audio", str(media / "talk.mp4"), "--out",
            str(tmp_path / "out.mp4"), "--crf", "23", "--preset", "slow", "--encoder", "libx264",
            "--dtype", "bfloat16", "--serial", "--device", "cpu", "--channels-last", "--compile"]
    assert main(argv) == 0
    assert seen["dtype"] == torch.bfloat16 and seen["device"] == torch.device("cpu")
    assert seen["channels_last"] is True and seen["compile"] is True
    options = seen["options"]
    assert (options.crf, options.preset, options.encoder, options.pipelined) == (23, "slow", "libx264", False)
    assert isinstance(seen["progress"], TerminalProgress) and seen["closed"] == 1
    seen = _fake_run(monkeypatch)
    assert main(argv[:6] + [str(tmp_path / "default.mp4")]) == 0
    assert seen["dtype"] is None  # auto: the device's own choice
    assert seen["channels_last"] is False and seen["compile"] is False
    options = seen["options"]
    assert (options.crf, options.preset, options.encoder, options.pipelined) == (18, "medium", "auto", True)


def test_progress_bar_is_closed_when_the_run_fails(media, tmp_path, monkeypatch, caplog):
    from joygen_core.cli import main

    seen = _fake_run(monkeypatch, fail=True)
    assert main(["edit", "--video", str(media / "talk.mp4"), "--audio", str(media / "talk.mp4"), "--out",
                 str(tmp_path / "out.mp4"), "--device", "cpu"]) == 2
    assert seen["closed"] == 1 and "the disk is full" in caplog.text
