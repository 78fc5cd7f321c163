"""Feeds in shards: each shard runs some of a monitor's feeds, a driver merges their events.

Shared by ``monitor --processes`` (:mod:`rtgenre.processes`: worker processes
on this machine) and ``monitor --ray`` (:mod:`rtgenre.cluster`: Ray actors on
a cluster's nodes).  The shard's side is :class:`ShardHost`: its feeds in
:class:`~rtgenre.monitor.MonitorSession` s on one engine, their events waiting
in an :class:`Outbox` for the driver to take, and the engine's calls recorded
for the driver's metrics.  The driver's side is :class:`ShardedSession`: the
shards' events on the driver's own :class:`~rtgenre.sinks.base.EventBus`
(JSON Lines, files, dashboard and metrics exactly as in one process), the
``reconnect`` events of a feed whose shard was lost and that starts again on
another, and a ``stop`` for every feed when the run ends, whatever became of
its shard.  How shards are started, reached and lost is the subclass's.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.config import FeedSpec, MonitorConfig
from rtgenre.errors import ExitCode, RtgenreError
from rtgenre.events import Event
from rtgenre.inference.base import Engine
from rtgenre.monitor import MonitorSession, _feeds
from rtgenre.session import (
    CONCURRENT_ENGINES,
    END_OF_INPUT,
    STOP_WITHIN_S,
    InternalError,
)
from rtgenre.sinks.base import EventBus, EventQueue, Sink

#: Longest a shard's poll waits for its first event (it answers at once when events are waiting).
POLL_WAIT_S = 0.2

#: A poll's answer: each event as a dict with how long ago its window's last sample arrived, and the engine's calls (name, items, seconds).
Reply = tuple[list[tuple[dict[str, Any], float | None]], list[tuple[str, int, float]]]


class Outbox(Sink):
    """A shard's events waiting for the driver's next poll, in a bounded :class:`~rtgenre.sinks.base.EventQueue`
    (a driver that stops polling costs old predictions, never memory or the other events).

    Parameters
    ----------
    where : dict
        Added to every ``start`` event: where the feed runs (``node``, ``process``).
    capacity : int
        Events held before old predictions are dropped.
    """

    def __init__(self, where: dict[str, Any], capacity: int) -> None:
        self.where = where
        self.queue = EventQueue(capacity)

    def handle(self, event: Event) -> None:
        self.queue.put(event.with_data(**self.where) if event.kind == "start" else event)

    def take(self, wait_s: float) -> list[tuple[dict[str, Any], float | None]]:
        """Every event waiting (after up to ``wait_s`` s for the first): its dict and how long ago its window's last sample arrived."""
        events = []
        event = self.queue.get(wait_s)
        while event is not None:
            events.append(event)
            event = self.queue.get(0.0)
        now = time.monotonic()
        return [(e.to_dict(), None if e.arrival is None else now - e.arrival) for e in events]


class SharedEngine(Engine):
    """One engine used by the sessions of one shard (a shard's later feeds run in sessions of their own);
    calls overlap only where the engine allows it (:data:`~rtgenre.session.CONCURRENT_ENGINES`).

    Every batch call (``run``, ``encode``, ``patch``, ``head``; not the streaming ``step``, as
    :class:`~rtgenre.sinks.metrics.EngineMeter`) is recorded (name, items, seconds)
    until :meth:`take_calls`, for the driver's engine metrics.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.card)
        self._engine = engine
        self._serial = contextlib.nullcontext() if engine.name in CONCURRENT_ENGINES else threading.Lock()
        self._lock = threading.Lock()
        self._calls: list[tuple[str, int, float]] = []
        for attr in ("name", "detail", "max_batch", "notice", "streaming", "encode_batch", "head_batch", "head_stats"):
            setattr(self, attr, getattr(engine, attr))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _call(self, name: str, batch: np.ndarray, *args: Any) -> Any:
        with self._serial:
            t0 = time.perf_counter()
            out = getattr(self._engine, name)(batch, *args)
            seconds = time.perf_counter() - t0
        with self._lock:
            self._calls.append((name, len(batch), seconds))
        return out

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("run", windows)

    def encode(self, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self._call("encode", mel, valid)

    def step(self, mel: np.ndarray, valid: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        with self._serial:
            return self._engine.step(mel, valid, state)

    def patch(self, mel: np.ndarray) -> np.ndarray:
        return self._call("patch", mel)

    def head(self, feats: np.ndarray, patches: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self._call("head", feats, patches)

    def take_calls(self) -> list[tuple[str, int, float]]:
        """The calls recorded since the last take."""
        with self._lock:
            calls, self._calls = self._calls, []
        return calls

    def close(self) -> None:
        self._engine.close()


class ShardHost:
    """The feeds of one shard: each :meth:`start` runs its feeds in a session of their own, on the shard's one engine.

    Parameters
    ----------
    card : ModelCard
        The model.
    engine : dict
        ``create_engine`` keywords: ``kind``, ``threads``, ``precision``, ``max_batch``.
    event_queue : int
        Events buffered before old predictions are dropped (per session, as ``--event-queue``).
    where : dict
        Added to every ``start`` event (see :class:`Outbox`).
    workers : int
        Engine threads of each session (``--workers``).
    """

    def __init__(self, card: ModelCard, engine: dict[str, Any], event_queue: int, where: dict[str, Any], workers: int = 0) -> None:
        self.card = card
        self._engine_args = engine
        self._event_queue = event_queue
        self._workers = workers
        self._engine: SharedEngine | None = None
        self._runs: list[tuple[MonitorSession, threading.Thread]] = []
        self.outbox = Outbox(where, event_queue)

    def hello(self) -> str | None:
        """Make the engine (once); its notice, if any."""
        from rtgenre.inference import create_engine

        if self._engine is None:
            e = self._engine_args
            self._engine = SharedEngine(create_engine(e["kind"], self.card, threads=e["threads"], precision=e["precision"], max_batch=e["max_batch"]))
        return self._engine.notice

    def start(self, specs: list[FeedSpec]) -> None:
        """Open and run ``specs`` in a session of their own (on this shard's engine) until they end or :meth:`stop`."""
        self.hello()
        bus = EventBus()
        session = MonitorSession(_feeds(MonitorConfig(feeds=tuple(specs)), self.card), self._engine, bus, workers=self._workers)
        session.signals = False  # the driver's signals stop the run (:meth:`stop`)
        bus.add(self.outbox, lambda: session.request_stop("reader gone"), capacity=self._event_queue)
        thread = threading.Thread(target=self._run, args=(session,), name=f"shard {specs[0].name}", daemon=True)
        self._runs.append((session, thread))
        thread.start()

    @staticmethod
    def _run(session: MonitorSession) -> None:
        try:
            session.run()
        except RtgenreError:
            pass  # told in the event stream (error and stop events)

    def running(self) -> bool:
        """Whether a session is still running."""
        return any(t.is_alive() for _, t in self._runs)

    def poll(self, wait_s: float = POLL_WAIT_S) -> Reply:
        """Events since the last poll (see :meth:`Outbox.take`) and the engine's calls since then (name, items, seconds)."""
        events = self.outbox.take(wait_s)
        return events, self._engine.take_calls() if self._engine is not None else []

    def stop(self, reason: str, signal_name: str | None) -> None:
        """Stop every session (``stop`` reason ``reason``, and the signal that stopped the driver) and wait for their last events."""
        for session, _ in self._runs:
            if signal_name is not None and session.signal is None:
                session.signal = signal_name
            session.request_stop(reason)
        deadline = time.monotonic() + 3 * STOP_WITHIN_S
        for _, thread in self._runs:
            thread.join(max(0.0, deadline - time.monotonic()))


def remote_error(data: dict[str, Any]) -> RtgenreError:
    """An ``error`` event of a shard as an error of the driver's run (its exit code)."""
    error = RtgenreError(str(data.get("message", "")))
    try:
        error.code = ExitCode(int(data.get("code", ExitCode.INTERNAL)))
    except ValueError:
        error.code = ExitCode.INTERNAL
    return error


class ShardedSession(MonitorSession):
    """The driver of a sharded monitor: the shards' events on its bus, the feeds' ends.

    A shard object (the subclass's) has ``feeds`` (the names it runs, a set) and
    ``where`` (a dict: where its feeds run, as its ``start`` events say).

    Parameters
    ----------
    config : MonitorConfig
        The feeds.
    bus : EventBus
        The driver's sinks.
    files, metrics
        As :class:`~rtgenre.monitor.MonitorSession`.
    engine_metrics : EngineMetrics, optional
        Where the shards' engine calls are recorded (``--metrics-port``).

    Attributes
    ----------
    moves : int
        Feeds started again on another shard after theirs was lost.
    ended : set of str
        The feeds whose ``stop`` event was published.
    """

    def __init__(self, config: MonitorConfig, bus: EventBus, *, files: Any = None, metrics: Any = None, engine_metrics: Any = None) -> None:
        super().__init__([], lambda: None, bus, files=files, metrics=metrics)
        self.engine_metrics = engine_metrics
        self.specs = {s.name: s for s in config.feeds}
        self.ended: set[str] = set()
        self.moves = 0
        self._moving: dict[str, tuple[float, int, dict[str, Any]]] = {}  # feed → (when it was lost, attempt, where it was)
        self._t: dict[str, float] = {}  # each feed's last event time (for the driver's own events)
        self._told_error = False

    def _take(self, shard: Any, reply: Reply, now: float) -> None:
        """A poll's reply: its events to the sinks, its engine calls to the engine metrics."""
        events, calls = reply
        for data, age in events:
            self._publish(shard, data, None if age is None else now - age)
        if self.engine_metrics is not None:
            for call in calls:
                self.engine_metrics.observe(*call)

    def _publish(self, shard: Any, data: dict[str, Any], arrival: float | None) -> None:
        event = Event.from_dict(data)
        event.arrival = arrival
        name = event.stream
        if name in self.ended or name not in shard.feeds:
            return  # a late event of a feed that moved away
        self._t[name] = event.t
        self.bus.publish(event)
        if event.kind == "start" and name in self._moving:
            lost_at, attempt, old = self._moving.pop(name)
            self.bus.publish(Event("reconnect", name, event.t, {
                "status": "recovered", "attempt": attempt, "reason": f"moved from {_where(old)}", "missed_s": round(time.monotonic() - lost_at, 3),
                **shard.where, **{f"from_{k}": v for k, v in old.items()}}))
        elif event.kind == "error" and self.error is None:
            self.error, self._told_error = remote_error(event.data), True
        elif event.kind == "stop":
            self.ended.add(name)
            shard.feeds.discard(name)
            if event.data.get("reason") == InternalError.reason and self.error is None:  # a bug in a shard (its traceback is in its log)
                self._told_error = True  # its stop events say so: the run ends with exit code 1
                self.error = InternalError(f"Internal error in the shard on {_where(shard.where)} (its traceback is on its stderr)",
                                           "Please report this bug with the command that caused it")

    def _lost(self, shard: Any, why: str) -> list[str]:
        """Record that ``shard``'s feeds that have not ended lost it (``why``); their names."""
        feeds = sorted(shard.feeds - self.ended)
        print(f"rtgenre: notice: the shard on {_where(shard.where)} is lost ({why}); moving {len(feeds)} feed(s)", file=sys.stderr)
        now = time.monotonic()
        for name in feeds:
            self.moves += 1
            self._moving[name] = (now, self._moving.get(name, (now, 0, {}))[1] + 1, dict(shard.where))
        return feeds

    def _tell_lost(self, feeds: list[str], old: dict[str, Any], reason: str, to: dict[str, Any], retry_in_s: float) -> None:
        """A ``reconnect`` ``lost`` event for each of ``feeds``: they left ``old`` and go ``to`` (keys prefixed ``to_``)."""
        for name in feeds:
            self.bus.publish(Event("reconnect", name, self._t.get(name, 0.0), {
                "status": "lost", "attempt": self._moving[name][1], "reason": reason, "retry_in_s": retry_in_s,
                **old, **{f"to_{k}": v for k, v in to.items()}}))

    def _end_feeds(self) -> None:
        """After the shards stopped: the run's own error (if no shard told it) and a ``stop`` for each feed no shard saw to its end; drain."""
        reason = self.stop_reason
        if self.error is not None and not self._told_error:  # the run's own failure (cluster, shards), told on the first feed
            self.bus.publish(Event("error", next(iter(self.specs)), 0.0, {"code": int(self.error.code), "message": str(self.error), "fatal": True}))
            reason = self.error.reason
        for name in self.specs:
            if name not in self.ended:
                data: dict[str, Any] = {"reason": reason, "counts": {"dropped_events": self.bus.dropped}}
                if self.signal is not None:
                    data["signal"] = self.signal
                self.bus.publish(Event("stop", name, self._t.get(name, 0.0), data))
        self._drain(self.stop_reason == END_OF_INPUT)


def _where(where: dict[str, Any]) -> str:
    """``where`` in words: ``node 10.0.0.2/ab12cd34``, ``process 4242``."""
    return ", ".join(f"{k} {v}" for k, v in where.items()) or "?"
