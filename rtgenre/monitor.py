"""``rtgenre monitor``: many live feeds in one process, one engine, one session.

Parses the ``monitor`` command line, turns the feed list (FEEDS.toml and
``--feed``, see :mod:`rtgenre.config`) into feeds, and runs them in one
:class:`~rtgenre.session.Session` with ``isolate=True``: windows ready at the
same time across feeds go to the engine as one batch, and a feed that fails
ends alone (its ``error`` and ``stop`` events) while the others go on, also
when it cannot even be opened (:class:`MonitorSession`).  The
outputs are JSON Lines of every feed on stdout, one file per feed
(``--out-dir``, reopened on SIGUSR1 for log rotation), the control-room
dashboard, and Prometheus metrics (``--metrics-port``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from rtgenre.config import FeedSpec, MonitorConfig, build_config
from rtgenre.errors import ExitCode, RtgenreError, UsageError
from rtgenre.session import Session

#: Default address of the metrics endpoint (loopback: nothing is exposed unless asked for).
METRICS_HOST = "127.0.0.1"
#: Seconds of source audio a monitor feed's ring holds (``listen``: 20). The loop reads every feed at
#: least once a hop; 8 s is 16 times the latency target, and 44.1 kHz stereo then takes 2.8 MB a feed, not 7.
FEED_RING_S = 8.0
#: Seconds of audio per block a monitor feed's source delivers (``listen``: 0.05). Every block is a
#: read and a ring write in Python, under the GIL that all feeds share; 0.1 s halves them, and the
#: 50 ms it can add before a sample reaches the ring is small against the 500 ms latency target.
FEED_BLOCK_S = 0.1


def add_monitor_arguments(sub: Any) -> None:
    """Add the ``monitor`` subcommand to the ``rtgenre`` subparsers."""
    from rtgenre.inference import ENGINE_CHOICES

    p = sub.add_parser(
        "monitor", help="classify many live feeds at once (one engine, control-room dashboard, Prometheus metrics)",
        description="Classify many feeds (URLs, files, devices) in one process with one engine. "
                    "Feeds come from FEEDS.toml ([defaults] and [[feed]] tables, see README) and/or --feed.",
    )
    p.add_argument("feeds_file", nargs="?", metavar="FEEDS.toml", help="feed list ([defaults] and [[feed]] tables)")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=SPEC",
                   help="add a feed: SPEC is a URL, a file (paced in real time) or device:INDEX|NAME (repeatable)")
    g = p.add_argument_group("model and engine (override [defaults])")
    g.add_argument("--model", default=None, help="model name in rtgenre/models/, or path to its card or ONNX file (default: the shipped rtgenre)")
    g.add_argument("--engine", default=None, choices=ENGINE_CHOICES, help="inference engine (default: auto)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: 1)")
    g.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="TensorRT precision (default: fp16)")
    g.add_argument("--max-batch", type=int, default=256, help="largest batch of windows per engine call (default: 256)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="engine steps of different feeds run on N threads at once, beside the feeds' front end (ONNX Runtime; 0: on the main thread; "
                        "default: the CPU cores shared out between --processes, 0 once --processes reaches the cores)")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="JSON Lines of every feed on stdout (default when stdout is not a terminal)")
    g.add_argument("--no-dashboard", action="store_true", help="never show the control-room dashboard")
    g.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    g.add_argument("--out-dir", default=None, metavar="DIR", help="also append each feed's events to DIR/NAME.jsonl (reopened on SIGUSR1)")
    g.add_argument("--event-queue", type=int, default=1024, help="events buffered per output before old predictions are dropped (default: 1024)")
    g = p.add_argument_group("scale-out")
    g.add_argument("--processes", type=int, default=1, metavar="N",
                   help="deal the feeds out to N worker processes on this machine, each with its own engine (default: 1, every feed in this process)")
    g = p.add_argument_group("cluster (needs the [cluster] extra)")
    g.add_argument("--ray", default=None, metavar="ADDRESS", help="spread the feeds over the Ray cluster at ADDRESS (host:port, or auto: the cluster this node belongs to)")
    g = p.add_argument_group("metrics")
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT", help="serve Prometheus metrics on PORT (0: any free port, printed on stderr)")
    g.add_argument("--metrics-host", default=METRICS_HOST, help=f"address of the metrics endpoint (default: {METRICS_HOST})")
    p.set_defaults(handler=run_monitor)


def _source(spec: FeedSpec):
    """The feed's source (not yet opened), in blocks of :data:`FEED_BLOCK_S`; reconnect settings apply to URLs, pacing to files."""
    from rtgenre.sources import is_url, open_source

    if spec.input is not None and is_url(spec.input):
        return open_source(spec.input, None, reconnect=spec.reconnect, max_reconnects=spec.max_reconnects, stall_timeout=spec.stall_timeout,
                           block_seconds=FEED_BLOCK_S)
    return open_source(spec.input, spec.device, realtime=spec.realtime and spec.input is not None, block_seconds=FEED_BLOCK_S)


def _feeds(config: MonitorConfig, card) -> list:
    """The feeds of a monitor: a step encoder runs only when a feed's window is due (``step_ahead=None``),
    each ring holds :data:`FEED_RING_S` of audio, and each feed has the phase of its spec
    (:func:`~rtgenre.dsp.window.feed_phase`): feeds started together have their windows due at
    different moments of the hop, not all at once behind each other, and with a patch encoder they
    do not all encode a patch on one hop.

    Encoding ahead every few frames is what keeps one ``listen`` feed's latency
    at a few milliseconds; with many feeds it multiplies the engine calls and
    keeps feeds busy in steps their windows then wait behind (``tools/bench_monitor.py``
    on a quiet machine, with the GIL switch interval of :mod:`rtgenre.session`:
    40 paced feeds sustained before, 60 after; README, monitor capacity).
    """
    from rtgenre.pipeline import Feed
    from rtgenre.smoothing import Smoother

    return [
        Feed(s.name, _source(s), card, Smoother(card.heads, s.hop, s.smooth, s.silence_db, s.change_margin, s.change_hops), s.hop,
             step_ahead=None, ring_seconds=FEED_RING_S, phase=s.phase)
        for s in config.feeds
    ]


def _dashboard_stream(args: argparse.Namespace, json_mode: bool):
    """Where the control room goes: stdout when it is a terminal and JSON was not asked for,
    stderr when JSON goes to a pipe or file and stderr is a terminal, else nowhere."""
    if args.no_dashboard:
        return None
    if not json_mode:
        return sys.stdout
    return sys.stderr if not sys.stdout.isatty() and sys.stderr.isatty() else None


class MonitorSession(Session):
    """A :class:`~rtgenre.session.Session` of many feeds, each isolated from the others from the start.

    The feeds are opened in parallel (a URL's probe or a device's open do not
    wait for one another), and a feed that cannot be opened ends alone with its
    ``error`` and ``stop`` events, like one that fails later; only when no feed
    opens does the run fail as a whole.  The session also owns the run's
    per-feed files (reopened on SIGUSR1 while it runs) and its metrics
    endpoint (closed when it ends).

    Parameters
    ----------
    feeds, engine, bus
        As for :class:`~rtgenre.session.Session`.
    files : FeedFiles, optional
        The ``--out-dir`` sink (already on the bus).
    metrics : MetricsServer, optional
        The ``--metrics-port`` endpoint.
    workers : int
        Engine threads (``--workers``, see :class:`~rtgenre.session.Session`).
    """

    def __init__(self, feeds: list, engine: Any, bus: Any, *, files: Any = None, metrics: Any = None, workers: int = 0) -> None:
        super().__init__(feeds, engine, bus, isolate=True, workers=workers)
        self.files = files
        self.metrics = metrics

    def run(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGUSR1, self._on_usr1) if main else None
        try:
            super().run()
        finally:
            if main:
                signal.signal(signal.SIGUSR1, old)
            if self.metrics is not None:
                self.metrics.close()

    def _on_usr1(self, signum: int, frame: object) -> None:
        """Log rotation: reopen the per-feed files (ignored without ``--out-dir``)."""
        if self.files is not None:
            self.files.reopen()

    @contextlib.contextmanager
    def _only(self, feeds: list) -> Iterator[None]:
        """Let the base class see only ``feeds`` for a while."""
        every, self.feeds = self.feeds, feeds
        try:
            yield
        finally:
            self.feeds = every

    def _open(self) -> None:
        def open_one(feed) -> None:
            try:
                feed.open(self.bus.publish)
            except RtgenreError as e:
                feed.error, feed.finished = e, True

        threads = [threading.Thread(target=open_one, args=(f,), name=f"open {f.name}", daemon=True) for f in self.feeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if all(f.error is not None for f in self.feeds):
            raise self.feeds[0].error
        with self._only([f for f in self.feeds if f.error is None]):
            self._open_engine()

    def _start(self) -> None:
        with self._only([f for f in self.feeds if f.error is None]):
            super()._start()
        for feed in self.feeds:
            if feed.error is not None:
                self._feed_failed(feed, feed.error)


def default_workers(processes: int, cores: int | None = None) -> int:
    """``--workers`` when not given: the cores shared out between the ``processes``, or 0 (engine steps on each
    process's main thread) once there is a process per core, where an engine thread would only contend
    with its own main thread for that core (README, *Capacity of rtgenre monitor*, v14).

    Examples
    --------
    >>> default_workers(1, cores=2), default_workers(2, cores=2), default_workers(2, cores=8)
    (2, 0, 4)
    """
    cores = cores or os.cpu_count() or 1
    return cores // processes if processes < cores else 0


def run_monitor(args: argparse.Namespace) -> int:
    """Handler of ``rtgenre monitor``; returns the exit code (the first feed error's, else 0)."""
    from rich.console import Console

    from rtgenre.card import load_card
    from rtgenre.inference import create_engine
    from rtgenre.options import check_options
    from rtgenre.sinks.base import EventBus
    from rtgenre.sinks.jsonl import JsonLinesSink

    check_options(args)
    if args.workers is None:
        args.workers = default_workers(args.processes)
    if args.ray is not None and args.processes > 1:
        raise UsageError("--processes and --ray cannot be combined: --ray runs one worker per node of the cluster", "Pass one of them")
    config = build_config(args.feeds_file, args.feed)
    card = load_card(args.model or config.model)
    bus = EventBus()
    registry = server = files = None
    if args.out_dir is not None:
        from rtgenre.sinks.files import FeedFiles

        files = FeedFiles(args.out_dir, [s.name for s in config.feeds])
    if args.metrics_port is not None:
        from rtgenre.sinks.metrics import CollectorRegistry, MetricsServer, MetricsSink

        registry = CollectorRegistry()
        server = MetricsServer(registry, args.metrics_host, args.metrics_port)
        print(f"rtgenre: notice: metrics on {server.url}", file=sys.stderr)

    def engine():
        e = create_engine(args.engine or config.engine, card, threads=config.threads if args.threads is None else args.threads,
                          precision=args.precision, max_batch=args.max_batch)
        if e.notice:
            print(f"rtgenre: notice: {e.notice}", file=sys.stderr)
        if registry is None:
            return e
        from rtgenre.sinks.metrics import EngineMeter

        return EngineMeter(e, registry)

    if args.ray is not None or args.processes > 1:  # the feeds and their engines run in other processes
        settings = {"kind": args.engine or config.engine, "threads": config.threads if args.threads is None else args.threads,
                    "precision": args.precision, "max_batch": args.max_batch}
        meters = None
        if registry is not None:
            from rtgenre.sinks.metrics import EngineMetrics

            meters = EngineMetrics(registry)
        session: MonitorSession
        if args.ray is not None:
            from rtgenre.cluster import ClusterSession

            session = ClusterSession(args.ray, config, args.model or config.model, settings, bus, event_queue=args.event_queue, files=files,
                                     metrics=server, engine_metrics=meters)
        else:
            from rtgenre.card import resolve_model
            from rtgenre.processes import ProcessSession

            session = ProcessSession(config, resolve_model(args.model or config.model), settings, bus, processes=args.processes, workers=args.workers,
                                     event_queue=args.event_queue, files=files, metrics=server, engine_metrics=meters)
    else:
        session = MonitorSession(_feeds(config, card), engine, bus, files=files, metrics=server, workers=args.workers)
    on_gone = lambda: session.request_stop("reader gone")
    json_mode = args.json or not sys.stdout.isatty()
    if json_mode:
        bus.add(JsonLinesSink(), on_gone, capacity=args.event_queue)
    if files is not None:
        bus.add(files, on_gone, capacity=args.event_queue)
    if registry is not None:
        bus.add(MetricsSink(registry), on_gone, capacity=args.event_queue)
    stream = _dashboard_stream(args, json_mode)
    if stream is not None:
        from rtgenre.sinks.controlroom import ControlRoom

        console = Console(file=stream, no_color=args.no_color or "NO_COLOR" in os.environ, stderr=stream is sys.stderr)
        bus.add(ControlRoom(console, on_quit=lambda: session.request_stop("quit")), on_gone, capacity=args.event_queue)
    session.run()
    return ExitCode.OK
