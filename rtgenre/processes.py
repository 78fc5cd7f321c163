"""``rtgenre monitor --processes N``: the feeds dealt over N worker processes on this machine, the sinks in the parent.

One process runs every feed's front end (reading, resampling, log-Mel,
windows, smoothing, events) under one interpreter lock, so however many cores
the machine has, a monitor obtains little more than one of them
(``tools/bench_monitor.py``: about 1.3 of 2).  With ``--processes N`` the
``rtgenre monitor`` process starts N workers (:mod:`multiprocessing`,
``spawn``), deals the feeds out to them in turn, and keeps the run's
lifecycle and every output: each worker is a :class:`~rtgenre.shards.ShardHost`
(its feeds in one :class:`~rtgenre.monitor.MonitorSession`, its own engine
and ``--workers`` engine threads), and sends its events and engine calls over
a pipe as they come (:func:`worker_main`); the parent publishes them on its
bus (:class:`~rtgenre.shards.ShardedSession`: JSON Lines, ``--out-dir``,
control room and metrics exactly as in one process), with ``process`` (the
worker's pid) in every ``start`` event.

Faults (:class:`ProcessSession`): a worker that dies (killed, out of memory,
a crash in a native library) is replaced.  Each of its feeds that had not
ended gets a ``reconnect`` event (``lost``, the ``process`` it left and the
``to_process`` that takes it over), and a new worker starts them again: a new
``start`` and a ``reconnect`` ``recovered`` (``from_process``, ``missed_s``).
A replacement that dies again within :data:`STABLE_S` of starting is replaced
only after a back-off (:data:`RETRY_S`, doubling up to :data:`RETRY_MAX_S`), so
that a feed that crashes its worker does not spin the machine.

Signals: the workers ignore the stop signals and SIGUSR1 (a terminal's Ctrl-C
reaches the whole process group); the parent stops them through their pipes,
and each feed ends with its ``stop`` event (``signal`` named).  A worker whose
parent has gone (its pipe closed) stops its feeds and exits.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtgenre.config import FeedSpec, MonitorConfig
from rtgenre.errors import EngineUnavailableError, ExitCode, RtgenreError
from rtgenre.session import STOP_WITHIN_S
from rtgenre.shards import POLL_WAIT_S, ShardedSession, ShardHost
from rtgenre.sinks.base import EventBus

#: Seconds a worker has to load the model and make its engine.
START_TIMEOUT_S = 60.0
#: A worker that lived this long before it died is replaced at once; a replacement that died sooner, after a back-off.
STABLE_S = 30.0
#: First back-off before a worker that keeps dying is replaced; it doubles each time, up to :data:`RETRY_MAX_S`.
RETRY_S = 1.0
RETRY_MAX_S = 30.0
#: Signals a worker ignores: its parent decides when it stops.
PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def _error_data(error: RtgenreError) -> dict[str, Any]:
    return {"code": int(error.code), "reason": error.reason, "problem": error.problem, "fix": error.fix}


def _error(data: dict[str, Any]) -> RtgenreError:
    """A worker's error, rebuilt in the parent (its message, fix, exit code and stop reason)."""
    error = RtgenreError(data["problem"], data["fix"])
    error.code, error.reason = ExitCode(data["code"]), data["reason"]
    return error


def worker_main(conn: multiprocessing.connection.Connection, card_path: str, engine: dict[str, Any], event_queue: int,
                workers: int, specs: list[FeedSpec]) -> None:
    """A worker process: run ``specs`` and send ``conn`` their events until they end, the parent says stop, or it is gone.

    Messages sent: ``("hello", notice)`` once the engine is made (or
    ``("failed", error)`` and the end), then ``("events", reply)`` as they
    come (see :meth:`~rtgenre.shards.ShardHost.poll`), and ``("bye",)`` last.
    Received: ``("stop", reason, signal_name)``.
    """
    from rtgenre.card import load_card

    for s in PARENT_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    sys.stdout = sys.stderr  # stdout is the parent's events'
    try:
        host = ShardHost(load_card(card_path), engine, event_queue, {"process": os.getpid()}, workers)
        conn.send(("hello", host.hello()))
    except RtgenreError as e:
        conn.send(("failed", _error_data(e)))
        return
    host.start(specs)
    try:
        while host.running():
            reply = host.poll(POLL_WAIT_S)
            if reply[0] or reply[1]:
                conn.send(("events", reply))
            if conn.poll(0):
                _, reason, signal_name = conn.recv()  # ("stop", reason, signal_name)
                host.stop(reason, signal_name)
        conn.send(("events", host.poll(0.0)))
        conn.send(("bye",))
    except (EOFError, OSError):  # the parent is gone: nobody reads the events
        host.stop("reader gone", None)


@dataclass(eq=False)
class _Worker:
    """The parent's view of one worker process: its pipe and the feeds it runs."""

    process: Any
    conn: multiprocessing.connection.Connection
    feeds: set[str]
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    @property
    def where(self) -> dict[str, int]:
        return {"process": self.process.pid}


class ProcessSession(ShardedSession):
    """``monitor --processes N``: the run's lifecycle in this process, its feeds in N worker processes.

    Parameters
    ----------
    config : MonitorConfig
        The feeds, dealt out to the workers in turn.
    card_path : Path
        The model's card, loaded by every worker.
    engine : dict
        ``create_engine`` keywords: ``kind``, ``threads``, ``precision``, ``max_batch``.
    bus : EventBus
        This process's sinks.
    processes : int
        Worker processes (at most one per feed).
    workers : int
        Engine threads of each worker (``--workers``).
    event_queue : int
        As ``--event-queue``, for the workers' buffers.
    files, metrics, engine_metrics
        As :class:`~rtgenre.shards.ShardedSession`.
    """

    def __init__(self, config: MonitorConfig, card_path: Path, engine: dict[str, Any], bus: EventBus, *, processes: int, workers: int = 0,
                 event_queue: int = 1024, files: Any = None, metrics: Any = None, engine_metrics: Any = None) -> None:
        super().__init__(config, bus, files=files, metrics=metrics, engine_metrics=engine_metrics)
        self.card_path = card_path
        self.engine_args = engine
        self.processes = max(1, min(processes, len(self.specs)))
        self.engine_workers = workers
        self.event_queue = event_queue
        self.workers: list[_Worker] = []
        self._context = multiprocessing.get_context("spawn")
        self._due: list[tuple[float, list[str]]] = []  # feeds waiting for a new worker: when, their names
        self._backoff: dict[str, float] = {}  # feed → back-off before its next replacement worker
        self._notices: set[str] = set()

    # ------------------------------------------------------------------ workers
    def _spawn(self, names: list[str]) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=worker_main, name=f"rtgenre worker {names[0]}", daemon=True,
                                        args=(theirs, str(self.card_path), self.engine_args, self.event_queue, self.engine_workers,
                                              [self.specs[n] for n in names]))
        process.start()
        theirs.close()
        worker = _Worker(process, ours, set(names))
        self.workers.append(worker)
        return worker

    def _receive(self, worker: _Worker, now: float) -> None:
        """One message of ``worker``; its end when its pipe closed (replaced unless the run is stopping)."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            if self.stop_requested.is_set():
                self._retire(worker)
            else:
                self._lose(worker)
            return
        kind = message[0]
        if kind == "events":
            self._take(worker, message[1], now)
        elif kind == "hello":
            self._hello(worker, message[1])
        elif kind == "failed" and not self.stop_requested.is_set():  # a replacement that could not make its engine: it ends, and is replaced in turn
            print(f"rtgenre: notice: worker process {worker.process.pid}: {_error(message[1])}", file=sys.stderr)
        elif kind == "bye":
            self._retire(worker)

    def _hello(self, worker: _Worker, notice: str | None) -> None:
        worker.ready = True
        if notice and notice not in self._notices:
            self._notices.add(notice)
            print(f"rtgenre: notice: {notice}", file=sys.stderr)

    def _retire(self, worker: _Worker) -> None:
        worker.conn.close()
        worker.process.join(STOP_WITHIN_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(STOP_WITHIN_S)
        self.workers.remove(worker)

    def _lose(self, worker: _Worker) -> None:
        """``worker`` died: its feeds that had not ended start again in a new worker (after a back-off if it died young)."""
        self._retire(worker)
        code = worker.process.exitcode
        why = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        feeds = self._lost(worker, why)
        if not feeds:
            return
        young = time.monotonic() - worker.started < STABLE_S
        delay = max(self._backoff.get(n, 0.0) for n in feeds) if young else 0.0
        for n in feeds:  # the next young death waits longer; a worker that lived STABLE_S starts the count again
            self._backoff[n] = min(RETRY_MAX_S, max(2 * delay, RETRY_S)) if young else 0.0
        reason = f"worker process {worker.process.pid} died ({why})"
        if delay == 0.0:
            self._tell_lost(feeds, worker.where, reason, self._spawn(feeds).where, 0.0)
        else:
            self._tell_lost(feeds, worker.where, reason, {}, delay)
            self._due.append((time.monotonic() + delay, feeds))

    # ------------------------------------------------------------------ run
    def _open(self) -> None:
        names = list(self.specs)
        for i in range(self.processes):
            self._spawn(names[i::self.processes])
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            waiting = [w.conn for w in self.workers if not w.ready]
            if time.monotonic() > deadline:
                raise EngineUnavailableError(f"{len(waiting)} worker process(es) did not start within {START_TIMEOUT_S:g} s",
                                             "Check the machine's memory and load, or run fewer --processes")
            for conn in multiprocessing.connection.wait(waiting, timeout=POLL_WAIT_S):
                worker = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    raise EngineUnavailableError(f"A worker process died while starting (exit code {worker.process.exitcode})",
                                                 "Run without --processes to see the error") from None
                if message[0] != "hello":
                    raise _error(message[1])
                self._hello(worker, message[1])

    def _start(self) -> None:
        """Nothing to do: the workers start their feeds once their engine is made."""

    def _loop(self) -> None:
        while not self.stop_requested.is_set() and len(self.ended) < len(self.specs) and (self.workers or self._due):
            if self.workers:
                self._wait(POLL_WAIT_S)
            else:
                self.stop_requested.wait(POLL_WAIT_S)
            now = time.monotonic()
            for due in [d for d in self._due if d[0] <= now]:
                self._due.remove(due)
                self._spawn(due[1])

    def _wait(self, timeout: float) -> None:
        """The workers' messages that come within ``timeout`` s."""
        ready = multiprocessing.connection.wait([w.conn for w in self.workers], timeout=timeout)
        now = time.monotonic()
        for conn in ready:
            worker = next((w for w in self.workers if w.conn is conn), None)
            if worker is not None:  # not retired by an earlier message of this round
                self._receive(worker, now)

    def _close(self) -> None:
        """Stop every worker and publish their last events; a feed that no worker saw to its end gets its ``stop`` here."""
        try:
            for w in self.workers:
                try:
                    w.conn.send(("stop", self.stop_reason, self.signal))
                except OSError:
                    pass  # it is gone: its pipe is closed, the loop below retires it
            deadline = time.monotonic() + 4 * STOP_WITHIN_S
            while self.workers and time.monotonic() < deadline:
                self._wait(POLL_WAIT_S)
            for w in list(self.workers):
                self._retire(w)
        finally:
            self._end_feeds()
