"""A three-stage streaming engine: a producer thread in front, the caller's own work in the middle, a consumer
thread behind, joined by bounded queues.

``run_stages(source, work, sink)`` is ``sink(work(item) for item in source)``; with ``pipelined=True`` the three
overlap: the producer thread runs ``source`` (reading, cropping, cache reads) one or two items ahead, the
caller's thread runs ``work`` (the networks, and every progress / interrupt report, as ComfyUI wants them on the
thread that called), and the consumer thread runs ``sink`` (pasting and the video encoder) one or two items
behind. PyAV, cv2 and torch release the GIL while they compute, so the stages truly run at once.

Failure anywhere stops everything promptly: an exception raised by ``source`` or ``sink`` is re-raised on the
caller's thread; an exception raised by ``work`` (an interrupt) ends the producer and makes the consumer's
iterator raise :class:`Cancelled` inside ``sink`` (so a writer removes its partial file); both threads are joined
before the caller's exception propagates, so no thread outlives the call. Queues hold at most ``depth`` items,
so memory stays a few items whatever the length.

CPU threads: torch keeps its own intra-op pool (one thread per core, ``torch.set_num_threads`` left alone: the
networks are the critical path, and on a GPU they barely use the CPU); the codecs run their own threads outside
it (PyAV decodes with FFmpeg's automatic threading, x264 encodes with its default frame threads). On a CPU-only
machine the pools then share the cores: the producer and the consumer sleep on their queues whenever they are
ahead, so oversubscription lasts only while a codec and the networks are both busy, which is the overlap wanted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["Cancelled", "run_stages"]

A = TypeVar("A")
B = TypeVar("B")
R = TypeVar("R")

_POLL = 0.05  # seconds between looks at the stop flag while a queue is full or empty
_END = object()


class Cancelled(Exception):
    """Raised inside ``sink``'s iterator when the run stops early (the caller's ``work`` raised)."""


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    """Next item, or ``_END`` once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            continue
    return _END


def run_stages(source: Iterable[A], work: Callable[[A], B], sink: Callable[[Iterator[B]], R], *,
               pipelined: bool = True, depth: int = 1, name: str = "joygen") -> R:
    """``sink(work(x) for x in source)``, the three stages overlapped when ``pipelined`` (see the module doc).

    ``source`` is iterated on a producer thread and ``sink`` runs on a consumer thread; ``work`` always runs on the
    calling thread. Items pass through queues of ``depth``: in flight at once are at most ``depth`` + 1 items in
    front of ``work`` and ``depth`` + 1 behind it. Returns what ``sink`` returns.
    """
    if not pipelined:
        it = iter(source)
        try:
            return sink(work(x) for x in it)
        finally:
            if hasattr(it, "close"):
                it.close()

    depth = max(int(depth), 1)
    stop = threading.Event()  # set when the run ends, one way or another: every loop gives up
    cancelled = threading.Event()  # set when the caller gives up: the consumer's iterator raises
    ahead: queue.Queue = queue.Queue(depth)
    behind: queue.Queue = queue.Queue(depth)
    result: list = []
    errors: list[BaseException] = []  # what the producer or the consumer raised

    def produce() -> None:
        it = iter(source)
        try:
            for item in it:
                if not _put(ahead, item, stop):
                    return
            _put(ahead, _END, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)
            cancelled.set()  # the sink must not finish a partial output
            stop.set()
        finally:
            if hasattr(it, "close"):
                it.close()  # on this thread: a generator's cleanup (closing the reader) runs where it ran

    def items() -> Iterator[B]:
        while True:
            if cancelled.is_set():
                raise Cancelled("the run stopped early")
            try:
                item = behind.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def consume() -> None:
        try:
            result.append(sink(items()))
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)
        finally:
            stop.set()  # the sink is done: nobody takes items any more

    producer = threading.Thread(target=produce, name=f"{name}-read", daemon=True)
    consumer = threading.Thread(target=consume, name=f"{name}-write", daemon=True)
    producer.start()
    consumer.start()
    try:
        while True:
            item = _get(ahead, stop)
            if item is _END:
                break
            out = work(item)
            if not _put(behind, out, stop):
                break
        if not stop.is_set():
            _put(behind, _END, stop)
        consumer.join()
    except BaseException:
        cancelled.set()
        stop.set()
        raise
    finally:
        stop.set()
        producer.join()
        consumer.join()
    if errors:
        raise errors[0]
    if not result:  # the producer failed first: the consumer was cancelled
        raise Cancelled("the run stopped early")
    return result[0]
