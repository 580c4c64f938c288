"""The three-stage engine: the same results as the serial order, real overlap, failures that stop everything."""

from __future__ import annotations

import threading
import time

import pytest

from joygen_core.engine import Cancelled, run_stages

WAIT = 10.0  # seconds an event may take before a test calls it a hang


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.mark.parametrize("pipelined", [True, False])
def test_results_in_order_and_work_on_the_callers_thread(pipelined):
    caller = threading.get_ident()
    where = {"work": set(), "source": set(), "sink": set()}

    def source():
        for i in range(25):
            where["source"].add(threading.get_ident())
            yield i

    def work(x):
        where["work"].add(threading.get_ident())
        return x * x

    def sink(items):
        where["sink"].add(threading.get_ident())
        return [y + 1 for y in items]

    before = _threads()
    assert run_stages(source(), work, sink, pipelined=pipelined, depth=2) == [i * i + 1 for i in range(25)]
    assert where["work"] == {caller}
    if pipelined:
        assert caller not in where["source"] | where["sink"] and where["source"] != where["sink"]
    assert _threads() <= before  # every thread joined


def test_the_three_stages_really_run_at_once():
    """The reader produces item 2 only while the networks are still on item 0, and the writer holds item 0 then:
    possible only when all three overlap (the serial order would wait forever, hence the timeouts)."""
    working_on_0 = threading.Event()
    reader_ahead = threading.Event()
    writer_has_0 = threading.Event()

    def source():
        for i in range(4):
            if i == 2:
                assert working_on_0.wait(WAIT)
                reader_ahead.set()
            yield i

    def work(x):
        if x == 0:
            working_on_0.set()
            assert reader_ahead.wait(WAIT)  # the reader moved on while this item is in the networks
        if x == 2:
            assert writer_has_0.wait(WAIT)  # the writer is busy with item 0 while the networks run item 2
        return x

    def sink(items):
        out = []
        for x in items:
            if x == 0:
                writer_has_0.set()
            out.append(x)
        return out

    assert run_stages(source(), work, sink, depth=1) == [0, 1, 2, 3]


def test_queues_are_bounded():
    """With depth 1 the reader is never more than a few items ahead of the writer: memory stays constant."""
    produced, written = [0], [0]
    gap = []

    def source():
        for i in range(40):
            produced[0] = i + 1
            gap.append(produced[0] - written[0])
            yield i

    def sink(items):
        for _ in items:
            time.sleep(0.002)
            written[0] += 1
        return written[0]

    assert run_stages(source(), lambda x: x, sink, depth=1) == 40
    assert max(gap) <= 6  # 1 queued + 1 in work + 1 queued + 1 in the sink, and the item being made


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["source", "work", "sink"])
@pytest.mark.parametrize("pipelined", [True, False])
def test_a_failure_anywhere_reaches_the_caller_and_stops_every_stage(where, pipelined):
    boom = Boom(where)
    made, worked, sunk = [], [], []
    closed = threading.Event()
    cancelled = []

    def source():
        try:
            for i in range(10_000):
                if where == "source" and i == 5:
                    raise boom
                made.append(i)
                yield i
        finally:
            closed.set()  # the reader's cleanup ran

    def work(x):
        if where == "work" and x == 5:
            raise boom
        worked.append(x)
        return x

    def sink(items):
        try:
            for x in items:
                if where == "sink" and x == 5:
                    raise boom
                sunk.append(x)
            return "finished"
        except Cancelled:
            cancelled.append(True)  # a writer removes its partial file here
            raise

    before = _threads()
    t0 = time.monotonic()
    with pytest.raises(Boom) as caught:
        run_stages(source(), work, sink, pipelined=pipelined, depth=2)
    assert caught.value is boom
    assert time.monotonic() - t0 < 5  # promptly, not after the 10000 items
    assert closed.is_set() and len(made) < 20 and len(worked) < 20 and len(sunk) <= 5
    assert _threads() <= before  # no thread outlives the call
    if pipelined and where != "sink":
        assert cancelled == [True]  # the writer was told to give up, it did not finish a partial output


def test_an_interrupt_while_the_writer_is_busy_waits_for_it_and_cancels_it():
    writing = threading.Event()
    states = []

    def sink(items):
        try:
            for x in items:
                if x == 0:
                    writing.set()
                    time.sleep(0.3)  # a slow encode in progress when the interrupt comes
            states.append("finished")
        except Cancelled:
            states.append("cancelled")
            raise
        return None

    def work(x):
        if x == 2:
            assert writing.wait(WAIT)
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        run_stages(iter(range(100)), work, sink, depth=1)
    assert states == ["cancelled"]  # the caller returned only after the writer gave up


def test_an_empty_source_still_runs_the_sink_once():
    assert run_stages(iter(()), lambda x: x, lambda items: list(items)) == []


def test_worker_threads_bound_the_reader_and_writer_only():
    """The producer and the consumer run torch with ``worker_threads``; the caller's thread keeps its pool, and
    threads started afterwards get torch's default again."""
    import threading

    import torch

    before = torch.get_num_threads()
    seen = {}

    def source():
        seen["producer"] = torch.get_num_threads()
        yield from range(3)

    def work(x):
        seen["caller"] = torch.get_num_threads()
        return x

    def sink(items):
        out = list(items)
        seen["consumer"] = torch.get_num_threads()
        return out

    assert run_stages(source(), work, sink, worker_threads=1) == [0, 1, 2]
    assert seen == {"producer": 1, "consumer": 1, "caller": before}
    assert torch.get_num_threads() == before
    later = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [before]
