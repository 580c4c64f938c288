"""The job-wide progress fraction, preview throttling and the CLI's terminal / log display."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from joygen_core.progress import JobProgress, TerminalProgress, format_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_fraction_weights_stages_and_never_goes_back():
    p = JobProgress({"faces": 1, "video": 3, "audio": 1, "edit": 5}, clock=Clock())
    seen = []
    for stage, total in (("faces", 10), ("video", 10), ("audio", 2), ("edit", 20)):
        for d in range(0, total + 1):
            p(stage, d, total)
            seen.append(p.fraction)
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(1.0)
    p2 = JobProgress({"faces": 1, "video": 3, "audio": 1, "edit": 5}, clock=Clock())
    p2("faces", 10, 10)
    p2("video", 5, 10)
    assert p2.fraction == pytest.approx((1 + 1.5) / 10)


def test_cache_hit_skips_stages_and_still_runs_from_zero_to_one():
    p = JobProgress({"faces": 1, "video": 3, "audio": 1, "edit": 5}, clock=Clock())
    p("audio", 0, 2)
    assert p.fraction == 0.0
    p("audio", 2, 2)
    assert p.fraction == pytest.approx(1 / 6)
    p("edit", 10, 20)
    assert p.fraction == pytest.approx((1 + 2.5) / 6)
    p("edit", 20, 20)
    assert p.fraction == pytest.approx(1.0)


def test_previews_are_throttled_and_lazy():
    clock = Clock()
    built = []

    class Shows(JobProgress):
        def wants_previews(self):
            return True

        def show(self, preview):
            if preview is not None:
                built.append(preview)

    def make():
        clock.t += 0.001  # building a preview costs a millisecond
        return np.zeros((4, 4, 3), np.uint8)

    p = Shows(preview_interval=1.0, clock=clock)
    for i in range(100):  # 10 s in batches of 0.1 s
        clock.t += 0.1
        p("edit", i, 100, preview=make)
    assert 9 <= len(built) <= 11
    assert p.preview_seconds / clock.t < 0.02
    calls = []
    JobProgress(clock=clock)("edit", 1, 2, preview=lambda: calls.append(1))  # no display: never built
    assert calls == []


def test_preview_budget_caps_expensive_previews():
    clock = Clock()

    class Shows(JobProgress):
        def wants_previews(self):
            return True

    def slow():
        clock.t += 0.5
        return np.zeros((2, 2, 3), np.uint8)

    p = Shows(preview_interval=0.0, preview_budget=0.02, clock=clock)
    for i in range(200):
        clock.t += 0.1
        p("edit", i, 200, preview=slow)
    assert p.preview_seconds <= 0.02 * clock.t + 0.5


def test_terminal_bar_on_a_tty_and_log_lines_otherwise(caplog):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    clock = Clock()
    out = Tty()
    bar = TerminalProgress(out, clock=clock)
    for d in range(0, 11):
        clock.t += 1.0
        bar("edit", d, 10)
    bar.close()
    text = out.getvalue()
    assert "\r[" in text and "editing: 10/10" in text and text.endswith("\n")
    assert "ETA" in text and "/s" in text

    clock = Clock()
    plain = io.StringIO()
    with caplog.at_level(logging.INFO, logger="joygen_core.progress"):
        bar = TerminalProgress(plain, clock=clock, log_every=10.0)
        for d in range(0, 101):
            clock.t += 1.0
            bar("edit", d, 100)
    assert plain.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert 9 <= len(lines) <= 13  # every 10 s and at the end, not every batch
    assert lines[-1].startswith("editing: 100/100")


def test_format_seconds():
    assert format_seconds(65) == "1:05"
    assert format_seconds(3723) == "1:02:03"


def test_rate_counts_from_the_stage_first_report():
    clock = Clock()
    p = JobProgress(clock=clock)
    p("edit", 8, 64)  # a first batch done before any report: no rate yet, not 8 frames in 0 s
    assert p.rate is None
    clock.t += 2.0
    p("edit", 16, 64)
    assert p.rate == pytest.approx(4.0)
