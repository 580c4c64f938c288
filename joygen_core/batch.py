"""Many videos in one process: a manifest of (video, audio, output), split into shards, models loaded once.

The manifest is a CSV file with a header row naming its columns, ``video,audio`` and optionally ``output``::

    # comments and blank lines are ignored
    video,audio,output
    clips/anna.mp4,speech/anna_fr.wav,anna_fr.mp4
    clips/ben.mov,speech/ben.wav,

``video`` and ``audio`` are relative to the manifest's folder (or absolute); ``output`` is relative to the output
folder (``out_dir``, default the manifest's folder) and, when empty or absent, is ``<video stem>__<audio
stem>.mp4`` there. Two rows may not write the same output.

Sharding: item ``k`` (its position among the manifest's rows, comments not counted) belongs to shard ``i`` of
``n`` when ``k % n == i``, so the shards of one manifest are disjoint, their union is the whole list, and their
sizes differ by at most one. The split follows the row order: every process must read the same manifest, and
reordering or inserting rows moves items between shards (finished outputs are skipped, so a rerun after an edit
does no work twice). Without an explicit shard, :func:`shard_from_env` reads what launchers set: ``RANK`` /
``WORLD_SIZE`` (torchrun, ``accelerate launch``), else ``SLURM_PROCID`` / ``SLURM_NTASKS``.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, JoyGenError

if TYPE_CHECKING:
    from .pipeline import LipSyncOptions, LipSyncReport, PipelineModels
    from .progress import JobProgress

log = logging.getLogger(__name__)

COLUMNS = ("video", "audio", "output")


@dataclass(frozen=True)
class BatchItem:
    """One row of a manifest: drive ``video`` with ``audio``, write ``output``."""

    index: int  # position among the manifest's rows (what sharding uses)
    line: int  # line number in the manifest file (for messages)
    video: Path
    audio: Path
    output: Path

    def describe(self) -> str:
        return f"{self.video.name} + {self.audio.name} -> {self.output}"


@dataclass
class BatchResult:
    """What a batch run did with each of its items."""

    done: list[tuple[BatchItem, LipSyncReport]] = field(default_factory=list)
    skipped: list[BatchItem] = field(default_factory=list)  # output already there
    failed: list[tuple[BatchItem, str]] = field(default_factory=list)  # and why

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{len(self.done)} written, {len(self.skipped)} skipped (output exists), {len(self.failed)} failed"]
        lines += [f"  skipped line {it.line}: {it.output}" for it in self.skipped]
        lines += [f"  FAILED line {it.line}: {it.describe()}: {why}" for it, why in self.failed]
        return "\n".join(lines)


def read_manifest(path: Path | str, out_dir: Path | str | None = None) -> list[BatchItem]:
    """The items of the CSV manifest at ``path`` (format in the module docstring). A malformed manifest (no
    header, unknown columns, a row without video or audio, two rows with one output) is an :class:`InputError`
    naming the line; files that do not exist are left for the run, where they fail only their own item."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Manifest {path} does not exist.")
    base = path.resolve().parent
    out_base = Path(out_dir) if out_dir is not None else base
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the manifest {path}: {exc}.") from exc
    rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip()
            .startswith("#")]
    if not rows:
        raise InputError(f"Manifest {path} lists no videos: write a header line 'video,audio,output' and then one "
                         "line per video.")
    header_line, header = rows[0][0], next(csv.reader([rows[0][1]]))
    columns = [c.strip().lower() for c in header]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or "video" not in columns or "audio" not in columns or len(set(columns)) != len(columns):
        raise InputError(f"{path} line {header_line}: the header must name the columns video,audio and optionally "
                         f"output (got {','.join(header)}).")
    items: list[BatchItem] = []
    seen: dict[Path, int] = {}
    for n, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) > len(columns):
            raise InputError(f"{path} line {n}: {len(cells)} fields for the {len(columns)} columns "
                             f"{','.join(columns)}.")
        row = dict(zip(columns, cells + [""] * (len(columns) - len(cells))))
        if not row["video"] or not row["audio"]:
            raise InputError(f"{path} line {n}: a video and an audio file are needed.")
        video, audio = base / row["video"], base / row["audio"]
        output = out_base / (row.get("output") or f"{Path(row['video']).stem}__{Path(row['audio']).stem}.mp4")
        key = Path(os.path.abspath(output))
        if key in seen:
            raise InputError(f"{path} line {n}: the output {output} is also that of line {seen[key]}.")
        seen[key] = n
        items.append(BatchItem(index=len(items), line=n, video=video, audio=audio, output=output))
    return items


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard takes i/n, such as 0/4 (shard 0 of 4); got {text!r}.") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: needs n >= 1 and 0 <= i < n.")
    return i, n


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from ``RANK`` / ``WORLD_SIZE`` (torchrun, accelerate launch) or ``SLURM_PROCID`` /
    ``SLURM_NTASKS``; (0, 1) when neither pair is set."""
    env = os.environ if env is None else env
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if env.get(rank) is not None and env.get(world) is not None:
            return parse_shard(f"{env[rank]}/{env[world]}")
    return 0, 1


def shard(items: list[BatchItem], i: int, n: int) -> list[BatchItem]:
    """The items of shard ``i`` of ``n``: those whose manifest position ``index % n == i``."""
    return [it for it in items if it.index % n == i]


def run_batch(items: list[BatchItem], models: PipelineModels, options: LipSyncOptions | None = None, *,
              cache_root: Path | str | None = None, overwrite: bool = False, cache_max_gb: float | None = None,
              progress: Callable[[BatchItem], JobProgress] | None = None) -> BatchResult:
    """Run :func:`joygen_core.pipeline.lip_sync` on each item with the same ``models`` (loaded once) and the
    per-video cache under ``cache_root`` (one video driven by several audios is prepared once).

    An item whose output exists is skipped (unless ``overwrite``); an item that fails (a missing or broken file,
    a face that cannot be found) is logged and recorded, and the others still run. ``progress(item)`` makes the
    display of one item's run (closed after it). Interrupts (KeyboardInterrupt) stop the whole batch.
    """
    from .pipeline import check_inputs, lip_sync

    result = BatchResult()
    for k, item in enumerate(items, 1):
        head = f"[{k}/{len(items)}] line {item.line}: {item.describe()}"
        if item.output.exists() and not overwrite:
            log.info("%s: skipped, the output exists", head)
            result.skipped.append(item)
            continue
        log.info("%s", head)
        display = progress(item) if progress is not None else None
        start = time.perf_counter()
        try:
            check_inputs(item.video, item.audio, item.output, overwrite=overwrite)
            report = lip_sync(item.video, item.audio, item.output, models, options, cache_root=cache_root,
                              overwrite=overwrite, progress=display, cache_max_gb=cache_max_gb)
        except Exception as exc:  # noqa: BLE001 - the item's own failure (bad file, no face, out of memory)
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("%s: failed: %s", head, why)
            if not isinstance(exc, JoyGenError):  # a bug or a resource problem: keep its traceback for -v
                log.debug("%s", head, exc_info=True)
            result.failed.append((item, why))
            continue
        finally:
            if display is not None:
                display.close()
        log.info("%s: %d frames in %.1f s%s", head, report.frames, time.perf_counter() - start,
                 " (video cache reused)" if report.cache_hit else "")
        result.done.append((item, report))
    return result
