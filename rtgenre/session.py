"""One run's lifecycle: open the feeds and the engine, start, run, stop, close, report.

A :class:`Session` owns everything a run holds (its feeds with their sources,
reader threads and child processes, the engine, the event bus) inside one
``try``/``finally``: whatever fails, and whenever, the feeds are stopped, the
engine is closed, every feed gets its ``error`` (if any) and ``stop`` events,
and the sinks are drained.  It also owns the stop signals: SIGINT, SIGTERM and
SIGHUP end any run within :data:`STOP_WITHIN_S` seconds with a ``stop`` event,
whatever a reader thread or a child process is blocked on (nothing here waits
without a timeout once a stop was asked for).

A session runs many feeds against one engine (windows ready at the same time
are batched together).  A feed's failure ends the session unless the session
was made with ``isolate=True``: then only that feed stops (with its ``error``
and ``stop`` events) and the others go on; the session ends when every feed
has ended.  :class:`MidiSession` is the same lifecycle for MIDI without audio.
"""

from __future__ import annotations

import collections
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from threadpoolctl import threadpool_limits

from rtgenre.dsp.window import Window
from rtgenre.errors import ExitCode, OutputFailedError, RtgenreError
from rtgenre.events import Event
from rtgenre.inference.base import Engine
from rtgenre.pipeline import Feed, MidiInput, infer
from rtgenre.sinks.base import EventBus

#: Signals that stop a run cleanly (exit code 0, ``stop`` reason ``interrupted``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds within which a stop signal ends a run.
STOP_WITHIN_S = 2.0
#: Feeds whose due windows run through the engine per step of the loop (the stop flag is checked between steps).
STEP_FEEDS = 8
#: Longest wait between two looks at the feeds when nothing is due (live feeds tell when they will be).
IDLE_MAX_S = 0.1
#: Engines whose calls may run on several threads at once (ONNX Runtime's sessions are thread-safe).
CONCURRENT_ENGINES = ("onnxruntime",)
#: CPython's GIL switch interval (s) while engine threads run: an engine thread coming back from ONNX
#: Runtime waits for the GIL behind the polling thread for up to the interval (5 ms by default, the
#: convoy effect); with 0.5 ms, 50 paced feeds of ``monitor`` went from latency p99 1450 ms to 430 ms.
ENGINE_SWITCH_INTERVAL_S = 0.0005
#: Seconds the sinks get to drain after a stop that was not the end of the input.
DRAIN_AFTER_STOP_S = 0.5

END_OF_INPUT = "end of input"


def _run_now(fn: Callable, *args: object) -> Future:
    """``fn(*args)`` on this thread, as a finished future (the engine step of a session without workers)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as e:
        future.set_exception(e)
    return future


class InternalError(RtgenreError):
    """A bug, reported in the event stream like any failure (the traceback still follows)."""

    code = ExitCode.INTERNAL
    reason = "internal error"


class _Interrupted(BaseException):
    """Raised by the signal handler while the session is still opening (a blocking open, a probe)."""


class Session:
    """Runs feeds against one engine, from opening them to the last ``stop`` event.

    Parameters
    ----------
    feeds : list of Feed
        Not yet opened; :meth:`run` opens and starts them.
    engine : Engine or callable returning Engine
        An engine (shared with other sessions; not closed here) or a factory
        called once the feeds are open (the session closes what it made,
        unless ``close_engine`` is false: a factory that hands out a shared engine).
    bus : EventBus
        Where events go; drained by :meth:`run`.  Its output errors end the run.
    summaries : bool
        Publish a ``summary`` event per feed before its ``stop`` (``classify``).
    isolate : bool
        A failing feed stops alone; the others go on.
    poll_s : float
        Shortest sleep between polls when no audio is waiting (live feeds whose
        next window is further away let the loop sleep until then, at most
        :data:`IDLE_MAX_S`).
    signals : bool
        Handle the stop signals during :meth:`run` (main thread only).
    workers : int
        Run engine steps on this many threads, so that the feeds' front end
        (read, resample, log-Mel) goes on while the engine works and steps of
        different feeds run at once; 0: on the loop's own thread.  Only for
        engines whose calls may overlap (:data:`CONCURRENT_ENGINES`); others
        run on the loop's thread whatever this says.

    Attributes
    ----------
    stop_reason : str
        ``end of input``, ``interrupted``, ``quit``, ``reader gone`` or the
        ``reason`` of the error that ended the run.
    signal : str or None
        Name of the signal that stopped the run.
    error : RtgenreError or None
        The error that ended the run (or the first deferred one); :meth:`run` raises it.
    """

    def __init__(
        self,
        feeds: list[Feed],
        engine: Engine | Callable[[], Engine],
        bus: EventBus,
        *,
        summaries: bool = False,
        isolate: bool = False,
        poll_s: float = 0.005,
        signals: bool = True,
        close_engine: bool = True,
        workers: int = 0,
    ) -> None:
        self.feeds = feeds
        self._close_engine = close_engine
        self._engine_arg = engine
        self.engine: Engine | None = engine if isinstance(engine, Engine) else None
        self.bus = bus
        self.summaries = summaries
        self.isolate = isolate
        self.poll_s = poll_s
        self.signals = signals
        self.workers = workers
        self.stop_requested = threading.Event()
        self.stop_reason = END_OF_INPUT
        self.signal: str | None = None
        self.error: RtgenreError | None = None
        self._phase = "new"
        self._reported: set[int] = set()
        self._poll_at: dict[int, float] = {}  # id(feed) → monotonic time before which a poll would find no window
        self._error_published = False
        bus.on_error = self._output_failed

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str, error: RtgenreError | None = None) -> None:
        """Ask the run to stop after the current step (signals, sinks, the dashboard's ``q``, errors)."""
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            if error is not None and self.error is None:
                self.error = error
            self.stop_requested.set()

    def _output_failed(self, error: OutputFailedError) -> None:
        self.request_stop(error.reason, error)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        self.request_stop("interrupted")
        if self._phase == "opening":
            raise _Interrupted

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        """Open, start and run the feeds until they end, fail or are stopped; then close.

        Raises
        ------
        RtgenreError
            The error that ended the run, or a deferred data problem (truncated
            input, NaN samples, input shorter than a window), after its ``error``
            event and the ``stop`` events were published and the sinks drained.
        """
        old = self._install_signals()
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                self._run()
        finally:
            self._restore_signals(old)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        """:meth:`run` inside its signal handlers, with single-threaded BLAS: the log-Mel's matrix product is
        small, and BLAS threads waking for it (or spinning after it) beside the engine's cost several times its work."""
        try:
            self._phase = "opening"
            self._open()
            self._phase = "running"
            if not self.stop_requested.is_set():
                self._start()
                self._loop()
        except _Interrupted:
            pass
        except RtgenreError as e:
            self.request_stop(e.reason, e)
            if self.error is None:  # a stop was asked for first; the error still counts
                self.error = e
        except Exception as e:  # a bug: still stop and report everything, then show the traceback
            bug = InternalError(f"Internal error ({type(e).__name__}: {e})", "Please report this bug with the command that caused it")
            self.request_stop(bug.reason, bug)
            if self.error is None:  # a stop was asked for first; the bug is still told
                self.error = bug
            raise
        finally:
            self._phase = "closing"
            self._close()

    def _install_signals(self) -> dict[int, object]:
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    @staticmethod
    def _restore_signals(old: dict[int, object]) -> None:
        for s, h in old.items():
            signal.signal(s, h)  # type: ignore[arg-type]

    def _open(self) -> None:
        for feed in self.feeds:  # a feed that cannot be opened is told before anything else happens
            feed.open(self.bus.publish)
        self._open_engine()

    def _open_engine(self) -> None:
        """The engine (made now from a factory), and each feed's analyzer for it."""
        if self.engine is None:
            self.engine = self._engine_arg()  # type: ignore[operator]
        for feed in self.feeds:
            feed.bind(self.engine)

    def _start(self) -> None:
        assert self.engine is not None
        for feed in self.feeds:
            self.bus.publish(feed.start_event(self.engine))
            if feed.midi is not None:
                feed.midi.start()
            feed.start()

    def _loop(self) -> None:
        assert self.engine is not None
        pending: collections.deque[tuple[Feed, Window, float]] = collections.deque()
        steps: list[tuple[Future, list[tuple[Feed, Window, float]], list[Feed]]] = []  # in flight, in the order submitted
        busy: set[int] = set()  # ids of the feeds of the steps in flight
        finished = threading.Event()  # set by a worker when a step is done (cheaper to wait on than the futures)
        pool = ThreadPoolExecutor(self.workers, "engine") if self.workers and getattr(self.engine, "name", "") in CONCURRENT_ENGINES else None
        switch = sys.getswitchinterval()
        if pool is not None:
            sys.setswitchinterval(min(switch, ENGINE_SWITCH_INTERVAL_S))

        def collect() -> bool:
            """Publish the steps done; whether there were any."""
            done = [s for s in steps if s[0].done()]
            for s in done:
                steps.remove(s)
                for f in s[2]:  # free again, and looked at on the next pass: the step moved what its analyzer waits for
                    busy.discard(id(f))
                    self._poll_at.pop(id(f), None)
                self._publish(s)
            return bool(done)

        def dispatch() -> bool:
            """Publish the steps done, give free workers new steps (a step run on this thread is told at
            once); whether anything happened."""
            finished.clear()  # a step done from now on sets it again
            collected = collect()
            submitted = False
            while len(steps) < (slots := self.workers if pool else 1) and (step := self._next_step(pending, busy, slots - len(steps))) is not None:
                window_feeds, ahead = step
                batch = [(feed.analyzer, w) for feed, w, _ in window_feeds]
                if pool is not None:
                    future = pool.submit(infer, self.engine, batch, [f.analyzer for f in ahead])
                    future.add_done_callback(lambda _: finished.set())
                else:
                    future = _run_now(infer, self.engine, batch, [f.analyzer for f in ahead])
                steps.append((future, window_feeds, [f for f, _, _ in window_feeds] + ahead))
                busy.update(id(f) for f in steps[-1][2])
                submitted = True
            return collect() or collected or submitted

        try:
            while not self.stop_requested.is_set():
                # a worker that finishes while the feeds are read gets its next step at once, not after the whole pass
                ready = self._poll(busy, pending, lambda: finished.is_set() and dispatch())
                active = dispatch() or ready
                if self.isolate:  # a feed that reached its end is told as such now, while the others go on
                    waiting = {id(f) for f, _, _ in pending} | busy
                    for feed in self.feeds:
                        if feed.finished and id(feed) not in self._reported and id(feed) not in waiting:
                            self._stop_feed(feed)
                            self._report(feed, ended=True)
                if not pending and not steps and all(f.finished for f in self.feeds):
                    return
                if not active:
                    (finished if steps else self.stop_requested).wait(self._idle_s(busy))
            for s in steps:  # stopped: what is being computed is still told
                s[0].result()
                self._publish(s)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                sys.setswitchinterval(switch)

    def _idle_s(self, busy: set[int]) -> float:
        """How long to wait when nothing happened: until the first feed can have a window's worth
        of audio (live feeds, :meth:`Feed.due_in`), at least :attr:`poll_s`, at most :data:`IDLE_MAX_S`."""
        now = time.monotonic()
        due = min((self._poll_at.get(id(f), now) - now for f in self.feeds if not f.finished and id(f) not in busy), default=IDLE_MAX_S)
        return min(max(self.poll_s, due), IDLE_MAX_S)

    def _poll(self, busy: set[int], pending: collections.deque, between: Callable[[], object]) -> bool:
        """Read every feed that is not ended, has no step in flight and may have a window into ``pending``
        (its due windows with their read times), calling ``between`` after each feed; whether any window came.

        A live feed is read again when it can have a window's worth of audio (:meth:`Feed.due_in`, at
        the latest :data:`IDLE_MAX_S` on, so that its source's notices and MIDI input are looked at that
        often): with many feeds whose windows fall due at different moments, most passes of the loop
        would otherwise read every feed to find nothing in most of them (about 50 reads per window
        analysed with 35 feeds per process, counted ad hoc in a monitor of 70 paced feeds).
        """
        ready = False
        start = time.monotonic()
        for feed in self.feeds:
            if feed.finished or id(feed) in busy or self._poll_at.get(id(feed), start) > start:
                continue
            try:
                if feed.midi is not None:
                    feed.midi.check()
                windows, now = feed.poll(self.bus.publish)
            except RtgenreError as e:
                self._feed_failed(feed, e)
                continue
            self._poll_at[id(feed)] = now + min(feed.due_in(), IDLE_MAX_S)
            pending.extend((feed, w, now) for w in windows)
            ready = ready or bool(windows)
            between()
        return ready

    def _next_step(self, pending: collections.deque, busy: set[int], slots: int = 1) -> tuple[list, list[Feed]] | None:
        """The next engine step: pending windows (taken out of ``pending``) and the feeds to encode
        ahead, of feeds not in ``busy``; None when there is nothing to run.

        A step takes every due window of its share of the feeds with windows that ``slots`` free
        workers can start now (windows due together finish sooner on two workers as two halves than
        as 8 + the rest), at most :data:`STEP_FEEDS` feeds, so that a stop is never kept waiting
        behind a long backlog.  All of a feed's due windows go together: the step encodes the feed's
        frames up to the newest anyway, and a feed that has fallen behind then catches up at the
        cost of its back-end calls alone.  (Taking one window per feed and step, a monitor pushed
        past its capacity for a moment encoded frames faster than it published their windows and
        never caught up: ``tools/bench_monitor.py --paired-with`` with 150 feeds on 2 cores, 115 windows
        per second at 16.2 ms of CPU each, against 253 at 7.2 ms; README, monitor capacity.)
        """
        feeds = {id(item[0]) for item in pending if id(item[0]) not in busy}
        size = min(STEP_FEEDS, -(-len(feeds) // max(1, slots)))
        chosen: set[int] = set()
        take, rest = [], collections.deque()
        for item in pending:
            key = id(item[0])
            if key not in chosen and len(chosen) < size and key in feeds:
                chosen.add(key)
            (take if key in chosen else rest).append(item)
        ahead = [f for f in self.feeds if not f.finished and id(f) not in busy and f.analyzer.ahead() is not None]
        if not take and not ahead:
            return None
        pending.clear()
        pending.extend(rest)
        return take, ahead

    def _publish(self, step: tuple[Future, list[tuple[Feed, Window, float]], list[Feed]]) -> None:
        """The events of a finished step's windows (raises what the engine raised)."""
        future, window_feeds, _ = step
        for (feed, window, arrival), probs in zip(window_feeds, future.result()):
            for event in feed.events_for(window, probs, arrival):
                self.bus.publish(event)

    def _feed_failed(self, feed: Feed, error: RtgenreError) -> None:
        feed.error = error
        feed.finished = True
        if not self.isolate:
            self.request_stop(error.reason, error)
            return
        if self.error is None:
            self.error = error
        self._stop_feed(feed)
        self._report(feed, ended=False)

    # ------------------------------------------------------------------ close
    def _close(self) -> None:
        """Stop every feed (bounded), close the engine we made, report each feed, drain the sinks."""
        for feed in self.feeds:
            if id(feed) not in self._reported:
                self._stop_feed(feed)
        try:
            if self.engine is not None and self.engine is not self._engine_arg and self._close_engine:
                self.engine.close()
        finally:
            ended = self.stop_reason == END_OF_INPUT
            for feed in self.feeds:
                if id(feed) not in self._reported:
                    self._report(feed, ended)
            self._drain(ended)

    @staticmethod
    def _stop_feed(feed: Feed) -> None:
        try:
            feed.stop()
        except RtgenreError:
            pass  # a source that fails while stopping has nothing left to report

    def _report(self, feed: Feed, ended: bool) -> None:
        """The feed's ``error`` event (its failure or a deferred data problem), ``summary`` and ``stop``."""
        self._reported.add(id(feed))
        error, fatal = feed.error, feed.error is not None
        if error is None and self.error is not None and not self.isolate and not self._error_published:
            error, fatal = self.error, True  # the run's error (open, engine, output), told on the first feed
        if error is None and hasattr(feed, "analyzer"):
            error = feed.deferred_error(ended and feed.finished)
            fatal = error is not None and error is feed.source.error  # the input broke off; NaN or short input were still analysed
            if error is not None and self.error is None:
                self.error = error
        if error is not None and error is self.error:
            self._error_published = True
        t = feed._t()
        if error is not None:
            self.bus.publish(Event("error", feed.name, t, {"code": int(error.code), "message": str(error), "fatal": fatal}))
        if self.summaries and feed.stats.windows:
            self.bus.publish(Event("summary", feed.name, t, {"file": feed.name, **feed.summary()}))
        reason = error.reason if error is not None and (fatal or self.stop_reason == END_OF_INPUT) else self.stop_reason
        data = {"reason": reason, "counts": {**feed.stop_counts(), "dropped_events": self.bus.dropped}}
        if self.signal is not None:
            data["signal"] = self.signal
        self.bus.publish(Event("stop", feed.name, t, data))

    def _drain(self, ended: bool) -> None:
        """Let the sinks write what is queued: all of it after the end of the input
        (until a stop signal), else :data:`DRAIN_AFTER_STOP_S` seconds."""
        deadline = None if ended and not self.stop_requested.is_set() else time.monotonic() + DRAIN_AFTER_STOP_S
        drained = False
        while not (drained := self.bus.wait_drained(0.1)):
            if deadline is None and self.stop_requested.is_set():
                deadline = time.monotonic() + DRAIN_AFTER_STOP_S
            if deadline is not None and time.monotonic() >= deadline:
                break
        # drained sinks' threads end as soon as their queues close: let them, so that nothing they hold
        # outlives the run (at interpreter exit a daemon thread's objects are never freed); a stuck one is left
        self.bus.finish(timeout=0.2 if drained else 0)


class MidiSession(Session):
    """MIDI without audio: one ``midi`` event per hop, timed by the monotonic clock.

    Parameters
    ----------
    midi : MidiInput
    bus : EventBus
    hop_s : float
        Seconds between events.
    stream : str
        Stream name of the events.
    """

    def __init__(self, midi: MidiInput, bus: EventBus, hop_s: float, stream: str, *, signals: bool = True) -> None:
        super().__init__([], lambda: None, bus, signals=signals)  # type: ignore[arg-type, return-value]
        self.midi = midi
        self.hop_s = hop_s
        self.stream = stream
        self._k = 0

    def _open(self) -> None:
        pass

    def _start(self) -> None:
        self.bus.publish(Event("start", self.stream, 0.0, {"source": f"midi {self.midi.name}", "hop_s": self.hop_s, "midi": True}))
        self.midi.start()

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self.stop_requested.wait(max(0.0, t0 + (self._k + 1) * self.hop_s - time.monotonic())):
            self._k += 1
            self.midi.check()
            self.bus.publish(Event("midi", self.stream, self._k * self.hop_s, {"midi": self.midi.snapshot(time.monotonic())}))
            if self.midi.done:
                return

    def _close(self) -> None:
        t = self._k * self.hop_s
        try:
            self.midi.stop()
        finally:
            if self.error is not None:
                self.bus.publish(Event("error", self.stream, t, {"code": int(self.error.code), "message": str(self.error), "fatal": True}))
            data = {"reason": self.stop_reason, "counts": {"midi_events": self._k, "dropped_events": self.bus.dropped}}
            if self.signal is not None:
                data["signal"] = self.signal
            self.bus.publish(Event("stop", self.stream, t, data))
            self._drain(self.stop_reason == END_OF_INPUT)
