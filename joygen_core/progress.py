"""One progress bar over a whole job, and throttled live previews.

Long library functions report ``progress(stage, done, total, preview=None)`` once per batch: ``stage`` names the
work (:data:`STAGES` for :func:`joygen_core.pipeline.lip_sync`), ``done`` / ``total`` count its frames (or steps),
and ``preview`` is a zero-argument callable that builds an RGB uint8 image [H, W, 3] of the latest result. The
preview is a callable so that building it costs nothing unless a display asks for it: :class:`JobProgress` calls
it at most once per ``preview_interval`` seconds and only while previews have cost under ``preview_budget`` of the
elapsed time. A report may raise (ComfyUI's interrupt does): the caller then stops and cleans up.

:class:`JobProgress` folds the stages into one fraction, each weighted by its measured share of a job's time;
stages that never report (a cache hit skips ``faces`` and ``video``) drop out of the total, so the bar still runs
from 0 to 1. Displays subclass it and override :meth:`JobProgress.show`: :class:`TerminalProgress` here (the CLI),
the ComfyUI bar in ``nodes/comfy.py``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["STAGES", "STAGE_LABELS", "STAGE_WEIGHTS", "JobProgress", "Preview", "ProgressCallback",
           "TerminalProgress", "format_seconds"]

Preview = Callable[[], np.ndarray]

STAGES = ("faces", "video", "audio", "edit")
STAGE_LABELS = {"faces": "finding faces", "video": "3D faces and latents", "audio": "audio to motion",
                "edit": "editing"}
# Shares of a cold-cache run with the official-size networks (bench/bench_edit.py stages --full-size, 2-core CPU):
# per frame, MTCNN ~0.05 s; the per-video pass two VAE encodes + regression + parsing ~3.9 s; the edit the depth
# encode, UNet, decode, paste and x264 ~6.8 s; Whisper + HuBERT + A2M a few ms per frame.
STAGE_WEIGHTS = {"faces": 0.01, "video": 0.36, "audio": 0.01, "edit": 0.62}


class ProgressCallback(Protocol):
    def __call__(self, stage: str, done: int, total: int, preview: Preview | None = None) -> None: ...


def format_seconds(seconds: float) -> str:
    """``1:05`` / ``1:02:03``."""
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JobProgress:
    """Callable ``(stage, done, total, preview=None)`` tracking one job's overall fraction, rate and ETA."""

    def __init__(self, weights: dict[str, float] | None = None, *, preview_interval: float = 1.0,
                 preview_budget: float = 0.02, clock: Callable[[], float] = time.monotonic):
        self.weights = dict(STAGE_WEIGHTS if weights is None else weights)
        self.order = list(self.weights)
        self.preview_interval = preview_interval
        self.preview_budget = preview_budget
        self.clock = clock
        self.started = clock()
        self.stage: str | None = None
        self.done = 0
        self.total = 0
        self.finished: set[str] = set()  # stages that ran to their end
        self.skipped: set[str] = set()  # stages that never reported before a later one did
        self.stage_started = self.started
        self.stage_done0 = 0
        self.preview_seconds = 0.0
        self.previews = 0
        self._last_preview = -float("inf")

    # ------------------------------------------------------------ state

    def __call__(self, stage: str, done: int, total: int, preview: Preview | None = None) -> None:
        if stage not in self.weights:  # an unknown stage (a library function's own) counts like the current one
            self.weights[stage] = 0.0
            self.order.append(stage)
        if stage != self.stage:
            if self.stage is not None:
                self.finished.add(self.stage)
            pos = self.order.index(stage)
            self.skipped.update(s for s in self.order[:pos] if s not in self.finished and s != stage)
            # the rate counts from this first report: what it says was done before it took unmeasured time
            self.stage, self.stage_started, self.stage_done0 = stage, self.clock(), int(done)
        self.done, self.total = int(done), max(int(total), 1)
        if self.done >= self.total:
            self.finished.add(stage)
        image = self._preview(preview)
        self.show(image)

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1] over the stages that run."""
        live = [s for s in self.order if s not in self.skipped]
        whole = sum(self.weights[s] for s in live)
        if whole <= 0:
            return min(self.done / self.total, 1.0) if self.stage else 0.0
        before = sum(self.weights[s] for s in live if s in self.finished and s != self.stage)
        current = self.weights.get(self.stage, 0.0) * min(self.done / self.total, 1.0) if self.stage else 0.0
        return min((before + current) / whole, 1.0)

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.stage or "", self.stage or "")

    @property
    def rate(self) -> float | None:
        """Units (frames) per second in the current stage (None until half a second of it has been seen)."""
        dt = self.clock() - self.stage_started
        return (self.done - self.stage_done0) / dt if dt >= 0.5 else None

    @property
    def eta(self) -> float | None:
        """Seconds left for the whole job (None until there is something to go on)."""
        f = self.fraction
        if f <= 0.01:
            return None
        return (self.clock() - self.started) * (1 - f) / f

    def _preview(self, preview: Preview | None) -> np.ndarray | None:
        if preview is None or not self.wants_previews():
            return None
        now = self.clock()
        if now - self._last_preview < self.preview_interval:
            return None
        if self.preview_seconds > self.preview_budget * max(now - self.started, self.preview_interval):
            return None
        self._last_preview = now
        image = preview()
        self.preview_seconds += self.clock() - now
        self.previews += 1
        return image

    # ------------------------------------------------------------ display (subclasses)

    def wants_previews(self) -> bool:
        """False where nothing can show a picture: previews are then never built."""
        return False

    def show(self, preview: np.ndarray | None) -> None:
        """Display the current state (``preview``: a new RGB uint8 image, or None)."""

    def close(self) -> None:
        """End the display."""


class TerminalProgress(JobProgress):
    """The CLI's display: a redrawn bar with rate and ETA on a terminal; log lines every ``log_every`` s otherwise."""

    def __init__(self, stream: TextIO | None = None, *, log_every: float = 10.0, width: int = 28, **kw):
        super().__init__(**kw)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = log_every
        self.width = width
        self._drawn = -float("inf")
        self._logged: tuple[str | None, float] = (None, -float("inf"))
        self._open_line = False

    def line(self) -> str:
        eta, rate = self.eta, self.rate
        return (f"{self.label}: {self.done}/{self.total}" + (f", {rate:.1f}/s" if rate is not None else "")
                + f", {100 * self.fraction:.0f}% overall" + (f", ETA {format_seconds(eta)}" if eta is not None else ""))

    def show(self, preview: np.ndarray | None) -> None:
        now = self.clock()
        end = self.done >= self.total
        if self.tty:
            if end or now - self._drawn >= 0.1:
                self._drawn = now
                filled = int(self.width * self.fraction)
                bar = "#" * filled + "." * (self.width - filled)
                self.stream.write(f"\r[{bar}] {self.line():<72.72}")
                self.stream.flush()
                self._open_line = True
            return
        stage, at = self._logged
        if end or stage != self.stage or now - at >= self.log_every:
            self._logged = (self.stage, now)
            log.info("%s", self.line())

    def close(self) -> None:
        if self.tty and self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
