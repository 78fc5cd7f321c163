"""The audio source interface and the shared producer-thread machinery.

A :class:`Source` owns one audio input (device, file, stdin, URL).  It is
opened (all user mistakes are raised there, before anything runs), then
started into a :class:`rtgenre.ring.Ring`, into which it writes float32 frames
``(n, channels)`` in [-1, 1] at the source's own rate and channel count.
Mixing, resampling and analysis belong to the consumer.

Two delivery disciplines exist:

* *live* sources (a device, a file paced in real time) never wait: when the
  consumer falls behind, the ring overwrites the oldest audio and counts the
  drop;
* non-live sources (a file read as fast as possible, stdin, a URL) wait for
  ring space instead (lossless backpressure).

A failure in the middle of a stream does not raise in the producer thread:
it is stored in :attr:`Source.error` and the ring is closed; the consumer
raises it once it has drained the ring (nothing readable is lost).
:class:`ThreadedSource` implements this for every source fed by a reader
thread.  A device source also offers ``check()``, a watchdog the consumer
polls.

What happens to the stream itself (a stall, a lost connection, a recovery)
is told to the consumer through :attr:`Source.notices`, each :class:`Notice`
stamped with the ring position it belongs to, so that the consumer reports it
in stream order and restarts its analysis exactly at a gap.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtgenre.errors import InputFormatError, InputUnreadableError, RtgenreError
from rtgenre.ring import Ring

#: Accepted source sample rates (Hz), inclusive.
MIN_RATE, MAX_RATE = 8000, 384000
#: Accepted source channel counts, inclusive.
MIN_CHANNELS, MAX_CHANNELS = 1, 32


def check_format(what: str, sample_rate: int, channels: int, fix: str | None = None) -> None:
    """Raise :class:`InputFormatError` unless rate and channel count are supported.

    Parameters
    ----------
    what : str
        The input, as named in the message (``"file song.wav"``).
    sample_rate : int
        Sample rate in Hz.
    channels : int
        Channel count.
    fix : str or None
        What to do about it; default: how to convert a file with ffmpeg.
    """
    what = what[:1].upper() + what[1:]
    if not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        raise InputFormatError(
            f"{what} has {channels} channels; supported are {MIN_CHANNELS} to {MAX_CHANNELS}",
            fix or "Convert it, e.g. `ffmpeg -i IN -ac 2 OUT.wav`",
        )
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise InputFormatError(
            f"{what} has a sample rate of {sample_rate} Hz; supported are {MIN_RATE} to {MAX_RATE} Hz",
            fix or "Resample it, e.g. `ffmpeg -i IN -ar 48000 OUT.wav`",
        )


@dataclass(frozen=True)
class Notice:
    """Something that happened to a stream, for the consumer to report.

    Attributes
    ----------
    kind : str
        ``"stall"`` (no audio for the stall timeout), ``"lost"`` (the stream
        ended or failed; a reconnect follows), ``"failed"`` (a reconnect attempt
        failed) or ``"recovered"`` (audio flows again; a gap precedes ``pos``).
    pos : int
        Ring position (frames written before it) the notice belongs to.
    data : dict
        Fields of the event (attempt, reason, seconds missed ...).
    """

    kind: str
    pos: int
    data: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """One audio input feeding a ring.

    Attributes
    ----------
    description : str
        Human-readable name, e.g. ``"file song.mp3"``; shown in the ``start`` event.
    sample_rate : int
        Source sample rate in Hz (known after :meth:`open`).
    channels : int
        Source channel count (known after :meth:`open`).
    live : bool
        True: never waits for the consumer (overruns are dropped and counted
        by the ring).  False: waits for ring space (lossless).
    done : bool
        The producer reached the end of the stream and closed the ring.
    error : RtgenreError or None
        Set when the stream failed mid-way; the consumer raises it.
    frames_in : int
        Frames delivered to the ring so far.
    notices : deque of Notice
        Appended by the producer, taken by the consumer (thread-safe ends).
    """

    description: str = ""
    sample_rate: int = 0
    channels: int = 0
    live: bool = False

    def __init__(self) -> None:
        self.done = False
        self.error: RtgenreError | None = None
        self.frames_in = 0
        self.notices: collections.deque[Notice] = collections.deque()
        #: Called with the notices raised while :meth:`open` still runs (nothing polls yet); None: queue them.
        self.notify: Callable[[Notice], None] | None = None

    @abstractmethod
    def open(self) -> None:
        """Validate and open the input; raise the user errors here."""

    @abstractmethod
    def start(self, ring: Ring) -> None:
        """Start producing into ``ring``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop producing and release the input; idempotent."""

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: First delay before a reconnect and its ceiling, in seconds (doubling, ±20 % jitter).
BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...): 1 s doubling to 60 s, ±20 % jitter."""
    return min(BACKOFF_MAX_S, BACKOFF_S * 2.0 ** min(attempt - 1, 30)) * random.uniform(0.8, 1.2)


class ThreadedSource(Source):
    """A source fed by a daemon reader thread.

    Subclasses implement :meth:`blocks`, a generator of float32 ``(n, channels)``
    blocks; it may raise :class:`RtgenreError` for a failure in the middle of the
    stream (after the blocks before it were delivered).  This class delivers the
    blocks (waiting for space unless :attr:`live`), counts frames, closes the ring
    at the end and records the error.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ring: Ring | None = None

    @abstractmethod
    def blocks(self) -> Iterator[np.ndarray]:
        """Yield the stream's float32 blocks ``(n, channels)`` until its end."""

    def interrupt(self) -> None:
        """Unblock a reader waiting on its input (e.g. end a process); called by :meth:`stop` before the join."""

    def release(self) -> None:
        """Close what :meth:`open` opened (file, process); called by :meth:`stop` after the join."""

    def start(self, ring: Ring) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.description} already started")
        self._ring = ring
        self._thread = threading.Thread(target=self._run, name=f"source {self.description}", daemon=True)
        self._thread.start()

    #: Seconds :meth:`stop` waits for the reader thread once it was interrupted.
    JOIN_TIMEOUT = 1.0

    def stop(self) -> None:
        """Stop the reader within :data:`JOIN_TIMEOUT` seconds whatever it is blocked on.

        A reader still stuck after that (a system call that :meth:`interrupt`
        could not end) is left behind as a daemon thread, and what it reads from
        is not released under it.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        self.interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.JOIN_TIMEOUT)
            if thread.is_alive():
                return
        self.release()

    def _run(self) -> None:
        ring = self._ring
        assert ring is not None
        failure: Exception | None = None
        try:
            for block in self.blocks():
                if self._stop.is_set() or not self._deliver(ring, block):
                    break
        except (RtgenreError, OSError) as exc:
            failure = exc
        finally:
            self._ended(failure)

    def _ended(self, failure: Exception | None) -> None:
        """The producer is done: at the end of the stream (``failure`` None) or failed; close the ring.

        Nothing is recorded once a stop was asked for (the stream did not end, nothing failed).
        """
        assert self._ring is not None
        if failure is None:
            self.done = not self._stop.is_set()
        elif not self._stop.is_set():
            # an OSError: the input broke under us (I/O error, pipe gone)
            self.error = failure if isinstance(failure, RtgenreError) else InputUnreadableError(
                f"Reading {self.description} failed ({failure})", "Check the input and retry")
        self._ring.close()

    def _deliver(self, ring: Ring, block: np.ndarray) -> bool:
        """Write one block; wait for space unless live.  False if stopped meanwhile."""
        if self.live:
            ring.write(block)
            self.frames_in += len(block)
            return True
        step = max(1, ring.capacity // 2)
        for i in range(0, len(block), step):
            part = block[i : i + step]
            if not ring.wait_space(len(part), self._stop):
                return False
            ring.write(part)
            self.frames_in += len(part)
        return True


@dataclass(eq=False)
class _Paced:
    """A source the pacer delivers: its blocks, its clock and the block read but not yet due."""

    source: ThreadedSource
    blocks: Iterator[np.ndarray]
    t0: float
    pos: int = 0
    block: np.ndarray | None = None


class Pacer:
    """One thread that delivers the blocks of every paced source, each block when its last sample is due.

    A file played in real time is a live source whose blocks are handed to
    the ring as their time comes.  With a thread per source every block is a
    wake-up (a context switch and a GIL hand-over, which cost more than
    reading the block), so many paced feeds would spend a good part of a core
    on wake-ups alone; the pacer hands every block due at the same moment
    over in one.  Only sources whose reads never block may use it (a file read
    by libsndfile; not a pipe).  A source's end or failure is recorded as its
    own thread would (:meth:`ThreadedSource._ended`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paced: list[_Paced] = []
        self._thread: threading.Thread | None = None

    def add(self, source: ThreadedSource, blocks: Iterator[np.ndarray]) -> None:
        """Deliver ``blocks`` into the source's ring (set by the caller) from now on, paced at its sample rate."""
        with self._cond:
            self._paced.append(_Paced(source, blocks, time.monotonic()))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pacer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, source: ThreadedSource) -> None:
        """Stop delivering ``source``; once this returns, the pacer touches it no more (no-op if it was not paced)."""
        with self._cond:
            self._paced = [p for p in self._paced if p.source is not source]

    def _run(self) -> None:
        with self._cond:
            while True:
                now, wake = time.monotonic(), math.inf
                for p in list(self._paced):
                    due = self._deliver(p, now)
                    if due is None:
                        self._paced.remove(p)
                    else:
                        wake = min(wake, due)
                self._cond.wait(None if wake == math.inf else max(0.0, wake - time.monotonic()))

    @staticmethod
    def _deliver(p: _Paced, now: float) -> float | None:
        """Write the source's blocks that are due at ``now``; the time the next one is due, None once it ended."""
        src = p.source
        try:
            while True:
                if p.block is None:
                    p.block = next(p.blocks)
                    p.pos += len(p.block)
                due = p.t0 + p.pos / src.sample_rate
                if due > now:
                    return due
                src._deliver(src._ring, p.block)  # type: ignore[arg-type]
                p.block = None
        except StopIteration:
            src._ended(None)
        except Exception as exc:  # the source's failure (or a bug) ends that source, never the pacer
            src._ended(exc if isinstance(exc, (RtgenreError, OSError)) else OSError(f"{type(exc).__name__}: {exc}"))
        return None


#: The pacer of this process's paced sources.
PACER = Pacer()
