"""``rtgenre monitor --ray``: feeds sharded over a Ray cluster, sinks on the driver.

The driver (the ``rtgenre monitor`` process) connects to a Ray cluster and
starts one :class:`Shard` actor per node that has a CPU to give.  A shard owns
its feeds end to end (source, ring, analysis, smoothing) in the same
:class:`~rtgenre.monitor.MonitorSession` as one process runs, with one batched
engine per node (``auto`` picks TensorRT on a node with a GPU).  Its events
cross to the driver as plain dicts, batched per poll (:meth:`Shard.poll`
answers as soon as any are waiting); the driver publishes them on its own
:class:`~rtgenre.sinks.base.EventBus` (JSON Lines, files, dashboard, metrics
exactly as in one process), adding ``node`` to every ``start`` event.

The model reaches the workers through Ray's object store: the driver puts the
card and the graphs it names (:func:`model_files`) once, and each shard writes
them into a temporary folder on its node (:func:`materialise`).

Faults (:class:`ClusterSession`): a shard whose actor died, whose node went
away, or that stopped answering is given up; each of its feeds that had not
ended gets a ``reconnect`` event (``lost``, naming the node it left and the
one it goes to) and is started again on the surviving shard with the fewest
feeds (a ``start`` naming the new node, then ``reconnect`` ``recovered``).
The driver never fails with a worker.  A driver that stops (end of every
feed, a stop signal, ``q``) stops every shard, and each feed has its ``stop``
event; a driver that dies takes its actors with it (Ray ends the actors of a
job whose driver is gone).

Ray is imported only here, and this module only with ``--ray``: the
listening runtime does not need the ``[cluster]`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rtgenre.card import ModelCard, load_card, resolve_model
from rtgenre.config import FeedSpec, MonitorConfig
from rtgenre.errors import (
    DependencyMissingError,
    EngineUnavailableError,
    ExitCode,
    ModelCorruptError,
    RtgenreError,
)
from rtgenre.events import Event
from rtgenre.inference.base import Engine
from rtgenre.monitor import MonitorSession, _feeds
from rtgenre.session import END_OF_INPUT, STOP_WITHIN_S
from rtgenre.sinks.base import EventBus, EventQueue, Sink

#: Longest a shard's poll waits for its first event (it answers at once when events are waiting).
POLL_WAIT_S = 0.2
#: A shard that Ray reports unreachable for this long is given up (its feeds move).
UNREACHABLE_S = 3.0
#: A shard that answers no poll for this long (a hung node, a partition) is given up.
SILENT_S = 15.0
#: Seconds between attempts to place feeds that lost their shard when no shard is left.
RETRY_S = 1.0
#: Key of :func:`model_files`' output that names the card's file (a file name never starts with ``/``).
CARD_KEY = "/card"
#: Seconds to wait for the cluster's address to accept a connection.
CONNECT_TIMEOUT_S = 5.0
#: Seconds the driver waits for the shards to start and to stop.
CALL_TIMEOUT_S = 120.0


def _ray():
    """The ``ray`` module, or a clear error naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise DependencyMissingError("--ray needs Ray, which is not installed", "Install the cluster extra: pip install 'rtgenre[cluster]'") from None
    return ray


def model_files(card_path: Path) -> dict[str, bytes]:
    """The card at ``card_path`` and the graphs it names, by path relative to the card's folder.

    Raises
    ------
    ModelCorruptError
        A graph lies outside the card's folder (it could not be rebuilt on a worker).
    """
    card, folder = load_card(card_path), card_path.parent.resolve()
    paths = [card_path, card.onnx_path]
    if card.split is not None:  # every graph of the split (encoder, back end, and any other it names)
        graphs = (getattr(card.split, f.name) for f in fields(card.split))
        paths += [g.onnx_path for g in graphs if hasattr(g, "onnx_path")]
    files = {}
    for p in paths:
        try:
            files[str(p.resolve().relative_to(folder))] = p.read_bytes()
        except ValueError:
            raise ModelCorruptError(f"Model file {p} is not in its card's folder {folder}", "Keep a model's files beside its card") from None
    files[CARD_KEY] = card_path.name.encode()
    return files


def materialise(files: dict[str, bytes], folder: Path) -> ModelCard:
    """Write :func:`model_files`' output under ``folder`` and load the card from there."""
    for name, data in files.items():
        if name != CARD_KEY:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return load_card(folder / files[CARD_KEY].decode())


class Outbox(Sink):
    """A shard's events waiting for the driver's next poll, in a bounded :class:`~rtgenre.sinks.base.EventQueue`
    (a driver that stops polling costs old predictions, never memory or the other events).

    Parameters
    ----------
    node : str
        Added to every ``start`` event.
    capacity : int
        Events held before old predictions are dropped.
    """

    def __init__(self, node: str, capacity: int) -> None:
        self.node = node
        self.queue = EventQueue(capacity)

    def handle(self, event: Event) -> None:
        self.queue.put(event.with_data(node=self.node) if event.kind == "start" else event)

    def take(self, wait_s: float) -> list[tuple[dict[str, Any], float | None]]:
        """Every event waiting (after up to ``wait_s`` s for the first): its dict and how long ago its window's last sample arrived."""
        events = []
        event = self.queue.get(wait_s)
        while event is not None:
            events.append(event)
            event = self.queue.get(0.0)
        now = time.monotonic()
        return [(e.to_dict(), None if e.arrival is None else now - e.arrival) for e in events]


class _Shared(Engine):
    """One engine used by the sessions of one shard, one call at a time (a shard's later feeds run in sessions of their own).

    Every call is recorded (name, items, seconds) until :meth:`take_calls`,
    for the driver's engine metrics.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.card)
        self._engine = engine
        self._lock = threading.Lock()
        self._calls: list[tuple[str, int, float]] = []
        for attr in ("name", "detail", "max_batch", "notice", "streaming", "encode_batch", "head_batch"):
            setattr(self, attr, getattr(engine, attr))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _call(self, name: str, batch: np.ndarray, *args: Any) -> Any:
        with self._lock:
            t0 = time.perf_counter()
            out = getattr(self._engine, name)(batch, *args)
            self._calls.append((name, len(batch), time.perf_counter() - t0))
            return out

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("run", windows)

    def encode(self, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self._call("encode", mel, valid)

    def head(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("head", feats)

    def take_calls(self) -> list[tuple[str, int, float]]:
        """The calls recorded since the last take."""
        with self._lock:
            calls, self._calls = self._calls, []
        return calls

    def close(self) -> None:
        self._engine.close()


class Shard:
    """The feeds of one node (a Ray actor; see :class:`ClusterSession`).

    Parameters
    ----------
    model : dict of str to bytes
        :func:`model_files` of the driver's card (through the object store).
    engine : dict
        ``create_engine`` keywords: ``kind``, ``threads``, ``precision``, ``max_batch``.
    event_queue : int
        Events buffered before old predictions are dropped (per session, as ``--event-queue``).
    """

    def __init__(self, model: dict[str, bytes], engine: dict[str, Any], event_queue: int) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
        self._folder = tempfile.TemporaryDirectory(prefix="rtgenre-model-")
        self.card = materialise(model, Path(self._folder.name))
        self._engine_args = engine
        self._event_queue = event_queue
        self._engine: _Shared | None = None
        self._runs: list[tuple[MonitorSession, threading.Thread]] = []
        self.outbox = Outbox(self.node, event_queue)

    def hello(self) -> dict[str, str]:
        """The node's name and its engine's notice (if any); makes the engine."""
        from rtgenre.inference import create_engine

        if self._engine is None:
            e = self._engine_args
            self._engine = _Shared(create_engine(e["kind"], self.card, threads=e["threads"], precision=e["precision"], max_batch=e["max_batch"]))
        return {"node": self.node, "notice": self._engine.notice}

    def start(self, specs: list[FeedSpec]) -> None:
        """Open and run ``specs`` in a session of their own (on this shard's engine) until they end or :meth:`stop`."""
        self.hello()
        bus = EventBus()
        session = MonitorSession(_feeds(MonitorConfig(feeds=tuple(specs)), self.card), self._engine, bus)
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

    def poll(self, wait_s: float = POLL_WAIT_S) -> tuple[list[tuple[dict[str, Any], float | None]], list[tuple[str, int, float]]]:
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


@functools.cache
def _actor_class():
    return _ray().remote(Shard)


@dataclass(eq=False)
class _Remote:
    """The driver's view of one shard: its actor, node, feeds and the poll in flight."""

    actor: Any
    node_id: str
    node: str = "?"
    feeds: set[str] = field(default_factory=set)
    poll: Any = None
    next_poll: float = 0.0
    last_reply: float = field(default_factory=time.monotonic)
    unreachable_since: float | None = None


def _remote_error(data: dict[str, Any]) -> RtgenreError:
    """An ``error`` event of a shard as an error of the driver's run (its exit code)."""
    error = RtgenreError(str(data.get("message", "")))
    try:
        error.code = ExitCode(int(data.get("code", ExitCode.INTERNAL)))
    except ValueError:
        error.code = ExitCode.INTERNAL
    return error


class ClusterSession(MonitorSession):
    """``monitor --ray``: the run's lifecycle on the driver, its feeds on the cluster's shards.

    Parameters
    ----------
    address : str
        Ray cluster address (``host:port``) or ``auto``.
    config : MonitorConfig
        The feeds.
    model : str or None
        The model (as ``--model``), shipped to every shard.
    engine : dict
        As :class:`Shard`'s ``engine``.
    bus : EventBus
        The driver's sinks.
    event_queue : int
        As ``--event-queue``, for the shards' buffers.
    files, metrics
        As :class:`~rtgenre.monitor.MonitorSession`.
    engine_metrics : EngineMetrics, optional
        Where the nodes' engine calls are recorded (``--metrics-port``).

    Attributes
    ----------
    moves : int
        Feeds started again on another shard after theirs was lost.
    """

    def __init__(self, address: str, config: MonitorConfig, model: str | None, engine: dict[str, Any], bus: EventBus, *,
                 event_queue: int = 1024, files: Any = None, metrics: Any = None, engine_metrics: Any = None) -> None:
        super().__init__([], lambda: None, bus, files=files, metrics=metrics)
        self.engine_metrics = engine_metrics
        self.address = address
        self.specs = {s.name: s for s in config.feeds}
        self.model = model
        self.engine_args = engine
        self.event_queue = event_queue
        self.shards: list[_Remote] = []
        self.ended: set[str] = set()
        self.moves = 0
        self._orphans: list[str] = []  # feeds that lost their shard and wait for one
        self._moving: dict[str, tuple[float, int, str]] = {}  # feed → (when it was lost, attempt, node it left)
        self._t: dict[str, float] = {}  # each feed's last event time (for the driver's own events)
        self._gone_nodes: set[str] = set()
        self._connected = False
        self._told_error = False
        self._model_ref: Any = None
        self._next_retry = 0.0

    def run(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints the cluster's messages (a node lost) on stdout: it stays the events'
            super().run()

    # ------------------------------------------------------------------ open and start
    def _open(self) -> None:
        ray = _ray()
        fix = "Start one with `ray start --head` and pass its address (or auto on one of its nodes)"
        if self.address != "auto" and "://" not in self.address:  # Ray would retry an address where nothing listens for ever
            host, _, port = self.address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
            except (OSError, ValueError) as e:
                raise EngineUnavailableError(f"Cannot reach the Ray cluster at {self.address} ({getattr(e, 'strerror', None) or e})", fix) from None
        main = threading.current_thread() is threading.main_thread()
        ours = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineUnavailableError(f"Cannot reach the Ray cluster at {self.address} ({e})", fix) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, ours)  # ray.init installs its own (exit at once): SIGTERM stops the run cleanly
        self._connected = True
        self._model_ref = ray.put(model_files(resolve_model(self.model)))
        for node in self._nodes():
            self._add_shard(node)
        if not self.shards:
            raise EngineUnavailableError(f"The Ray cluster at {self.address} has no node with a free CPU", "Add a node with `ray start --address ...`")
        for s, hello in zip(self.shards, self._call([s.actor.hello.remote() for s in self.shards], "start")):
            s.node = hello["node"]
            if hello["notice"]:
                print(f"rtgenre: notice: {s.node}: {hello['notice']}", file=sys.stderr)

    def _nodes(self) -> list[str]:
        """Ids of the live nodes with a CPU, not given up, the head node first."""
        nodes = [n for n in _ray().nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1 and n["NodeID"] not in self._gone_nodes]
        nodes.sort(key=lambda n: ("node:__internal_head__" not in n["Resources"], n["NodeID"]))
        return [n["NodeID"] for n in nodes]

    def _add_shard(self, node_id: str) -> _Remote:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = _actor_class().options(num_cpus=1, max_restarts=0, max_concurrency=4,
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                                       ).remote(self._model_ref, self.engine_args, self.event_queue)
        shard = _Remote(actor, node_id)
        self.shards.append(shard)
        return shard

    def _call(self, refs: list, what: str) -> list:
        """``ray.get`` of the shards' calls at start; their failures as the run's error."""
        ray = _ray()
        try:
            return ray.get(refs, timeout=CALL_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise EngineUnavailableError(f"The Ray cluster's shards did not {what} within {CALL_TIMEOUT_S:g} s", "Check the cluster with `ray status`") from None
        except ray.exceptions.RayTaskError as e:  # a shard's own failure (model, engine)
            if isinstance(e.cause, RtgenreError):
                raise e.cause from None
            raise
        except ray.exceptions.RayActorError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineUnavailableError(f"A shard could not {what} ({first})", "Check the workers' logs (ray logs) and that rtgenre is installed on every node") from None

    def _start(self) -> None:
        names = list(self.specs)
        for i, name in enumerate(names):
            self.shards[i % len(self.shards)].feeds.add(name)
        self._call([s.actor.start.remote([self.specs[n] for n in names if n in s.feeds]) for s in self.shards if s.feeds], "start")

    # ------------------------------------------------------------------ run
    def _loop(self) -> None:
        ray = _ray()
        while not self.stop_requested.is_set():
            now = time.monotonic()
            for s in self.shards:
                if s.poll is None and now >= s.next_poll:
                    s.poll = s.actor.poll.remote()
            polls = [s.poll for s in self.shards if s.poll is not None]
            ready = set(ray.wait(polls, num_returns=1, timeout=POLL_WAIT_S * 2)[0]) if polls else set()
            now = time.monotonic()
            for s in list(self.shards):
                if s.poll is not None and s.poll in ready:
                    self._reply(s, now)
                elif now - s.last_reply > SILENT_S or (s.unreachable_since is not None and now - s.unreachable_since > UNREACHABLE_S):
                    self._lose(s, "unreachable" if s.unreachable_since is not None else "stopped answering")
            if self._orphans and now >= self._next_retry:
                self._place(self._orphans)
            if len(self.ended) == len(self.specs):
                return
            if not polls:
                self.stop_requested.wait(POLL_WAIT_S)

    def _reply(self, shard: _Remote, now: float) -> None:
        ray = _ray()
        ref, shard.poll = shard.poll, None
        try:
            reply = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # maybe for a moment: ask again shortly, give up after UNREACHABLE_S
            shard.unreachable_since = shard.unreachable_since or now
            shard.next_poll = now + POLL_WAIT_S
            return
        except ray.exceptions.RayActorError:
            self._lose(shard, "its actor or node died")
            return
        shard.last_reply, shard.unreachable_since = now, None
        self._take(shard, reply, now)

    def _take(self, shard: _Remote, reply: tuple[list, list], now: float) -> None:
        """A poll's reply: its events to the sinks, its engine calls to the engine metrics."""
        events, calls = reply
        for data, age in events:
            self._publish(shard, data, None if age is None else now - age)
        if self.engine_metrics is not None:
            for call in calls:
                self.engine_metrics.observe(*call)

    def _publish(self, shard: _Remote, data: dict[str, Any], arrival: float | None) -> None:
        event = Event.from_dict(data)
        event.arrival = arrival
        name = event.stream
        if name in self.ended or name not in shard.feeds:
            return  # a late event of a feed that moved away
        self._t[name] = event.t
        self.bus.publish(event)
        if event.kind == "start" and name in self._moving:
            lost_at, attempt, old = self._moving.pop(name)
            self.bus.publish(Event("reconnect", name, event.t, {"status": "recovered", "attempt": attempt, "reason": f"moved from node {old}",
                                                                "missed_s": round(time.monotonic() - lost_at, 3), "node": shard.node, "from_node": old}))
        elif event.kind == "error" and self.error is None:
            self.error, self._told_error = _remote_error(event.data), True
        elif event.kind == "stop":
            self.ended.add(name)
            shard.feeds.discard(name)

    def _lose(self, shard: _Remote, why: str) -> None:
        """Give ``shard`` and its node up, and move its feeds that have not ended."""
        ray = _ray()
        self._gone_nodes.add(shard.node_id)
        self.shards.remove(shard)
        try:
            ray.kill(shard.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - the actor may have gone with its node: nothing left to kill
            pass
        feeds = sorted(shard.feeds - self.ended)
        print(f"rtgenre: notice: the shard on node {shard.node} is lost ({why}); moving {len(feeds)} feed(s)", file=sys.stderr)
        now = time.monotonic()
        for name in feeds:
            self.moves += 1
            self._moving[name] = (now, self._moving.get(name, (now, 0, ""))[1] + 1, shard.node)
        self._place(feeds, lost_from=shard.node)

    def _place(self, feeds: list[str], lost_from: str | None = None) -> None:
        """Start ``feeds`` on the surviving shard with the fewest feeds (on a new shard of a free node if none is left)."""
        ray = _ray()
        if not feeds:
            return
        if not self.shards:
            for node in self._nodes():
                self._add_shard(node)
        target = min(self.shards, key=lambda s: len(s.feeds)) if self.shards else None
        if lost_from is not None:
            for name in feeds:
                self.bus.publish(Event("reconnect", name, self._t.get(name, 0.0), {
                    "status": "lost", "attempt": self._moving[name][1], "reason": f"node {lost_from} lost",
                    "retry_in_s": 0.0 if target else RETRY_S, "node": lost_from, "to_node": target.node if target else None}))
        if target is not None:
            try:
                if target.node == "?":
                    target.node = ray.get(target.actor.hello.remote(), timeout=CALL_TIMEOUT_S)["node"]
                ray.get(target.actor.start.remote([self.specs[n] for n in feeds]), timeout=CALL_TIMEOUT_S)
                target.feeds.update(feeds)
                self._orphans = [n for n in self._orphans if n not in feeds]
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self._orphans = sorted(set(self._orphans) | set(feeds))
                self._lose(target, "it could not take the feeds")
                return
        self._orphans = sorted(set(self._orphans) | set(feeds))
        self._next_retry = time.monotonic() + RETRY_S

    # ------------------------------------------------------------------ close
    def _close(self) -> None:
        """Stop every shard and publish their last events; a feed that no shard saw to its end gets its ``stop`` here."""
        try:
            if self._connected:
                self._stop_shards()
        finally:
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

    def _stop_shards(self) -> None:
        ray = _ray()
        try:
            stops = [s.actor.stop.remote(self.stop_reason, self.signal) for s in self.shards]
            ray.wait(stops, num_returns=len(stops), timeout=4 * STOP_WITHIN_S)
            for s in self.shards:  # the poll in flight, then what is left
                for ref in ([s.poll] if s.poll is not None else []) + [s.actor.poll.remote(0.0)]:
                    try:
                        reply = ray.get(ref, timeout=STOP_WITHIN_S)
                    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                        break
                    self._take(s, reply, time.monotonic())
            for s in self.shards:
                ray.kill(s.actor, no_restart=True)
        finally:
            ray.shutdown()
