"""Many videos: the CSV manifest, shards that split it exactly, and the batch command's run (skip, fail, resume)."""

from __future__ import annotations

from pathlib import Path

import pytest

from joygen_core.batch import parse_shard, read_manifest, shard, shard_from_env
from joygen_core.errors import InputError


def _manifest(folder: Path, text: str) -> Path:
    path = folder / "jobs.csv"
    path.write_text(text)
    return path


def test_manifest_rows_paths_and_default_outputs(tmp_path):
    path = _manifest(tmp_path, "# clips for the French dub\n\nvideo,audio,output\nclips/a.mp4,fr/a.wav,a_fr.mp4\n"
                               "  # a comment between rows\n/abs/b.mov, fr/b.wav\n\"c d.mp4\",e.wav,\n")
    items = read_manifest(path)
    assert [(it.index, it.line) for it in items] == [(0, 4), (1, 6), (2, 7)]
    assert items[0].video == tmp_path / "clips/a.mp4" and items[0].audio == tmp_path / "fr/a.wav"
    assert items[0].output == tmp_path / "a_fr.mp4"
    assert items[1].video == Path("/abs/b.mov") and items[1].output == tmp_path / "b__b.mp4"
    assert items[2].video == tmp_path / "c d.mp4" and items[2].output == tmp_path / "c d__e.mp4"
    out = read_manifest(path, tmp_path / "out")
    assert [it.output for it in out] == [tmp_path / "out" / n for n in ("a_fr.mp4", "b__b.mp4", "c d__e.mp4")]
    assert [it.video for it in out] == [it.video for it in items]  # inputs stay relative to the manifest


@pytest.mark.parametrize("text, message", [
    ("", "lists no videos"),
    ("a.mp4,b.wav\n", "header must name"),
    ("video,speech\na.mp4,b.wav\n", "header must name"),
    ("video,audio\na.mp4\n", "line 2: a video and an audio"),
    ("video,audio\na.mp4,b.wav,c.mp4\n", "line 2: 3 fields"),
    ("video,audio,output\na.mp4,b.wav,x.mp4\n# same output\nb.mp4,c.wav,./x.mp4\n", "line 4: the output"),
])
def test_malformed_manifest_is_one_error_naming_the_line(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_manifest(_manifest(tmp_path, text))


def test_shards_split_the_rows_exactly(tmp_path):
    rows = "".join(f"v{k}.mp4,a{k}.wav\n" for k in range(11))
    items = read_manifest(_manifest(tmp_path, "video,audio\n" + rows))
    for n in (1, 2, 3, 4, 11, 13):
        parts = [shard(items, i, n) for i in range(n)]
        assert sorted(it.index for p in parts for it in p) == list(range(11))  # disjoint, and together all
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [it.video.name for it in shard(items, 1, 4)] == ["v1.mp4", "v5.mp4", "v9.mp4"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_shard_from_the_launcher_environment():
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == (3, 8)
    assert shard_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "6"}) == (0, 2)
    assert shard_from_env({"RANK": "1"}) == (0, 1)  # half a pair is not a launch


# ---------------------------------------------------------------- the command, with small random models


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, face_frames):
    """Two 4-frame face clips, two short sentences, a manifest of 4 rows: three jobs and one missing video."""
    from conftest import synth_speech
    from joygen_core.video.io import write_video

    d = tmp_path_factory.mktemp("batch")
    write_video(d / "a.mp4", iter([face_frames[:4]]), fps=25)
    write_video(d / "b.mp4", iter([face_frames[30:34, :, ::-1].copy()]), fps=25)
    synth_speech(d / "hi.wav", "Hi.")
    synth_speech(d / "yes.wav", "Yes.")
    _manifest(d, "video,audio,output\n# video a driven twice: its per-video work is done once\na.mp4,hi.wav,\n"
                 "a.mp4,yes.wav,a_yes.mp4\nb.mp4,hi.wav,\nmissing.mp4,hi.wav,\n")
    return d


def _x264_settings(path: Path) -> str:
    data = path.read_bytes()
    start = data.find(b"options: ")
    return data[start:data.find(b"\x00", start)].decode("ascii", "replace")


def _batch(jobs: Path, models_dir: Path, out: Path, *extra: str) -> int:
    from joygen_core.cli import main

    return main(["batch", str(jobs / "jobs.csv"), "--out-dir", str(out), "--models", str(models_dir),
                 "--blend", "landmarks", "--audio-only", "--length", "trim", "--chunk-frames", "4",
                 "--batch-size", "4", "--cache", str(jobs / "cache"), *extra])


def test_two_shards_write_what_one_run_writes_and_a_rerun_skips(jobs, models_dir, tmp_path, monkeypatch, capsys):
    from joygen_core.video.io import probe_video

    expected = {"a__hi.mp4", "a_yes.mp4", "b__hi.mp4"}
    # shard 0 of 2 named on the command line, shard 1 from the launcher's environment (torchrun / accelerate)
    # (and the encoder settings and the serial engine reach the pipeline from the command line)
    assert _batch(jobs, models_dir, tmp_path / "sharded", "--shard", "0/2", "--preset", "ultrafast") == 0  # rows 0, 2
    assert {p.name for p in (tmp_path / "sharded").iterdir()} == {"a__hi.mp4", "b__hi.mp4"}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _batch(jobs, models_dir, tmp_path / "sharded", "--serial") == 1  # rows 1, 3: the missing video fails alone
    text = capsys.readouterr().out
    assert "1 written, 0 skipped (output exists), 1 failed" in text
    assert "FAILED line 6: missing.mp4 + hi.wav" in text and "does not exist" in text
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")

    assert _batch(jobs, models_dir, tmp_path / "whole") == 1
    assert "3 written, 0 skipped (output exists), 1 failed" in capsys.readouterr().out
    sharded = {p.name for p in (tmp_path / "sharded").iterdir()}
    assert sharded == {p.name for p in (tmp_path / "whole").iterdir()} == expected
    for name in expected:
        a, b = probe_video(tmp_path / "sharded" / name), probe_video(tmp_path / "whole" / name)
        assert a.frame_count == b.frame_count == 4 and a.has_audio and (a.width, a.height) == (b.width, b.height)
    assert "subme=0" in _x264_settings(tmp_path / "sharded" / "b__hi.mp4")  # ultrafast
    assert "subme=7" in _x264_settings(tmp_path / "whole" / "b__hi.mp4")  # medium, the default

    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "whole").iterdir()}
    assert _batch(jobs, models_dir, tmp_path / "whole") == 1
    text = capsys.readouterr().out
    assert "0 written, 3 skipped (output exists), 1 failed" in text and "skipped line 3:" in text
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "whole").iterdir()} == stamps
    assert not list((tmp_path / "whole").glob(".*"))  # no partial files left by the failed row


def test_finished_shard_loads_no_model(jobs, models_dir, tmp_path, monkeypatch, capsys):
    import joygen_core.pipeline as pipeline

    out = tmp_path / "done"
    out.mkdir()
    for name in ("a__hi.mp4", "b__hi.mp4"):
        (out / name).write_bytes(b"finished earlier")
    monkeypatch.setattr(pipeline, "load_models", lambda *a, **kw: pytest.fail("models loaded for no work"))
    assert _batch(jobs, models_dir, out, "--shard", "0/2") == 0
    assert "0 written, 2 skipped (output exists), 0 failed" in capsys.readouterr().out
