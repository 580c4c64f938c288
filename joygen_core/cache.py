"""The per-video cache on disk: where it lives, its entries, their integrity, the size cap and clean-up.

One entry per (video content, settings that shape the per-video work, model identity): a folder named by its
24-hex key holding the face track, the masked / reference latents and the blend masks per chunk, and
``meta.json``, which records every file's size and BLAKE2b digest. An entry is built in ``<key>.partial<pid>``
and renamed when complete; opening it checks every file against ``meta.json``, and a damaged entry is reported
once, deleted and rebuilt. The folder's mtime is the entry's last use; after a run the least recently used
entries are evicted until the cache is under its cap. Leftovers of killed runs (``<key>.partial<pid>`` here,
``.NAME.partial<pid>.mp4`` beside outputs) are removed once their process is gone.

One module for the CLI, the library (:func:`joygen_core.pipeline.lip_sync`) and the all-in-one node. It imports
no torch at module level, so ``python -m joygen_core cache info`` answers at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger(__name__)

CACHE_FORMAT = "joygen.video_cache.v2"
META = "meta.json"
DEFAULT_MAX_GB = 20.0
GB = 1e9
# A leftover named with a pid that is alive but has not been touched for this long belongs to a process that
# reused the pid (a live run touches its partial files at least once per chunk, minutes apart at worst).
STALE_SECONDS = 3600.0
_STARTED = time.time()  # files named with our own pid but older than this were left by an earlier process

_KEY = re.compile(r"[0-9a-f]{24}")
_CACHE_LEFTOVER = re.compile(r"(?P<key>[0-9a-f]{24})\.(?:partial|trash)(?P<pid>\d+)")
# write_video's temporary name: path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")
_OUTPUT_LEFTOVER = re.compile(r"\..+\.partial(?P<pid>\d+)\.[A-Za-z0-9]+")
_IN_USE = re.compile(r"\.in_use\.(?P<pid>\d+)\.\d+")


# ---------------------------------------------------------------- where, how big


def default_cache_dir() -> Path:
    """``$JOYGEN_CACHE``, else the user cache folder: ``%LOCALAPPDATA%\\joygen\\cache`` on Windows,
    ``$XDG_CACHE_HOME/joygen`` or ``~/.cache/joygen`` elsewhere."""
    env = os.environ.get("JOYGEN_CACHE")
    if env:
        return Path(env).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "joygen" / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative = unset
    return base / "joygen"


def max_bytes(gb: float | None = None) -> int:
    """The cache's cap in bytes: ``gb`` if given, else ``$JOYGEN_CACHE_MAX_GB``, else 20 GB (1 GB = 10^9 bytes)."""
    if gb is None:
        env = os.environ.get("JOYGEN_CACHE_MAX_GB", "").strip()
        if env:
            try:
                gb = float(env)
            except ValueError:
                log.warning("JOYGEN_CACHE_MAX_GB=%r is not a number; using %g GB.", env, DEFAULT_MAX_GB)
    gb = DEFAULT_MAX_GB if gb is None else gb
    if not math.isfinite(gb) or gb < 0:
        raise InputError(f"The cache cap must be a number of GB >= 0; got {gb}.")
    return int(gb * GB)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", GB), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------- file-system checks and leftovers


def folder_problem(folder: Path, probe_bytes: int = 0) -> str | None:
    """Why files cannot be written in ``folder`` (created if missing), or None.

    A test file is created (and ``probe_bytes`` written and synced, to catch a full disk) and removed.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{folder} is a file, not a folder"
    except OSError as exc:
        return f"cannot create the folder {folder} ({exc.strerror or exc})"
    try:
        fd, name = tempfile.mkstemp(prefix=".joygen_write_test", dir=folder)
        try:
            block = memoryview(bytes(probe_bytes))
            while block:  # a full disk may first take part of a write, then refuse the rest
                written = os.write(fd, block)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                block = block[written:]
            if probe_bytes:
                os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine, in this pid namespace)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


def _owner_gone(path: Path, pid: int, stale_after: float | None = STALE_SECONDS) -> bool:
    """True when the process that made ``path`` (named with its ``pid``) no longer runs.

    Our own pid: gone when the file predates this process (containers start every run with the same pid).
    Another live pid: gone when the file has not been touched for ``stale_after`` seconds (the pid was reused).
    """
    try:
        mtime = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if pid == os.getpid():
        return mtime < _STARTED - 2.0
    if not pid_alive(pid):
        return True
    return stale_after is not None and time.time() - mtime > stale_after


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sweep(folder: Path, pattern: re.Pattern, what: str, stale_after: float | None = STALE_SECONDS,
           level: int = logging.INFO) -> list[Path]:
    removed = []
    try:
        children = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in children:
        m = pattern.fullmatch(p.name)
        if m and _owner_gone(p, int(m["pid"]), stale_after):
            try:
                _remove(p)
            except OSError as exc:
                log.debug("could not remove %s: %s", p, exc)
                continue
            removed.append(p)
    if removed:
        log.log(level, "Removed %d %s left by interrupted runs in %s.", len(removed), what, folder)
    return removed


def sweep_output_leftovers(folder: Path) -> list[Path]:
    """Remove the hidden ``.NAME.partial<pid>.EXT`` files that killed runs left in an output folder.

    Only those of processes that are gone: a concurrent live run's file survives.
    """
    return _sweep(folder, _OUTPUT_LEFTOVER, "unfinished output file(s)")


def sweep_cache_leftovers(root: Path) -> list[Path]:
    """Remove ``<key>.partial<pid>`` / ``<key>.trash<pid>`` folders of cache builds whose process is gone."""
    return _sweep(root, _CACHE_LEFTOVER, "unfinished cache folder(s)")


def usable_cache_root(root: Path | str) -> Path | None:
    """``root`` (created if missing) when files can be written there; else None, with one warning."""
    root = Path(root)
    problem = folder_problem(root)
    if problem is None:
        return root
    log.warning("The video cache cannot be used (%s): running without a cache, so this video's face track and "
                "latents are computed again next time. Point --cache or JOYGEN_CACHE at a writable folder.", problem)
    return None


# ---------------------------------------------------------------- one entry


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """BLAKE2b-128 of a file's bytes (hashlib; about 1 GB/s on one core)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def video_digest(path: Path, block: int = 1 << 20) -> str:
    """SHA-1 of the file's bytes (content, not name or time): the video's part of the cache key."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _entry_files(meta: dict) -> list[str]:
    """The data files a complete entry must hold, from its own metadata."""
    n = -(-int(meta["frames"]) // int(meta["chunk"]))
    names = ["track.safetensors"]
    for k in range(n):
        names += [f"latents_{k:05d}.safetensors", f"masks_{k:05d}.npz"]
    return names


class VideoCache:
    """One entry: the per-video work on disk (face track, (masked, reference) latents and blend masks per chunk).

    Written into ``<key>.partial<pid>`` and renamed by :meth:`finish` when complete, so an interrupted run never
    leaves an entry a later run would trust; :meth:`open` verifies it before it is used.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._loaded: dict[int, tuple] = {}

    @staticmethod
    def key(video: Path, options: Any, models: Any) -> str:
        """The entry's name: the video's content, ``options.video_key()``, ``models.identity()``, the chunk size and
        the edit models' compute dtype (the cached latents are the VAE's: a float16 / bfloat16 run keeps its own).

        Layout options (channels_last, torch.compile) leave the latents as they are and are not part of it."""
        edit = getattr(models, "edit", None)
        parts = {"video": video_digest(video), "settings": options.video_key(), "models": models.identity(),
                 "chunk": options.chunk_frames, "format": CACHE_FORMAT,
                 "edit_dtype": str(getattr(edit, "dtype", None)).removeprefix("torch.")}
        return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def partial_folder(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.partial{os.getpid()}")

    def complete(self) -> bool:
        """A finished entry's metadata is there (cheap; :meth:`problem` checks the files)."""
        try:
            return self.meta().get("format") == CACHE_FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    def meta(self) -> dict:
        return json.loads((self.folder / META).read_text())

    def problem(self, checksums: bool = True) -> str | None:
        """What is wrong with this entry, or None: metadata readable, every file present with its recorded size
        and (``checksums``) its recorded BLAKE2b digest."""
        try:
            meta = self.meta()
        except FileNotFoundError:
            return f"{META} is missing"
        except (OSError, ValueError) as exc:
            return f"{META} is unreadable ({exc})"
        try:
            if meta.get("format") != CACHE_FORMAT:
                return f"{META} is not a {CACHE_FORMAT} record"
            files: dict = meta["files"]
            needed = _entry_files(meta)
        except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            return f"{META} is incomplete ({exc!r})"
        if missing := [n for n in needed if n not in files]:
            return f"{META} does not list {missing[0]}"
        for name, record in files.items():
            path = self.folder / name
            if Path(name).name != name or not isinstance(record, list) or len(record) != 2:
                return f"{META} has a bad record for {name!r}"
            try:
                size = path.stat().st_size
            except OSError:
                return f"{name} is missing"
            if size != record[0]:
                return f"{name} holds {size} bytes, {record[0]} were written"
        if checksums:
            for name, (_, digest) in files.items():
                if file_digest(self.folder / name) != digest:
                    return f"{name} does not match its checksum"
        return None

    def open(self) -> bool:
        """True when the entry is complete and intact (its last use is then set to now).

        A damaged entry (a truncated or altered file, broken metadata) is reported in one warning line and
        deleted, so the caller rebuilds it.
        """
        if not self.folder.exists():
            return False
        t0 = time.perf_counter()
        problem = self.problem()
        if problem is None:
            log.debug("verified cache entry %s in %.3f s", self.folder.name, time.perf_counter() - t0)
            _sweep(self.folder, _IN_USE, "in-use marker(s)", stale_after=None, level=logging.DEBUG)
            self.touch()
            return True
        log.warning("The video cache entry %s is damaged (%s): deleting it and computing it again.",
                    self.folder, problem)
        remove_entry(self.folder)
        return False

    def touch(self) -> None:
        """Record a use: the folder's mtime is the entry's last use (least-recently-used eviction)."""
        with contextlib.suppress(OSError):
            os.utime(self.folder)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Mark the entry used by this process and thread, so no concurrent run evicts it meanwhile."""
        marker = self.folder / f".in_use.{os.getpid()}.{threading.get_ident()}"
        try:
            marker.touch()
        except OSError:
            marker = None
        try:
            yield
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)
            self.touch()

    @staticmethod
    def finish(tmp: Path, folder: Path, meta: dict) -> None:
        """Record every file of the built entry ``tmp`` (size, digest) in its metadata and rename it ``folder``.

        If another run completed the same entry first, that one is kept and ``tmp`` dropped.
        """
        files = {p.name: [p.stat().st_size, file_digest(p)] for p in sorted(Path(tmp).iterdir())
                 if p.is_file() and p.name != META and not _IN_USE.fullmatch(p.name)}
        (Path(tmp) / META).write_text(json.dumps({**meta, "format": CACHE_FORMAT, "files": files}))
        folder = Path(folder)
        if folder.exists():
            if VideoCache(folder).problem(checksums=False) is None:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            remove_entry(folder)
        os.replace(tmp, folder)
        VideoCache(folder).touch()

    def track(self):
        from .face.track import FaceTrack

        return FaceTrack.load(self.folder / "track.safetensors")

    def chunk(self, k: int):
        """(masked latents, reference latents, blend masks uint8) of cached chunk ``k``; the last two kept."""
        if k not in self._loaded:
            import numpy as np
            import torch
            from safetensors.torch import load_file

            lat = load_file(str(self.folder / f"latents_{k:05d}.safetensors"))
            masks = torch.from_numpy(np.load(self.folder / f"masks_{k:05d}.npz")["masks"])
            if len(self._loaded) >= 2:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[k] = (lat["masked"].float(), lat["reference"].float(), masks)
        return self._loaded[k]

    def gather(self, frames, chunk_len: int):
        """(masked, reference latents, uint8 blend masks) of source ``frames`` in their order, chunk by chunk.

        Read-only: consecutive frames of one chunk come back as views of the loaded chunk."""
        import torch

        ks = torch.div(frames, chunk_len, rounding_mode="floor")
        n = frames.numel()
        if n and int(ks[0]) == int(ks[-1]) and bool((frames[1:] - frames[:-1] == 1).all()):
            # consecutive frames of one chunk (the usual batch): views of the loaded chunk, nothing copied
            a = int(frames[0]) - int(ks[0]) * chunk_len
            return tuple(p[a:a + n] for p in self.chunk(int(ks[0])))
        out = None
        for k in ks.unique().tolist():
            at = (ks == k).nonzero().squeeze(1)
            parts = self.chunk(k)
            off = frames[at] - k * chunk_len
            if out is None:
                out = [torch.empty((frames.numel(), *p.shape[1:]), dtype=p.dtype) for p in parts]
            for o, p in zip(out, parts):
                o[at] = p[off]
        return tuple(out)


def remove_entry(folder: Path) -> None:
    """Delete an entry: renamed aside first, so no other run sees a half-deleted entry."""
    folder = Path(folder)
    trash = folder.with_name(f"{folder.name}.trash{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- the whole cache


@dataclass
class CacheEntry:
    """What ``cache info`` shows of one entry."""

    path: Path
    size: int
    last_used: float
    in_use: bool
    complete: bool
    video: str = ""


def _size(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for e in it:
            with contextlib.suppress(OSError):
                total += e.stat(follow_symlinks=False).st_size if e.is_file(follow_symlinks=False) else 0
    return total


def _in_use_by_live_run(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            m = _IN_USE.fullmatch(p.name)
            if m and not _owner_gone(p, int(m["pid"]), stale_after=None):
                return True
    return False


def list_entries(root: Path) -> list[CacheEntry]:
    """The entries in ``root``, least recently used first (no checksums read)."""
    entries = []
    with contextlib.suppress(OSError):
        for p in Path(root).iterdir():
            if not (_KEY.fullmatch(p.name) and p.is_dir()):
                continue
            cache = VideoCache(p)
            try:
                meta = cache.meta()
                complete, video = meta.get("format") == CACHE_FORMAT, str(meta.get("video", ""))
            except (OSError, ValueError, AttributeError):
                complete, video = False, ""
            with contextlib.suppress(OSError):
                entries.append(CacheEntry(p, _size(p), p.stat().st_mtime, _in_use_by_live_run(p), complete, video))
    return sorted(entries, key=lambda e: e.last_used)


def _live_partials(root: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return [p for p in Path(root).iterdir() if (m := _CACHE_LEFTOVER.fullmatch(p.name))
                and not _owner_gone(p, int(m["pid"]))]
    return []


def evict(root: Path, limit: int, keep: Iterable[Path] = ()) -> list[CacheEntry]:
    """Delete least recently used entries until the cache (entries and live builds) holds at most ``limit`` bytes.

    Never the entries in ``keep``, entries a live run is using, or builds in progress; broken entries go first.
    """
    keep = {Path(k).resolve() for k in keep}
    entries = list_entries(root)
    total = sum(e.size for e in entries) + sum(_size(p) for p in _live_partials(root))
    removed = []
    for e in sorted(entries, key=lambda e: (e.complete, e.last_used)):
        if total <= limit:
            break
        if e.in_use or e.path.resolve() in keep:
            continue
        remove_entry(e.path)
        total -= e.size
        removed.append(e)
    if removed:
        log.info("Video cache over its cap of %s: removed the %d least recently used entr%s (%s); it now holds %s.",
                 format_bytes(limit), len(removed), "y" if len(removed) == 1 else "ies",
                 format_bytes(sum(e.size for e in removed)), format_bytes(total))
    return removed


def clear(root: Path, older_than_days: float | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Delete every entry (or those unused for ``older_than_days``) and dead runs' leftovers.

    Returns (removed, kept because a live run uses them).
    """
    sweep_cache_leftovers(root)
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
    removed, busy = [], []
    for e in list_entries(root):
        if cutoff is not None and e.last_used >= cutoff:
            continue
        if e.in_use:
            busy.append(e)
            continue
        remove_entry(e.path)
        removed.append(e)
    return removed, busy


def format_info(root: Path, limit: int) -> str:
    """``cache info``: location, cap, entries (least recently used first) and total size."""
    entries = list_entries(root)
    total = sum(e.size for e in entries)
    lines = [f"video cache: {Path(root).resolve()}{'' if Path(root).is_dir() else ' (not created yet)'}",
             f"entries: {len(entries)}, {format_bytes(total)} of a {format_bytes(limit)} cap "
             "(--cache-max-gb / JOYGEN_CACHE_MAX_GB)"]
    for e in entries:
        state = "in use" if e.in_use else ("complete" if e.complete else "broken")
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        lines.append(f"  {e.path.name}  {format_bytes(e.size):>10}  last used {used}  {state}  {e.video}")
    partials = _live_partials(root)
    if partials:
        lines.append(f"builds in progress: {len(partials)}")
    return "\n".join(lines)
