"""``rtgenre monitor --ray``: feeds sharded over a Ray cluster, sinks on the driver.

The driver (the ``rtgenre monitor`` process) connects to a Ray cluster and
starts one :class:`Shard` actor per node that has a CPU to give.  A shard owns
its feeds end to end (source, ring, analysis, smoothing) in the same
:class:`~rtgenre.monitor.MonitorSession` as one process runs, with one batched
engine per node (``auto`` picks TensorRT on a node with a GPU).  Its events
cross to the driver as plain dicts, batched per poll (:meth:`Shard.poll`
answers as soon as any are waiting); the driver publishes them on its own
:class:`~rtgenre.sinks.base.EventBus` (JSON Lines, files, dashboard, metrics
exactly as in one process), adding ``node`` to every ``start`` event.  Both
sides are :mod:`rtgenre.shards`' (as for ``--processes``); what is Ray's is here.

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

from rtgenre.card import ModelCard, load_card, resolve_model
from rtgenre.config import MonitorConfig
from rtgenre.errors import (
    DependencyMissingError,
    EngineUnavailableError,
    ModelCorruptError,
    RtgenreError,
)
from rtgenre.session import STOP_WITHIN_S
from rtgenre.shards import POLL_WAIT_S, ShardedSession, ShardHost
from rtgenre.sinks.base import EventBus

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


class Shard(ShardHost):
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
        super().__init__(materialise(model, Path(self._folder.name)), engine, event_queue, {"node": self.node})

    def hello(self) -> dict[str, str | None]:  # type: ignore[override]
        """The node's name and its engine's notice (if any); makes the engine."""
        return {"node": self.node, "notice": super().hello()}


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

    @property
    def where(self) -> dict[str, str]:
        return {"node": self.node}


class ClusterSession(ShardedSession):
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
    files, metrics, engine_metrics
        As :class:`~rtgenre.shards.ShardedSession`.
    """

    def __init__(self, address: str, config: MonitorConfig, model: str | None, engine: dict[str, Any], bus: EventBus, *,
                 event_queue: int = 1024, files: Any = None, metrics: Any = None, engine_metrics: Any = None) -> None:
        super().__init__(config, bus, files=files, metrics=metrics, engine_metrics=engine_metrics)
        self.address = address
        self.model = model
        self.engine_args = engine
        self.event_queue = event_queue
        self.shards: list[_Remote] = []
        self._orphans: list[str] = []  # feeds that lost their shard and wait for one
        self._gone_nodes: set[str] = set()
        self._connected = False
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

    def _lose(self, shard: _Remote, why: str) -> None:
        """Give ``shard`` and its node up, and move its feeds that have not ended."""
        ray = _ray()
        self._gone_nodes.add(shard.node_id)
        self.shards.remove(shard)
        try:
            ray.kill(shard.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - the actor may have gone with its node: nothing left to kill
            pass
        self._place(self._lost(shard, why), lost_from=shard.node)

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
            self._tell_lost(feeds, {"node": lost_from}, f"node {lost_from} lost", {"node": target.node if target else None}, 0.0 if target else RETRY_S)
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
            self._end_feeds()

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
