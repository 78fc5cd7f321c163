"""Sinks and the bounded queues that decouple them from analysis.

Each sink (JSON Lines writer, dashboard) runs in its own thread behind its
own :class:`EventQueue`.  Analysis never waits for a sink: when a queue is
full (a stalled ``stdout`` reader, a slow terminal), the oldest droppable
events (``prediction``, ``silence``, ``midi``) are dropped and counted;
``start``, ``change``, ``overrun``, ``error``, ``summary`` and ``stop`` are
always delivered.  A sink whose reader went away (``BrokenPipeError``) asks
the pipeline to stop through ``on_gone``; a sink that cannot write (disk
full, I/O error, closed descriptor) reports an
:class:`~rtgenre.errors.OutputFailedError` through the bus's ``on_error``
(the session stops the run with it).
"""

from __future__ import annotations

import errno
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable

from rtgenre.errors import OutputFailedError
from rtgenre.events import DROPPABLE, Event


class Sink(ABC):
    """Consumes events, one at a time, in order, from its own thread."""

    @abstractmethod
    def handle(self, event: Event) -> None:
        """Deliver one event (may block: only this sink's thread waits)."""

    def close(self) -> None:
        """Flush and release the output."""


class EventQueue:
    """Bounded FIFO of events that drops the oldest droppable events when full.

    Parameters
    ----------
    capacity : int
        Events held before dropping starts.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, event: Event) -> None:
        """Enqueue without ever blocking.

        A droppable event arriving at a full queue evicts the oldest droppable
        event (or is dropped itself if there is none); other events are always
        appended, so they never cost a prediction and counts stay exact.
        """
        with self._cond:
            if event.kind in DROPPABLE and len(self._items) >= self.capacity:
                victim = next((e for e in self._items if e.kind in DROPPABLE), None)
                self.dropped += 1
                if victim is None:
                    return
                self._items.remove(victim)
            self._items.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or ``None`` when closed and drained (or on timeout)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        with self._cond:
            return self._closed and not self._items

    @property
    def pending(self) -> int:
        """Events waiting."""
        return len(self._items)


class SinkRunner(threading.Thread):
    """Feeds one sink from its queue in a daemon thread.

    Parameters
    ----------
    sink : Sink
    on_gone : callable
        Called once if the sink's reader went away (broken pipe).
    capacity : int
        Queue capacity in events.
    on_error : callable, optional
        Called once with an :class:`OutputFailedError` if the sink cannot write.
    """

    def __init__(self, sink: Sink, on_gone: Callable[[], None], capacity: int = 256, on_error: Callable[[OutputFailedError], None] | None = None) -> None:
        super().__init__(name=f"sink-{type(sink).__name__}", daemon=True)
        self.sink = sink
        self.queue = EventQueue(capacity)
        self.gone = False
        self.failed: OutputFailedError | None = None
        self.busy = False
        self._on_gone = on_gone
        self._on_error = on_error

    def run(self) -> None:
        while True:
            event = self.queue.get(timeout=0.5)
            if event is None:
                if self.queue.drained:
                    return
                continue
            if self.gone or self.failed is not None:
                continue
            self.busy = True
            try:
                self.sink.handle(event)
            except BrokenPipeError:
                self.gone = True
                self._on_gone()
            except OSError as exc:
                self._fail(exc)
            finally:
                self.busy = False

    def _fail(self, exc: OSError) -> None:
        """Stop writing after an output error and tell the bus's owner, once."""
        self.failed = output_error(exc)
        if self._on_error is not None:
            self._on_error(self.failed)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written (or nothing will be written any more)."""
        return self.gone or self.failed is not None or not self.is_alive() or (not self.busy and not self.queue.pending)

    def finish(self, timeout: float | None) -> None:
        """Close the queue, wait up to ``timeout`` s (None: until drained), then close the sink."""
        self.queue.close()
        self.join(timeout)
        if not self.is_alive():
            try:
                self.sink.close()
            except BrokenPipeError:
                self.gone = True
            except OSError as exc:
                if self.failed is None:
                    self._fail(exc)


def output_error(exc: OSError) -> OutputFailedError:
    """The user-facing error for a failed write (ENOSPC, EIO, EBADF ...)."""
    why = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return OutputFailedError(
        f"Cannot write the output ({text}{', ' + why if why else ''})",
        "Free disk space, or check the file or pipe that stdout goes to",
    )


class EventBus:
    """Fans each event out to every sink's queue.

    Attributes
    ----------
    on_error : callable or None
        Called with an :class:`OutputFailedError` when a sink cannot write
        (set by the session that owns the run).
    """

    def __init__(self) -> None:
        self.runners: list[SinkRunner] = []
        self.on_error: Callable[[OutputFailedError], None] | None = None

    def add(self, sink: Sink, on_gone: Callable[[], None], capacity: int = 256) -> None:
        runner = SinkRunner(sink, on_gone, capacity, on_error=self._failed)
        runner.start()
        self.runners.append(runner)

    def _failed(self, error: OutputFailedError) -> None:
        if self.on_error is not None:
            self.on_error(error)

    def publish(self, event: Event) -> None:
        for r in self.runners:
            r.queue.put(event)

    @property
    def dropped(self) -> int:
        """Events dropped by the most congested sink."""
        return max((r.queue.dropped for r in self.runners), default=0)

    @property
    def all_gone(self) -> bool:
        return bool(self.runners) and all(r.gone for r in self.runners)

    def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every sink wrote what was queued; True if they did."""
        deadline = time.monotonic() + timeout
        while not all(r.idle for r in self.runners):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def finish(self, timeout: float | None = 5.0) -> None:
        for r in self.runners:
            r.finish(timeout)
