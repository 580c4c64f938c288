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

CPU threads: the caller's thread keeps torch's whole intra-op pool (the networks are the critical path, and on a
GPU they barely use the CPU). Each thread that runs torch operations gets its own OpenMP team, so without a bound
the producer and the consumer would each bring a full team (its workers spinning after every small operation)
on top of the caller's and of the codecs' own threads (PyAV decodes with FFmpeg's automatic threading, x264
encodes with its frame threads): on a 2-core machine that oversubscription made the pipelined run slower than the
serial one. ``worker_threads`` bounds the producer's and the consumer's torch threads (their own OpenMP / MKL
settings, thread-local; torch's default for threads started later is restored when they end).
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _torch_threads(n: int | None, default: int) -> Iterator[None]:
    """This thread's torch intra-op threads bounded to ``n`` (None: left alone) while inside.

    ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL counts, and also the default that threads
    doing their first torch operation later pick up: that default (``default``, read on the caller's thread before
    any worker started) is put back on the way out.
    """
    if not n:
        yield
        return
    import torch

    torch.get_num_threads()  # torch's lazy per-thread set-up first: done later, it would undo the bound below
    torch.set_num_threads(max(1, min(int(n), default)))
    try:
        yield
    finally:
        torch.set_num_threads(default)


def run_stages(source: Iterable[A], work: Callable[[A], B], sink: Callable[[Iterator[B]], R], *,
               pipelined: bool = True, depth: int = 1, name: str = "joygen", worker_threads: int | None = None) -> R:
    """``sink(work(x) for x in source)``, the three stages overlapped when ``pipelined`` (see the module doc).

    ``source`` is iterated on a producer thread and ``sink`` runs on a consumer thread; ``work`` always runs on the
    calling thread. Items pass through queues of ``depth``: in flight at once are at most ``depth`` + 1 items in
    front of ``work`` and ``depth`` + 1 behind it. ``worker_threads``: torch intra-op threads of the producer and
    the consumer (None: torch's default). Returns what ``sink`` returns.
    """
    if not pipelined:
        it = iter(source)
        try:
            return sink(work(x) for x in it)
        finally:
            if hasattr(it, "close"):
                it.close()

    depth = max(int(depth), 1)
    default_threads = 0
    if worker_threads:
        import torch

        default_threads = torch.get_num_threads()
    stop = threading.Event()  # set when the run ends, one way or another: every loop gives up
    cancelled = threading.Event()  # set when the caller gives up: the consumer's iterator raises
    ahead: queue.Queue = queue.Queue(depth)
    behind: queue.Queue = queue.Queue(depth)
    result: list = []
    errors: list[BaseException] = []  # what the producer or the consumer raised

    def produce() -> None:
        with _torch_threads(worker_threads, default_threads):
            _produce()

    def _produce() -> None:
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
            with _torch_threads(worker_threads, default_threads):
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
