"""Wires feeds to one engine and to the sinks; owns the analysis loop and shutdown.

One *feed* is one audio stream: ``Source → Ring → Analyzer (mono mix, resample,
log-Mel, level, windows) → Smoother``.  The :class:`Runner` polls every feed,
gathers the windows that are ready across all feeds into batches for the one
shared :class:`~rtgenre.inference.base.Engine`, and turns each window's
probabilities into events named after the feed's stream.  ``listen`` runs one
live feed; ``classify`` runs files as feeds the same way; ``analyze_file`` is
the plain offline path (no smoothing) used by evaluation, built from the same
:class:`Analyzer`.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.dsp.level import LevelMeter
from rtgenre.dsp.mel import MelStream
from rtgenre.dsp.resample import Resampler
from rtgenre.dsp.window import Window, Windower
from rtgenre.errors import InputEmptyError, NonFiniteSamplesError, RtgenreError
from rtgenre.events import Event
from rtgenre.inference.base import Engine
from rtgenre.ring import Ring
from rtgenre.sinks.base import EventBus
from rtgenre.smoothing import Decision, Smoother
from rtgenre.sources.base import Source

#: Peak level (dBFS) at or above which a window is flagged as clipped.
CLIP_DBFS = -0.1


class MidiInput(Protocol):
    """What the runner needs of a MIDI input (see ``rtgenre.midi``)."""

    error: RtgenreError | None
    name: str
    done: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def check(self) -> None: ...
    def snapshot(self, now: float) -> dict[str, Any]: ...


PredictionHook = Callable[[float, dict[str, np.ndarray]], dict[str, Any]]
"""Adds fields to a prediction: ``hook(t, engine outputs of the window) -> {field: value}``."""


class Analyzer:
    """Audio frames at any rate and channel count → sliding log-Mel windows.

    Parameters
    ----------
    card : ModelCard
        Front-end parameters and window length.
    source_rate : int
        Sample rate of the frames given to :meth:`process`.
    hop_s : float
        Seconds between windows.
    """

    def __init__(self, card: ModelCard, source_rate: int, hop_s: float) -> None:
        fe = card.frontend
        self.resampler = Resampler(source_rate, fe.sample_rate)
        self.mel = MelStream(fe)
        self.level = LevelMeter(fe.hop_length)
        self.windower = Windower(card.window_frames, fe.n_mels, hop_s, fe.sample_rate, fe.hop_length, fe.n_fft)
        self.nonfinite = 0

    def process(self, frames: np.ndarray) -> list[Window]:
        """Feed ``(n, channels)`` float32 frames; return the windows completed by them.

        Non-finite samples are zeroed (and counted in :attr:`nonfinite`) before mixing to mono.
        """
        bad = ~np.isfinite(frames)
        if bad.any():
            self.nonfinite += int(bad.sum())
            frames = np.where(bad, np.float32(0.0), frames)
        mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
        return self._model_rate(self.resampler.process(mono))

    def flush(self) -> list[Window]:
        """End of stream: push the resampler's tail through; return the last windows."""
        return self._model_rate(self.resampler.flush())

    def reset(self) -> None:
        for stage in (self.resampler, self.mel, self.level, self.windower):
            stage.reset()
        self.nonfinite = 0

    def _model_rate(self, samples: np.ndarray) -> list[Window]:
        if samples.size == 0:
            return []
        frames = self.mel.process(samples)
        block_ms, block_peak = self.level.process(samples)
        return self.windower.process(frames, block_ms, block_peak)


def infer(engine: Engine, windows: list[Window]) -> list[dict[str, np.ndarray]]:
    """Run windows through the engine in batches of at most ``engine.max_batch``.

    Returns one dict (head → probabilities of that window) per window, in order.
    """
    out: list[dict[str, np.ndarray]] = []
    for i in range(0, len(windows), engine.max_batch):
        chunk = windows[i : i + engine.max_batch]
        probs = engine.run(np.stack([w.mel for w in chunk]))
        out.extend({h: p[j] for h, p in probs.items()} for j in range(len(chunk)))
    return out


@dataclass
class FeedStats:
    """Counters reported in a feed's ``stop`` event."""

    windows: int = 0
    predictions: int = 0
    silences: int = 0
    changes: int = 0
    overruns: int = 0
    dropped_samples: int = 0
    tops: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))


class Feed:
    """One stream: a source, its ring, its analyzer and its smoother.

    Parameters
    ----------
    name : str
        Stream name carried by every event.
    source : Source
        Opened by :meth:`open`.
    card : ModelCard
    smoother : Smoother
    hop_s : float
    ring_seconds : float
        Ring capacity in seconds of source audio.
    midi : MidiInput, optional
        MIDI analysis attached to this feed's predictions.
    midi_weight : float
        Weight of the MIDI mood in the combined mood (see :func:`rtgenre.midi.combine_mood`).
    hooks : sequence of callables
        ``hook(t, probs) -> dict`` per prediction (``probs``: the engine's outputs
        for the window ending at ``t``); the fields returned are added to the
        ``prediction`` event (e.g. ``similar``, :mod:`rtgenre.similarity.live`).
    """

    def __init__(self, name: str, source: Source, card: ModelCard, smoother: Smoother, hop_s: float, ring_seconds: float = 20.0, midi: MidiInput | None = None, midi_weight: float = 1.0, hooks: Sequence[PredictionHook] = ()) -> None:
        self.name = name
        self.source = source
        self.card = card
        self.smoother = smoother
        self.hop_s = hop_s
        self.ring_seconds = ring_seconds
        self.midi = midi
        self.midi_weight = midi_weight
        self.hooks = tuple(hooks)
        self.stats = FeedStats()
        self._silent_since: float | None = None
        self.started = False
        self.finished = False

    def open(self) -> None:
        self.source.open()
        self.ring = Ring(max(1, int(self.ring_seconds * self.source.sample_rate)), self.source.channels)
        self.analyzer = Analyzer(self.card, self.source.sample_rate, self.hop_s)

    def start(self) -> None:
        self.source.start(self.ring)
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.source.stop()

    def start_event(self, engine: Engine) -> Event:
        fe = self.card.frontend
        return Event("start", self.name, 0.0, {
            "model": self.card.name,
            "model_version": self.card.version,
            "engine": engine.name,
            "engine_detail": engine.detail,
            "engine_notice": engine.notice,
            "sample_rate": fe.sample_rate,
            "source_rate": self.source.sample_rate,
            "channels": self.source.channels,
            "source": self.source.description,
            "window_s": round(self.card.window_seconds, 4),
            "hop_s": self.hop_s,
            "labels": self.card.labels(),
            "midi": self.midi is not None,
        })

    def poll(self, emit: Callable[[Event], None]) -> tuple[list[Window], float]:
        """Read what the ring holds; return the completed windows and the read time.

        Overruns are emitted here.  At the end of the stream the analyzer is
        flushed and :attr:`finished` is set; a source error is raised only
        once everything that arrived before it has been analysed.
        """
        if hasattr(self.source, "check"):
            self.source.check()
        frames, dropped = self.ring.read()
        now = time.monotonic()
        if dropped:
            self.stats.overruns += 1
            self.stats.dropped_samples += dropped
            emit(Event("overrun", self.name, self._t(), {"dropped_samples": dropped, "total_dropped_samples": self.stats.dropped_samples}))
        windows = self.analyzer.process(frames) if len(frames) else []
        if self.ring.closed and self.ring.available() == 0 and not len(frames):  # every producer closes its ring at the end
            windows += self.analyzer.flush()
            self.finished = True
        return windows, now

    def _t(self) -> float:
        return self.analyzer.mel.frames_done * self.card.frontend.hop_length / self.card.frontend.sample_rate

    def events_for(self, window: Window, probs: dict[str, np.ndarray], arrival: float) -> list[Event]:
        """Smooth one window's probabilities and turn them into events."""
        self.stats.windows += 1
        decision = self.smoother.process(probs, window.level_dbfs)
        if decision.silent:
            self.stats.silences += 1
            if self._silent_since is None:
                self._silent_since = window.t
            data = {"level_dbfs": round(window.level_dbfs, 2), "peak_dbfs": round(window.peak_dbfs, 2), "since": self._silent_since}
            return [Event("silence", self.name, window.t, data, arrival=arrival)]
        self._silent_since = None
        self.stats.predictions += 1
        data: dict[str, Any] = {
            "heads": self._heads(probs, decision),
            "level_dbfs": round(window.level_dbfs, 2),
            "peak_dbfs": round(window.peak_dbfs, 2),
            "clipped": bool(window.peak_dbfs >= CLIP_DBFS),
        }
        if self.midi is not None:
            data["midi"] = self._midi(arrival, data["heads"])
        for hook in self.hooks:
            data.update(hook(window.t, probs))
        events = [Event("prediction", self.name, window.t, data, arrival=arrival)]
        for c in decision.changes:
            self.stats.changes += 1
            events.append(Event("change", self.name, window.t, {"head": c.head, "from": c.old, "to": c.new, "p": round(c.p, 4)}))
        return events

    def _midi(self, now: float, heads: dict[str, Any]) -> dict[str, Any]:
        """The MIDI window ending ``now``, with the combined audio+MIDI mood."""
        from rtgenre.midi import combine_mood

        snap = self.midi.snapshot(now)
        if "mood" in heads:
            snap["combined_mood"] = combine_mood(heads["mood"]["probs"], snap["mood"], self.midi_weight)
        return snap

    def _heads(self, probs: dict[str, np.ndarray], decision: Decision) -> dict[str, Any]:
        heads = {}
        for head in self.card.heads:
            sm, raw = decision.smoothed[head.name], probs[head.name]
            top = int(np.argmax(sm))
            entry: dict[str, Any] = {
                "top": head.labels[top],
                "p": round(float(sm[top]), 4),
                "raw_top": head.labels[int(np.argmax(raw))],
                "probs": {label: round(float(p), 4) for label, p in zip(head.labels, sm)},
            }
            if head.kind == "multilabel":
                order = np.argsort(-sm)
                entry["present"] = [head.labels[i] for i in order if sm[i] >= head.threshold]
            else:
                self.stats.tops[head.name][head.labels[top]] += 1
            heads[head.name] = entry
        return heads

    def stop_counts(self) -> dict[str, int]:
        s = self.stats
        return {
            "windows": s.windows,
            "predictions": s.predictions,
            "silences": s.silences,
            "changes": s.changes,
            "overruns": s.overruns,
            "dropped_samples": s.dropped_samples,
            "nonfinite_samples": self.analyzer.nonfinite,
        }

    def summary(self) -> dict[str, Any]:
        """Per-feed summary: dominant label and share of windows per single-label head."""
        share = {}
        dominant = {}
        for head, counter in self.stats.tops.items():
            total = sum(counter.values())
            share[head] = {label: round(n / total, 4) for label, n in counter.most_common()}
            dominant[head] = counter.most_common(1)[0][0]
        return {"windows": self.stats.windows, "predictions": self.stats.predictions, "dominant": dominant, "share": share}


class _Stoppable:
    """Stop handling shared by the runners: a reason and an event the loop waits on."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.stop_reason = "end of input"

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step (signal handlers, sinks, the dashboard's ``q``)."""
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()


class Runner(_Stoppable):
    """Runs feeds against one engine until they end, fail or are stopped.

    Parameters
    ----------
    feeds : list of Feed
        Opened feeds; the runner starts them.
    engine : Engine
        Shared by all feeds: windows ready at the same time are batched together.
    bus : EventBus
        Where events go.
    poll_s : float
        Sleep between polls when no audio is waiting.
    """

    def __init__(self, feeds: list[Feed], engine: Engine, bus: EventBus, poll_s: float = 0.005) -> None:
        super().__init__()
        self.feeds = feeds
        self.engine = engine
        self.bus = bus
        self.poll_s = poll_s
        self._current = feeds[0]

    def run(self, summaries: bool = False) -> None:
        """Run to the end.

        Raises
        ------
        RtgenreError
            A fatal error (device lost, unreadable input) after its ``error`` and
            ``stop`` events were published; or, once the input ended, a deferred
            data problem (truncated input, non-finite samples).
        """
        for feed in self.feeds:
            self.bus.publish(feed.start_event(self.engine))
            if feed.midi is not None:
                feed.midi.start()
            feed.start()
        fatal: RtgenreError | None = None
        try:
            self._loop()
        except RtgenreError as e:
            fatal = e
            self.stop_reason = "error"
            self.bus.publish(Event("error", self._current.name, 0.0, {"code": int(e.code), "message": str(e), "fatal": True}))
        finally:
            for feed in self.feeds:
                feed.stop()
                if feed.midi is not None:
                    feed.midi.stop()
        for feed in self.feeds:
            if summaries and feed.stats.windows:
                self.bus.publish(Event("summary", feed.name, feed._t(), {"file": feed.name, **feed.summary()}))
            self.bus.publish(Event("stop", feed.name, feed._t(), {"reason": self.stop_reason, "counts": {**feed.stop_counts(), "dropped_events": self.bus.dropped}}))
        if fatal is not None:
            raise fatal
        self._raise_deferred()

    def _loop(self) -> None:
        while not self.stop_requested.is_set():
            ready: list[tuple[Feed, Window, float]] = []
            for feed in self.feeds:
                if feed.finished:
                    continue
                self._current = feed
                if feed.midi is not None:
                    feed.midi.check()
                windows, now = feed.poll(self.bus.publish)
                ready += [(feed, w, now) for w in windows]
            if ready:
                results = infer(self.engine, [w for _, w, _ in ready])
                for (feed, window, arrival), probs in zip(ready, results):
                    for event in feed.events_for(window, probs, arrival):
                        self.bus.publish(event)
            if all(f.finished for f in self.feeds):
                return
            if not ready:
                self.stop_requested.wait(self.poll_s)

    def _raise_deferred(self) -> None:
        for feed in self.feeds:
            if self.stop_reason == "end of input" and feed.source.error is not None:
                raise feed.source.error
            if feed.analyzer.nonfinite:
                raise NonFiniteSamplesError(
                    f"{feed.analyzer.nonfinite} NaN/Inf samples in {feed.source.description} were replaced by silence",
                    "Check the producer of the audio; the results were computed with those samples zeroed",
                )
            if self.stop_reason == "end of input" and feed.stats.windows == 0:
                raise InputEmptyError(
                    f"{feed.source.description} ended before one full {feed.card.window_seconds:.2f} s window",
                    "Give at least one window's worth of audio",
                )


class MidiRunner(_Stoppable):
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

    def __init__(self, midi: MidiInput, bus: EventBus, hop_s: float, stream: str) -> None:
        super().__init__()
        self.midi = midi
        self.bus = bus
        self.hop_s = hop_s
        self.stream = stream

    def run(self, summaries: bool = False) -> None:
        """Run until stopped, the MIDI file ends or the port fails (raised after ``error``/``stop``)."""
        self.bus.publish(Event("start", self.stream, 0.0, {"source": f"midi {self.midi.name}", "hop_s": self.hop_s, "midi": True}))
        self.midi.start()
        t0, k, fatal = time.monotonic(), 0, None
        try:
            while not self.stop_requested.wait(max(0.0, t0 + (k + 1) * self.hop_s - time.monotonic())):
                k += 1
                self.midi.check()
                self.bus.publish(Event("midi", self.stream, k * self.hop_s, {"midi": self.midi.snapshot(time.monotonic())}))
                if self.midi.done:
                    break
        except RtgenreError as e:
            fatal, self.stop_reason = e, "error"
            self.bus.publish(Event("error", self.stream, k * self.hop_s, {"code": int(e.code), "message": str(e), "fatal": True}))
        finally:
            self.midi.stop()
        self.bus.publish(Event("stop", self.stream, k * self.hop_s, {"reason": self.stop_reason, "counts": {"midi_events": k, "dropped_events": self.bus.dropped}}))
        if fatal is not None:
            raise fatal


@dataclass
class FileAnalysis:
    """Raw (unsmoothed) per-window results of one file (``probs`` also holds ``hash`` when the engine returns it)."""

    path: Path
    t: np.ndarray
    level_dbfs: np.ndarray
    probs: dict[str, np.ndarray]
    duration: float = 0.0
    """Seconds of audio read."""


def analyze_file(path: str | Path, card: ModelCard, engine: Engine, hop_s: float = 0.5, block_s: float = 10.0) -> FileAnalysis:
    """Offline analysis of one file with the same stages as the live path, without smoothing.

    Parameters
    ----------
    path : str or Path
        Any file the file source reads.
    card, engine
        The model and the engine that runs it.
    hop_s : float
        Seconds between windows.

    Returns
    -------
    FileAnalysis
        ``probs[head]`` has shape ``(n_windows, n_labels)``.

    Raises
    ------
    InputUnreadableError, InputEmptyError, InputTruncatedError
    """
    from rtgenre.sources.file import FileSource

    source = FileSource(str(path))
    source.open()
    ring = Ring(int(block_s * source.sample_rate) * 2, source.channels)
    analyzer = Analyzer(card, source.sample_rate, hop_s)
    source.start(ring)
    windows: list[Window] = []
    n_frames = 0
    try:
        while True:
            frames, _ = ring.read()
            if len(frames):
                n_frames += len(frames)
                windows += analyzer.process(frames)
            elif ring.closed and ring.available() == 0:
                break
            else:
                ring.wait_available(1, 0.01)
        windows += analyzer.flush()
    finally:
        source.stop()
    if source.error is not None:
        raise source.error
    if not windows:
        raise InputEmptyError(f"{path} is shorter than one {card.window_seconds:.2f} s window", "Use files of at least that length")
    results = infer(engine, windows)
    return FileAnalysis(
        path=Path(path),
        t=np.array([w.t for w in windows]),
        level_dbfs=np.array([w.level_dbfs for w in windows]),
        probs={name: np.stack([r[name] for r in results]) for name in results[0]},
        duration=n_frames / source.sample_rate,
    )
