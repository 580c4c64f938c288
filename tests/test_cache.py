"""The per-video cache's bookkeeping, with no models: location, integrity records, LRU eviction, clear / info,
and the sweep of leftovers that killed runs leave beside outputs and in the cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from joygen_core import cache as jc
from joygen_core.cache import VideoCache

DAY = 86400.0


def _entry(root: Path, name: str, payload: int = 1000, last_used: float | None = None) -> Path:
    """A complete entry of one 8-frame chunk with ``payload`` bytes in each data file, finished as a run does."""
    tmp = root / f"{name}.partial{os.getpid()}"
    tmp.mkdir(parents=True)
    for f in ("track.safetensors", "latents_00000.safetensors", "masks_00000.npz"):
        (tmp / f).write_bytes(os.urandom(payload))
    VideoCache.finish(tmp, root / name, {"frames": 8, "chunk": 8, "fps": 25.0, "faces": 8, "video": name})
    if last_used is not None:
        os.utime(root / name, (last_used, last_used))
    return root / name


def _key(i: int) -> str:
    return f"{i:024x}"


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JOYGEN_CACHE", str(tmp_path / "mine"))
    assert jc.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("JOYGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jc.default_cache_dir() == tmp_path / "xdg" / "joygen"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec says: ignore a relative path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert jc.default_cache_dir() == tmp_path / "home" / ".cache" / "joygen"
    assert "temp" not in jc.default_cache_dir().parts


def test_cache_cap_from_argument_environment_or_default(monkeypatch, caplog):
    monkeypatch.delenv("JOYGEN_CACHE_MAX_GB", raising=False)
    assert jc.max_bytes() == 20 * 10**9
    monkeypatch.setenv("JOYGEN_CACHE_MAX_GB", "0.5")
    assert jc.max_bytes() == 5 * 10**8 and jc.max_bytes(2) == 2 * 10**9
    monkeypatch.setenv("JOYGEN_CACHE_MAX_GB", "lots")
    with caplog.at_level(logging.WARNING):
        assert jc.max_bytes() == 20 * 10**9
    assert "JOYGEN_CACHE_MAX_GB" in caplog.text
    with pytest.raises(jc.InputError):
        jc.max_bytes(-1)


def test_finished_entry_records_sizes_and_checksums_and_a_hit_marks_its_use(tmp_path):
    folder = _entry(tmp_path, _key(1), last_used=time.time() - 3 * DAY)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == jc.CACHE_FORMAT and sorted(meta["files"]) == [
        "latents_00000.safetensors", "masks_00000.npz", "track.safetensors"]
    assert meta["files"]["masks_00000.npz"][0] == 1000
    assert not list(tmp_path.glob("*.partial*"))
    assert VideoCache(folder).open()
    assert time.time() - folder.stat().st_mtime < 60  # the access time moved to now: it is the LRU order
    assert jc.list_entries(tmp_path)[0].last_used > time.time() - 60


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "latents_00000.safetensors").write_bytes(b"short"), "holds 5 bytes"),
    (lambda f: (f / "meta.json").write_text('{"format": "joygen.video_c'), "meta.json is unreadable"),
    (lambda f: (f / "meta.json").unlink(), "meta.json is missing"),
    (lambda f: (f / "masks_00000.npz").unlink(), "masks_00000.npz is missing"),
    (lambda f: _flip_byte(f / "track.safetensors"), "track.safetensors does not match its checksum"),
])
def test_a_damaged_entry_is_reported_once_and_deleted(tmp_path, caplog, damage, why):
    folder = _entry(tmp_path, _key(2))
    damage(folder)
    with caplog.at_level(logging.WARNING):
        assert not VideoCache(folder).open()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0].getMessage() and "damaged" in warnings[0].getMessage()
    assert not folder.exists() and list(tmp_path.iterdir()) == []  # nothing left, not even the renamed copy


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_meta_must_list_every_chunk_it_promises(tmp_path):
    folder = _entry(tmp_path, _key(3))
    meta = json.loads((folder / "meta.json").read_text())
    meta["frames"] = 9  # two chunks promised, one present: a build cut short but renamed must not be trusted
    (folder / "meta.json").write_text(json.dumps(meta))
    assert "does not list latents_00001.safetensors" in VideoCache(folder).problem()


def test_eviction_removes_least_recently_used_first_down_to_the_cap(tmp_path):
    now = time.time()
    a, b, c, d = (_entry(tmp_path, _key(i), last_used=now - (10 - i) * DAY) for i in range(4))  # a oldest
    size = jc.list_entries(tmp_path)[0].size
    assert VideoCache(a).open()  # a hit: a becomes the most recently used
    removed = jc.evict(tmp_path, limit=2 * size, keep=[d])
    assert [e.path for e in removed] == [b, c]
    assert {p.name for p in tmp_path.iterdir()} == {a.name, d.name}
    assert jc.evict(tmp_path, limit=0, keep=[d]) and [p.name for p in tmp_path.iterdir()] == [d.name]


def test_eviction_spares_entries_in_use_and_builds_in_progress(tmp_path):
    now = time.time()
    old, new = _entry(tmp_path, _key(1), last_used=now - 2 * DAY), _entry(tmp_path, _key(2), last_used=now)
    with VideoCache(old).in_use():  # a live run (this process) reads the oldest entry
        live = tmp_path / f"{_key(3)}.partial{os.getpid()}"
        live.mkdir()
        (live / "latents_00000.safetensors").write_bytes(bytes(5000))
        assert [e.path for e in jc.evict(tmp_path, limit=0)] == [new]
        assert old.is_dir() and live.is_dir()
    assert [e.path for e in jc.evict(tmp_path, limit=0)] == [old] and live.is_dir()


def test_broken_entries_are_evicted_before_complete_ones(tmp_path):
    now = time.time()
    good = _entry(tmp_path, _key(1), last_used=now - 5 * DAY)
    broken = _entry(tmp_path, _key(2), last_used=now)
    (broken / "meta.json").unlink()
    size = jc.list_entries(tmp_path)[0].size
    assert [e.path for e in jc.evict(tmp_path, limit=size + 10)] == [broken] and good.is_dir()


def test_clear_all_or_older_than_and_info(tmp_path):
    now = time.time()
    old = _entry(tmp_path, _key(1), last_used=now - 40 * DAY)
    recent = _entry(tmp_path, _key(2), last_used=now - DAY)
    busy = _entry(tmp_path, _key(3), last_used=now - 50 * DAY)
    info = jc.format_info(tmp_path, 10**9)
    assert str(tmp_path.resolve()) in info and "entries: 3" in info and "1.00 GB cap" in info
    assert info.index(busy.name) < info.index(old.name) < info.index(recent.name)  # least recently used first
    removed, kept = jc.clear(tmp_path, older_than_days=30)
    assert {e.path for e in removed} == {old, busy} and not kept and recent.is_dir()
    busy = _entry(tmp_path, _key(3), last_used=now - 50 * DAY)
    with VideoCache(busy).in_use():  # a running job uses it (and that counts as a use now)
        assert "in use" in jc.format_info(tmp_path, 10**9)
        removed, kept = jc.clear(tmp_path)
        assert [e.path for e in removed] == [recent] and [e.path for e in kept] == [busy]
    assert [e.path for e in jc.clear(tmp_path)[0]] == [busy]
    assert "entries: 0, 0 B" in jc.format_info(tmp_path, 10**9)


def test_leftovers_of_dead_processes_are_swept_live_ones_survive(tmp_path):
    out, root = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    root.mkdir()
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": out / f".talk.partial{dead}.mp4",
            "mine": out / f".talk.partial{os.getpid()}.mp4",  # this process, now: a live run
            "other live": out / f".song.partial{sleeper.pid}.mp4",
            "reused pid": out / f".old.partial{sleeper.pid}.mkv",  # live pid, untouched for 2 h
            "earlier me": out / f".x.partial{os.getpid()}.mp4",  # our pid, from before this process started
            "user file": out / "talk.mp4",
            "user hidden": out / f".notes.partial{dead}",  # no extension: not write_video's naming
        }
        dirs = {
            "dead": root / f"{_key(1)}.partial{dead}",
            "dead trash": root / f"{_key(2)}.trash{dead}",
            "mine": root / f"{_key(3)}.partial{os.getpid()}",
            "other live": root / f"{_key(4)}.partial{sleeper.pid}",
            "entry": root / _key(5),
        }
        for f in files.values():
            f.write_bytes(b"x")
        for d in dirs.values():
            d.mkdir()
            (d / "latents_00000.safetensors").write_bytes(b"x")
        two_hours_ago = time.time() - 7200
        os.utime(files["reused pid"], (two_hours_ago, two_hours_ago))
        os.utime(files["earlier me"], (jc._STARTED - 60, jc._STARTED - 60))
        assert sorted(jc.sweep_output_leftovers(out)) == sorted(
            [files["dead"], files["reused pid"], files["earlier me"]])
        assert sorted(jc.sweep_cache_leftovers(root)) == sorted([dirs["dead"], dirs["dead trash"]])
        for name in ("mine", "other live", "user file", "user hidden"):
            assert files[name].exists(), name
        for name in ("mine", "other live", "entry"):
            assert dirs[name].is_dir(), name
    finally:
        sleeper.kill()
        sleeper.wait()


def test_folder_problem_names_what_is_wrong(tmp_path):
    assert jc.folder_problem(tmp_path / "new" / "deeper") is None and (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "file").write_text("x")
    assert "cannot create" in jc.folder_problem(tmp_path / "file" / "sub")
    assert "is a file" in jc.folder_problem(tmp_path / "file")
    assert list((tmp_path / "new" / "deeper").iterdir()) == []  # the probe file is gone
    if os.geteuid() != 0:  # root writes anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert "cannot write" in jc.folder_problem(ro)
        finally:
            ro.chmod(0o755)


def test_unwritable_cache_means_no_cache_with_one_warning(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING):
        assert jc.usable_cache_root(tmp_path / "file" / "cache") is None
    assert len(caplog.records) == 1 and "running without a cache" in caplog.text
    assert jc.usable_cache_root(tmp_path / "ok") == tmp_path / "ok"


def test_node_cache_lives_in_comfyui_user_folder_not_temp(pack, monkeypatch, tmp_path):
    from joygen_pack.nodes import comfy

    fake = SimpleNamespace(get_user_directory=lambda: str(tmp_path / "user"),
                           get_temp_directory=lambda: str(tmp_path / "temp"),
                           get_output_directory=lambda: str(tmp_path / "output"))
    monkeypatch.setattr(comfy, "folder_paths", fake)
    monkeypatch.delenv("JOYGEN_CACHE", raising=False)
    assert comfy.cache_dir() == tmp_path / "user" / "joygen_cache"
    del fake.get_user_directory  # an old ComfyUI: beside output/
    assert comfy.cache_dir() == tmp_path / "joygen_cache"
    monkeypatch.setenv("JOYGEN_CACHE", str(tmp_path / "env"))
    assert comfy.cache_dir() == tmp_path / "env"


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from joygen_core.cache import folder_problem
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))  # a disk that takes 64 kB more, for this process
print(folder_problem(Path(sys.argv[1]), probe_bytes=1 << 20))
print(folder_problem(Path(sys.argv[1])))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_folder_problem_finds_a_full_disk_with_its_probe_write(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    first, second = proc.stdout.splitlines()
    assert "cannot write in" in first and "too large" in first.lower()
    assert second == "None"  # without the probe write an empty file fits: the probe is what finds it
    assert list(tmp_path.iterdir()) == []


def test_key_follows_the_edit_dtype_not_the_layout(tmp_path):
    """A float16 / bfloat16 run does not reuse a float32 run's cached latents; channels_last does not matter."""
    import torch

    from joygen_core.pipeline import LipSyncOptions

    video = tmp_path / "v.mp4"
    video.write_bytes(b"not really a video, but a content to hash")

    def models(dtype, channels_last=False):
        edit = SimpleNamespace(dtype=dtype, channels_last=channels_last)
        return SimpleNamespace(edit=edit, identity=lambda: "same files")

    opts = LipSyncOptions()
    f32 = VideoCache.key(video, opts, models(torch.float32))
    assert VideoCache.key(video, opts, models(torch.float32)) == f32
    assert VideoCache.key(video, opts, models(torch.float32, channels_last=True)) == f32
    keys = {VideoCache.key(video, opts, models(d)) for d in (torch.float32, torch.float16, torch.bfloat16)}
    assert len(keys) == 3
