"""Prometheus metrics of a ``monitor`` run: per feed from the events, per engine from its calls.

:class:`MetricsSink` turns the event stream into per-feed series (labelled
``stream``); :class:`EngineMeter` wraps the engine and counts its calls (:class:`EngineMetrics`, which
``monitor --ray`` fills from the nodes' records);
:class:`MetricsServer` exposes the registry over HTTP with
``prometheus_client``'s own server.  Series (``_total`` counters, ``_seconds`` units):

per feed (label ``stream``)
    ``rtgenre_feed_state`` (enum: live, reconnecting, stalled, ended, starting),
    ``rtgenre_feed_windows_total``, ``rtgenre_feed_predictions_total``,
    ``rtgenre_feed_reconnects_total`` (successful), ``rtgenre_feed_reconnect_failures_total``,
    ``rtgenre_feed_stalls_total``, ``rtgenre_feed_overruns_total``,
    ``rtgenre_feed_dropped_samples_total``, ``rtgenre_feed_errors_total``,
    ``rtgenre_feed_seconds_since_audio``, ``rtgenre_feed_latency_seconds``
    (histogram), ``rtgenre_feed_top_genre`` (labels ``stream``, ``genre``:
    the smoothed probability of the current top genre; one series per feed)
per engine (label ``call``: the engine method, e.g. ``run``)
    ``rtgenre_engine_batches_total``, ``rtgenre_engine_batch_size`` (histogram),
    ``rtgenre_engine_inference_seconds`` (histogram)
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

from rtgenre.errors import UsageError
from rtgenre.events import Event
from rtgenre.sinks.base import Sink
from rtgenre.sinks.feedstate import STATES, next_state

#: Latency buckets in seconds (a hop is typically 0.5 s).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class MetricsSink(Sink):
    """Keeps per-feed Prometheus series up to date from the events.

    Parameters
    ----------
    registry : CollectorRegistry
        Where the series live (one per run; :class:`MetricsServer` exposes it).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ["stream"]
        self.state = Enum("rtgenre_feed_state", "Feed state", labels, states=list(STATES), registry=registry)
        self.windows = Counter("rtgenre_feed_windows", "Windows analysed (predictions and silences)", labels, registry=registry)
        self.predictions = Counter("rtgenre_feed_predictions", "Predictions made", labels, registry=registry)
        self.reconnects = Counter("rtgenre_feed_reconnects", "Successful reconnections (audio flows again after a loss)", labels, registry=registry)
        self.reconnect_failures = Counter("rtgenre_feed_reconnect_failures", "Failed reconnection attempts", labels, registry=registry)
        self.stalls = Counter("rtgenre_feed_stalls", "Stalls (no audio for the stall timeout)", labels, registry=registry)
        self.overruns = Counter("rtgenre_feed_overruns", "Overruns (audio dropped because analysis fell behind)", labels, registry=registry)
        self.dropped = Counter("rtgenre_feed_dropped_samples", "Source samples dropped by overruns", labels, registry=registry)
        self.errors = Counter("rtgenre_feed_errors", "Error events", labels, registry=registry)
        self.since_audio = Gauge("rtgenre_feed_seconds_since_audio", "Seconds since the feed last produced a window", labels, registry=registry)
        self.latency = Histogram("rtgenre_feed_latency_seconds", "From the arrival of a window's last sample to its prediction",
                                 labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.genre = Gauge("rtgenre_feed_top_genre", "Smoothed probability of the feed's current top genre", ["stream", "genre"], registry=registry)
        self._states: dict[str, str] = {}
        self._genres: dict[str, str] = {}
        self._last_audio: dict[str, float] = {}

    def handle(self, event: Event) -> None:
        name, kind, d = event.stream, event.kind, event.data
        now = time.monotonic()
        if name not in self._states:
            self._add(name, now)
        state = next_state(self._states[name], event)
        if state != self._states[name]:
            self._states[name] = state
            self.state.labels(name).state(state)
        if kind in ("prediction", "silence"):
            self._last_audio[name] = now
            self.windows.labels(name).inc()
        if kind == "prediction":
            self.predictions.labels(name).inc()
            if event.arrival is not None:
                self.latency.labels(name).observe(max(0.0, now - event.arrival))
            genre = d.get("heads", {}).get("genre")
            if genre:
                self._set_genre(name, str(genre["top"]), float(genre["p"]))
        elif kind == "reconnect":
            status = d.get("status")
            if status == "recovered":
                self.reconnects.labels(name).inc()
            elif status == "failed":
                self.reconnect_failures.labels(name).inc()
        elif kind == "stall":
            self.stalls.labels(name).inc()
        elif kind == "overrun":
            self.overruns.labels(name).inc()
            self.dropped.labels(name).inc(int(d.get("dropped_samples", 0)))
        elif kind == "error":
            self.errors.labels(name).inc()

    def _add(self, name: str, now: float) -> None:
        """Create the feed's series at zero so that a scrape lists every feed from its start."""
        self._states[name] = "starting"
        self.state.labels(name).state("starting")
        self._last_audio[name] = now
        for metric in (self.windows, self.predictions, self.reconnects, self.reconnect_failures, self.stalls, self.overruns,
                       self.dropped, self.errors, self.latency):
            metric.labels(name)
        self.since_audio.labels(name).set_function(lambda: time.monotonic() - self._last_audio[name])

    def _set_genre(self, name: str, genre: str, p: float) -> None:
        old = self._genres.get(name)
        if old is not None and old != genre:
            self.genre.remove(name, old)
        self._genres[name] = genre
        self.genre.labels(name, genre).set(p)


class EngineMetrics:
    """The engine's Prometheus instruments: calls, items per call and seconds per call, by call name.

    Parameters
    ----------
    registry : CollectorRegistry
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter("rtgenre_engine_batches", "Engine calls", ["call"], registry=registry)
        self.batch_size = Histogram("rtgenre_engine_batch_size", "Items per engine call", ["call"], buckets=BATCH_BUCKETS, registry=registry)
        self.seconds = Histogram("rtgenre_engine_inference_seconds", "Seconds per engine call", ["call"], buckets=INFERENCE_BUCKETS, registry=registry)

    def observe(self, call: str, size: int, seconds: float) -> None:
        """One engine call ``call`` of ``size`` items that took ``seconds``."""
        self.seconds.labels(call).observe(seconds)
        self.batches.labels(call).inc()
        self.batch_size.labels(call).observe(size)


class EngineMeter:
    """An engine with its calls counted and timed; every other attribute is the engine's.

    The calls named in ``calls`` (a batch of windows or frames as first
    argument) are recorded per call name (:class:`EngineMetrics`): batches,
    batch size, seconds.

    Parameters
    ----------
    engine : Engine
    metrics : EngineMetrics or CollectorRegistry
        Where the calls are recorded (a registry gets new instruments).
    calls : tuple of str
        Engine methods to meter.
    """

    def __init__(self, engine: Any, metrics: Any, calls: tuple[str, ...] = ("run", "encode", "patch", "head")) -> None:
        self._engine = engine
        self._calls = calls
        self.metrics = metrics if isinstance(metrics, EngineMetrics) else EngineMetrics(metrics)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name not in self._calls or not callable(attr):
            return attr

        def metered(batch: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(batch, *args, **kwargs)
            finally:
                self.metrics.observe(name, len(batch), time.perf_counter() - t0)
        return metered


class MetricsServer:
    """``prometheus_client``'s HTTP server for one registry, on ``host:port`` (0: any free port)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        ProcessCollector(registry=registry)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise UsageError(f"Cannot serve metrics on {host}:{port} ({e.strerror or e})", "Pick a free --metrics-port, or --metrics-host of this machine") from None
        self.host, self.port = host, self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

