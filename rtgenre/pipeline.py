"""The analysis path of one stream: feeds, their analyzers, batched inference.

One *feed* is one audio stream: ``Source → Ring → Analyzer (mono mix, resample,
log-Mel, level, windows) → Smoother``.  A feed turns each window's
probabilities into events named after its stream, and a gap in its source (a
reconnected URL) into a clean restart of its analysis.  The run loop that
polls feeds, batches their windows through :func:`infer` (the only place that
runs the engine) and owns the run's lifecycle is :class:`rtgenre.session.Session`.
With a streaming engine (a split model) the analyzer also keeps the feed's
:class:`~rtgenre.inference.streaming.FeatureStream` and :func:`infer` encodes
only the frames each hop completes.  ``analyze_file`` is the plain
offline path (no smoothing) used by evaluation, built from the same
:class:`Analyzer`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.content import ContentClassifier, for_card
from rtgenre.dsp.level import LevelMeter
from rtgenre.dsp.mel import MelStream
from rtgenre.dsp.resample import Resampler
from rtgenre.dsp.window import Window, Windower
from rtgenre.errors import (
    DeviceBusyError,
    DeviceLostError,
    DeviceNotFoundError,
    InputEmptyError,
    InputFormatError,
    NonFiniteSamplesError,
    RtgenreError,
)
from rtgenre.events import Event
from rtgenre.gate import CONTENT_HEAD, SILENCE, SPEECH, ContentDecision
from rtgenre.inference.base import Engine
from rtgenre.inference.streaming import FeatureStream, run_windows
from rtgenre.ring import Ring
from rtgenre.smoothing import Decision, Smoother
from rtgenre.sources.base import Source, backoff

#: Most seconds of audio one poll takes from a feed's ring: a backlog is worked off in bounded
#: steps (bounded temporaries, so memory does not grow with how far behind the analysis is).
READ_SECONDS = 1.0
#: The same for a file read as fast as possible (``classify``): fewer, longer engine calls (the encoder's
#: steps and the back end's batches) cost 9 % less CPU for a 5-minute file than 1 s polls (README, benchmarks).
OFFLINE_READ_SECONDS = 4.0
#: Seconds of audio per block that a file read as fast as possible delivers to its ring (a live source: 0.05).
#: Every block is a read and a ring write in Python; the reader runs ahead of the analysis whatever its blocks.
#: Paired runs of ``classify`` on a 5-minute file, 1 s against 0.05 s blocks: less CPU in 5 of 7 pairs (the same events).
OFFLINE_BLOCK_SECONDS = 1.0
#: Frames (128 ms) a feed with the step encoder lets arrive before encoding them ahead of its next window: a call
#: costs ~0.7 ms besides its frames, so calls of a few frames keep the latency low without doubling the work.
STEP_AHEAD = 8
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


def _mix(frames: np.ndarray) -> np.ndarray:
    """The mean of the channels of ``(n, channels)`` float32 frames, summed column by column (``mean(axis=1)`` is 4x slower for stereo)."""
    mono = frames[:, 0] + frames[:, 1]
    for c in range(2, frames.shape[1]):
        mono += frames[:, c]
    mono /= np.float32(frames.shape[1])
    return mono


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
    lookahead : {"wait", "provisional"} or None
        ``None``: windows carry their log-Mel frames (whole-window engines).
        Otherwise the Mel frames go to a :class:`FeatureStream` (streaming
        engines), windows carry none and are handed on as that look-ahead allows.
    step_ahead : int or None
        With a step encoder: encode every this many frames as they arrive
        (default :data:`STEP_AHEAD`: low latency for one feed), or ``None``: only
        when a window is due (the fewest engine calls: many feeds, ``monitor``).
    phase : float
        Where the stream's grids start, in [0, 1): its windows', a fraction of a hop
        (:class:`~rtgenre.dsp.window.Windower`), and with a patch encoder its patches', a
        fraction of a patch (:class:`~rtgenre.inference.streaming.FeatureStream`); a monitor's
        feeds differ (:func:`~rtgenre.dsp.window.feed_phase`).

    Attributes
    ----------
    content : ContentClassifier or None
        A streaming analyzer's short-window content classifier, when the
        model has one (:func:`rtgenre.content.for_card`): :func:`infer` uses
        it for the window's ``content`` probabilities.
    """

    def __init__(self, card: ModelCard, source_rate: int, hop_s: float, lookahead: str | None = None, step_ahead: int | None = STEP_AHEAD,
                 phase: float = 0.0) -> None:
        fe = card.frontend
        self.step_ahead = step_ahead
        self.resampler = Resampler(source_rate, fe.sample_rate)
        self.mel = MelStream(fe)
        self.level = LevelMeter(fe.hop_length)
        self.features = None if lookahead is None else FeatureStream(card, lookahead, phase)
        self.content: ContentClassifier | None = None if self.features is None else for_card(card)
        width = fe.n_mels if self.features is None else 0
        self.windower = Windower(card.window_frames, width, hop_s, fe.sample_rate, fe.hop_length, fe.n_fft, phase)
        self._waiting: list[Window] = []
        self.nonfinite = 0

    def process(self, frames: np.ndarray) -> list[Window]:
        """Feed ``(n, channels)`` float32 frames; return the windows completed by them.

        Non-finite samples are zeroed (and counted in :attr:`nonfinite`) before mixing to mono.
        """
        bad = ~np.isfinite(frames)
        if bad.any():
            self.nonfinite += int(bad.sum())
            frames = np.where(bad, np.float32(0.0), frames)
        mono = frames[:, 0] if frames.shape[1] == 1 else _mix(frames)
        return self._model_rate(self.resampler.process(mono))

    def flush(self) -> list[Window]:
        """End of stream: push the resampler's tail through; return the last windows."""
        windows = self._model_rate(self.resampler.flush())
        if self.features is not None:
            self.features.end()
            windows += self._waiting
            self._waiting = []
        return windows

    def reset(self) -> None:
        for stage in (self.resampler, self.mel, self.level, self.windower, self.features):
            if stage is not None:
                stage.reset()
        self._waiting = []
        self.nonfinite = 0

    def ahead(self) -> int | None:
        """Whether to encode ahead of the first window: the first frame it needs, or ``None``.

        Until a stream's first window is due, a streaming analyzer with at
        least one hop of frames the encoder can take
        (:attr:`~rtgenre.inference.streaming.FeatureStream.pending`) returns 0; the runner then encodes them now, so
        that the first window does not bring 7.5 s of encoder work at once.
        Afterwards the due windows drive the chunked encoder, one chunk per
        hop; the step encoder, which needs no context per call, takes every
        :attr:`step_ahead` frames as they arrive
        (the first frame the next window needs is returned), so that a due
        window waits only for its last few frames' encoding.
        """
        f = self.features
        if f is None:
            return None
        handed_on = self.windower.next_index - len(self._waiting)
        if f.stepping and handed_on > 0:
            if self.step_ahead is None or f.pending < self.step_ahead:
                return None
            end = self._waiting[0].end_frame if self._waiting else self.windower.window_end(self.windower.next_index)
            return end - self.windower.window_frames
        if handed_on > 0 or f.pending < self.windower.hop_frames:
            return None
        return 0

    def wanted(self) -> int:
        """Source frames that :meth:`process` needs before it can return a window or :meth:`ahead` can change; 0: any.

        A lower bound (see :meth:`Resampler.input_for`): fewer frames return
        nothing, so a caller may leave audio in its ring until this many have
        arrived and hand them over at once, without delaying any window.
        """
        w, f = self.windower, self.features
        if f is None:
            target = w.window_end(w.next_index)
        else:
            end = self._waiting[0].end_frame if self._waiting else w.window_end(w.next_index)
            target = end + (0 if f.provisional or f.ended else f.after)
            first = w.next_index == len(self._waiting)  # no window handed on yet
            if f.stepping and (first or self.step_ahead is not None):  # the step encoder takes one hop of frames before the first window, then every step_ahead frames
                target = min(target, f.fed + (math.ceil(w.hop_frames) if first else self.step_ahead))
            elif first:  # before the first window: encoding ahead is due one hop of settled frames on
                target = min(target, f.final + math.ceil(w.hop_frames) + f.after)
        return self.resampler.input_for(self.mel.samples_for(target))

    def _model_rate(self, samples: np.ndarray) -> list[Window]:
        if samples.size == 0:
            return []
        frames = self.mel.process(samples)
        block_ms, block_peak = self.level.process(samples)
        if self.features is None:
            return self.windower.process(frames, block_ms, block_peak)
        self.features.append(frames)
        self._waiting += self.windower.process(frames[:, :0], block_ms, block_peak)
        n = next((i for i, w in enumerate(self._waiting) if not self.features.ready(w.end_frame)), len(self._waiting))
        ready, self._waiting = self._waiting[:n], self._waiting[n:]
        return ready


def infer(engine: Engine, ready: list[tuple[Analyzer, Window]], ahead: list[Analyzer] | tuple[()] = ()) -> list[dict[str, np.ndarray]]:
    """Run the due windows of any number of feeds through the engine, batched.

    A streaming engine encodes the new frames of every feed that has due
    windows or is in ``ahead``, then runs the back end on the windows
    (:func:`~rtgenre.inference.streaming.run_windows`); a whole-window engine
    runs the windows' log-Mel frames.  Batches hold at most ``engine.max_batch``.
    A streaming analyzer with a short-window content classifier
    (:attr:`Analyzer.content`) replaces the back end's ``content`` output of
    its windows with the classifier's, on the window's newest frame features.

    Parameters
    ----------
    engine : Engine
    ready : list of (Analyzer, Window)
        Each window with the analyzer (feed) that cut it, each feed's in order.
    ahead : list of Analyzer
        Streaming analyzers to encode ahead of their next window (see :meth:`Analyzer.ahead`).

    Returns
    -------
    list of dict
        Head → probabilities, one per window, in order.
    """
    if engine.streaming:
        missing = [a for a, _ in ready if a.features is None]
        if missing:
            raise ValueError("a streaming engine needs analyzers made with a lookahead (their windows carry no Mel frames)")
        early = [(a.features, k) for a in ahead if (k := a.ahead()) is not None]
        results = run_windows(engine, [(a.features, w) for a, w in ready], early)
        for (a, w), probs in zip(ready, results):
            if a.content is not None:
                probs[CONTENT_HEAD] = a.content.process(a.features.window(w.end_frame, frames=a.content.frames))  # its newest frames only
        return results
    out: list[dict[str, np.ndarray]] = []
    for i in range(0, len(ready), engine.max_batch):
        chunk = [w for _, w in ready[i : i + engine.max_batch]]
        probs = engine.run(np.stack([w.mel for w in chunk]))
        out.extend({h: p[j] for h, p in probs.items()} for j in range(len(chunk)))
    return out


def lookahead_for(engine: Engine, lookahead: str = "wait") -> str | None:
    """The analyzers' ``lookahead`` for ``engine``: ``lookahead`` when it streams, else ``None``."""
    return lookahead if engine.streaming else None


@dataclass
class FeedStats:
    """Counters reported in a feed's ``stop`` event."""

    windows: int = 0
    predictions: int = 0
    silences: int = 0
    changes: int = 0
    overruns: int = 0
    dropped_samples: int = 0
    stalls: int = 0
    reconnects: int = 0
    missed_s: float = 0.0
    tops: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    content: collections.Counter = field(default_factory=collections.Counter)


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
    reconnect : bool
        A source that can be reopened (a device) and is lost is retried with
        backoff instead of ending the feed (URL sources reconnect by themselves).
    max_reconnects : int or None
        Consecutive failed attempts before the loss is final (None: never).
    lookahead : {"wait", "provisional"}
        How a streaming engine handles the newest frames (see
        :class:`~rtgenre.inference.streaming.FeatureStream`); :meth:`open` keeps
        it only when the engine streams (else :attr:`lookahead` is ``None``).
    hooks : sequence of callables
        ``hook(t, probs) -> dict`` per prediction (``probs``: the engine's outputs
        for the window ending at ``t``); the fields returned are added to the
        ``prediction`` event (e.g. ``similar``, :mod:`rtgenre.similarity.live`).
    step_ahead : int or None
        Passed to the :class:`Analyzer`: with a step encoder, encode every this
        many frames as they arrive, or (``None``) only when a window is due.
    read_seconds : float
        Most seconds of audio one poll takes from the ring (:data:`READ_SECONDS`;
        :data:`OFFLINE_READ_SECONDS` for a file read as fast as possible).
    phase : float
        Passed to the :class:`Analyzer`: where the feed's window grid (and patch grid) starts.
    """

    def __init__(self, name: str, source: Source, card: ModelCard, smoother: Smoother, hop_s: float, ring_seconds: float = 20.0,
                 midi: MidiInput | None = None, midi_weight: float = 1.0, reconnect: bool = False, max_reconnects: int | None = None,
                 lookahead: str | None = "wait", hooks: Sequence[PredictionHook] = (), step_ahead: int | None = STEP_AHEAD,
                 read_seconds: float = READ_SECONDS, phase: float = 0.0) -> None:
        self.name = name
        self.source = source
        self.card = card
        self.smoother = smoother
        self.hop_s = hop_s
        self.ring_seconds = ring_seconds
        self.midi = midi
        self.midi_weight = midi_weight
        self.lookahead = lookahead
        self.step_ahead = step_ahead
        self.phase = phase
        self.read_seconds = read_seconds
        self.hooks = tuple(hooks)
        self.stats = FeedStats()
        self._silent_since: float | None = None
        self._content_since = 0.0
        self._t_offset = 0.0
        self._nonfinite_before = 0
        self.reconnect = reconnect and hasattr(source, "reopen")
        self.max_reconnects = max_reconnects
        self._lost: tuple[float, str] | None = None  # (monotonic time, reason) while reconnecting
        self._attempt = 0
        self._retry_at = 0.0
        self.started = False
        self.finished = False
        #: The error that ended this feed (set by the session), None while it runs or after a clean end.
        self.error: RtgenreError | None = None

    def open(self, emit: Callable[[Event], None] | None = None) -> None:
        """Open the source (``emit`` gets what it reports while opening: failed attempts to reach a URL); then :meth:`bind`."""
        if emit is not None:
            self.source.notify = lambda notice: emit(self._notice_event(notice))
        try:
            self.source.open()
        finally:
            self.source.notify = None
        self._new_ring()

    def _new_ring(self) -> None:
        """The ring for the source as opened (its rate and channels); the next poll reads whatever it holds."""
        self.ring = Ring(max(1, int(self.ring_seconds * self.source.sample_rate)), self.source.channels)
        self._read_frames = max(1, int(self.read_seconds * self.source.sample_rate))
        self._wanted = 0

    def bind(self, engine: Engine) -> None:
        """Make the analyzer for the engine the feed runs on (after :meth:`open`, before :meth:`start`).

        A streaming engine gets analyzers that encode frames as they come,
        with this feed's :attr:`lookahead` (:func:`lookahead_for`); a
        whole-window engine gets Mel windows (and :attr:`lookahead` becomes ``None``).
        """
        self.lookahead = lookahead_for(engine, self.lookahead or "wait")
        self._new_analyzer()

    def _new_analyzer(self) -> None:
        self.analyzer = Analyzer(self.card, self.source.sample_rate, self.hop_s, self.lookahead, self.step_ahead, self.phase)

    def start(self) -> None:
        self.source.start(self.ring)
        self.started = True

    def stop(self) -> None:
        """Stop the source (bounded: sources never wait without a timeout) and the MIDI input."""
        try:
            self.source.stop()  # also releases what open() opened when the feed never started
        finally:
            if self.midi is not None:
                self.midi.stop()

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
            "streaming": self.lookahead,
            "lookahead_s": self._lookahead_s(),
        })

    def _lookahead_s(self) -> float:
        """Seconds of audio after a window's end that its event waits for (``wait`` look-ahead)."""
        if self.lookahead != "wait":
            return 0.0
        fe = self.card.frontend
        return round(self.card.split.encoder.context_after * fe.hop_length / fe.sample_rate, 4)

    def poll(self, emit: Callable[[Event], None]) -> tuple[list[Window], float]:
        """Read what the ring holds; return the completed windows and the read time.

        Overruns and the source's notices (stall, lost, recovered) are emitted
        here, in stream order.  At a gap (a reconnected source) the analysis is
        flushed and restarted, so that no window spans the gap, and ``t`` jumps
        by the seconds missed.  At the end of the stream the analyzer is
        flushed and :attr:`finished` is set; a source error is raised only once
        everything that arrived before it has been analysed.  Audio that cannot
        complete a window yet (:meth:`Analyzer.wanted`) is left in the ring, so
        that a feed costs one analysis step per hop rather than one per block.
        """
        if self._lost is not None:
            return self._retry(emit), time.monotonic()
        if hasattr(self.source, "check"):
            try:
                self.source.check()
            except DeviceLostError as exc:
                if not self.reconnect:
                    raise
                windows = self._process(self.ring.read()[0])  # the audio that arrived before the loss
                self._lose(exc.problem, emit)
                return windows, time.monotonic()
        ring, notices = self.ring, self.source.notices
        if ring.available() < self._wanted and not notices and not ring.closed:  # no window can be due yet: leave the audio in the ring
            return [], time.monotonic()
        frames, dropped = ring.read(self._read_frames)
        now = time.monotonic()
        if dropped:
            self.stats.overruns += 1
            self.stats.dropped_samples += dropped
            emit(Event("overrun", self.name, self._t(), {"dropped_samples": dropped, "total_dropped_samples": self.stats.dropped_samples}))
        windows: list[Window] = []
        done = 0  # frames of ``frames`` analysed so far
        while notices and notices[0].pos <= self.ring.read_pos:
            notice = notices.popleft()
            cut = max(done, min(len(frames), notice.pos - (self.ring.read_pos - len(frames))))
            windows += self._process(frames[done:cut])
            done = cut
            if notice.kind == "recovered":
                windows += self._restart_after_gap(notice.data["missed_s"])
            emit(self._notice_event(notice))
        windows += self._process(frames[done:])
        if self.ring.closed and self.ring.available() == 0 and not len(frames) and not notices:  # every producer closes its ring at the end
            windows += self._offset(self.analyzer.flush())
            self.finished = True
        self._wanted = min(self.analyzer.wanted(), self._read_frames, self.ring.capacity // 2)  # never wait for a full ring
        return windows, now

    def due_in(self) -> float:
        """Seconds before a poll can find audio to analyse: 0 unless the source is live and
        well (it then fills its ring at its sample rate, so the wait for :meth:`Analyzer.wanted` is known)."""
        if not self.source.live or self._lost is not None or self.source.notices or self.ring.closed:
            return 0.0
        return max(0.0, (self._wanted - self.ring.available()) / self.source.sample_rate)

    def _t(self) -> float:
        """Seconds of audio on the stream's clock so far (0 before the feed was opened)."""
        analyzer = getattr(self, "analyzer", None)
        if analyzer is None:
            return 0.0
        return self._t_offset + analyzer.mel.frames_done * self.card.frontend.hop_length / self.card.frontend.sample_rate

    def _lose(self, reason: str, emit: Callable[[Event], None]) -> None:
        """The source is gone: release it and schedule the first attempt to reopen it."""
        self.source.stop()
        self._lost, self._attempt = (time.monotonic(), reason), 1
        delay = backoff(1)
        self._retry_at = time.monotonic() + delay
        emit(Event("reconnect", self.name, self._t(), {"status": "lost", "attempt": 0, "reason": reason, "retry_in_s": round(delay, 2)}))

    def _retry(self, emit: Callable[[Event], None]) -> list[Window]:
        """Try to reopen a lost source when its attempt is due; restart the analysis after the gap once it works."""
        assert self._lost is not None
        if time.monotonic() < self._retry_at:
            return []
        lost_at, reason = self._lost
        try:
            self.source.reopen()  # type: ignore[attr-defined]
        except (DeviceNotFoundError, DeviceBusyError, DeviceLostError, InputFormatError) as exc:
            if self.max_reconnects is not None and self._attempt >= self.max_reconnects:
                raise DeviceLostError(f"{self.source.description} was lost ({reason}) and {self._attempt} reconnect attempt(s) did not bring it back",
                                      "Check that it is connected, then restart") from None
            delay = backoff(self._attempt + 1)
            emit(Event("reconnect", self.name, self._t(), {"status": "failed", "attempt": self._attempt, "reason": exc.problem, "retry_in_s": round(delay, 2)}))
            self._attempt += 1
            self._retry_at = time.monotonic() + delay
            return []
        missed = time.monotonic() - lost_at
        windows = self._restart_after_gap(missed)
        self._new_analyzer()  # the device may come back at another rate
        self._new_ring()
        self.source.start(self.ring)
        self.stats.reconnects += 1
        self.stats.missed_s += missed
        emit(Event("reconnect", self.name, self._t(), {"status": "recovered", "attempt": self._attempt, "reason": reason, "missed_s": round(missed, 3)}))
        self._lost = None
        return windows

    def _process(self, frames: np.ndarray) -> list[Window]:
        return self._offset(self.analyzer.process(frames)) if len(frames) else []

    def _offset(self, windows: list[Window]) -> list[Window]:
        """Windows on the stream's clock (which keeps counting across gaps)."""
        if not self._t_offset:
            return windows
        return [dataclasses.replace(w, t=w.t + self._t_offset) for w in windows]

    def _restart_after_gap(self, missed_s: float) -> list[Window]:
        """Finish the audio before a gap and start the analysis afresh after it (smoothing state is kept)."""
        last = self._offset(self.analyzer.flush())
        t = self._t()
        self._nonfinite_before += self.analyzer.nonfinite
        self.analyzer.reset()
        self._t_offset = t + missed_s
        self._silent_since = None
        return last

    def _notice_event(self, notice) -> Event:
        if notice.kind == "stall":
            self.stats.stalls += 1
            return Event("stall", self.name, self._t(), dict(notice.data))
        if notice.kind == "recovered":
            self.stats.reconnects += 1
            self.stats.missed_s += notice.data["missed_s"]
        return Event("reconnect", self.name, self._t(), {"status": notice.kind, **notice.data})

    def events_for(self, window: Window, probs: dict[str, np.ndarray], arrival: float) -> list[Event]:
        """Smooth one window's probabilities and turn them into events."""
        self.stats.windows += 1
        decision = self.smoother.process(probs, window.level_dbfs)
        gated = self.smoother.gate is not None
        if decision.silent:
            self.stats.silences += 1
            if gated:
                self.stats.content[SILENCE] += 1
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
        content = decision.content
        if content is not None:
            self.stats.content[content.top] += 1
            data["content"] = {"top": content.top, "p": round(content.p, 4), "state": self.smoother.gate.current,
                               "probs": {label: round(float(p), 4) for label, p in zip(self.smoother.gate.head.labels, content.probs)}}
        if self.midi is not None:
            data["midi"] = self._midi(arrival, data["heads"])
        for hook in self.hooks:
            data.update(hook(window.t, probs))
        events = [Event("prediction", self.name, window.t, data, arrival=arrival)]
        if content is not None and content.transition is not None:
            events.append(self._transition(window, content))
        for c in decision.changes:
            self.stats.changes += 1
            events.append(Event("change", self.name, window.t, {"head": c.head, "from": c.old, "to": c.new, "p": round(c.p, 4)}))
        return events

    def _transition(self, window: Window, content: ContentDecision) -> Event:
        """The ``talk`` or ``music`` event of a confirmed transition.

        ``since`` estimates when the new state began: the centre of the span
        the content of the first window of the confirming run was read from
        (the whole window, or the short-window classifier's newest frames);
        the start of the stream for the first state.
        """
        tr = content.transition
        clf = getattr(self, "analyzer", None) and self.analyzer.content
        fe = self.card.frontend
        span = self.card.window_seconds if clf is None else clf.frames * fe.hop_length / fe.sample_rate
        if tr.previous is None:
            since = max(0.0, window.t - self.card.window_seconds)
            self._content_since = since
        else:
            since = max(self._content_since, window.t - tr.hops_ago * self.hop_s - span / 2)
        data = {"since": round(since, 3), "from": tr.previous, "previous_s": None if tr.previous is None else round(since - self._content_since, 3),
                "content": content.top, "p": round(content.p, 4)}
        self._content_since = since
        return Event(tr.state, self.name, window.t, data)

    def _midi(self, now: float, heads: dict[str, Any]) -> dict[str, Any]:
        """The MIDI window ending ``now``, with the combined audio+MIDI mood."""
        from rtgenre.midi import combine_mood

        snap = self.midi.snapshot(now)
        if "mood" in heads:
            snap["combined_mood"] = combine_mood(heads["mood"]["probs"], snap["mood"], self.midi_weight)
        return snap

    def _heads(self, probs: dict[str, np.ndarray], decision: Decision) -> dict[str, Any]:
        heads = {}
        for head in self.smoother.heads:
            if head.name not in decision.smoothed:  # held while the content is speech
                continue
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
            "nonfinite_samples": self.nonfinite,
            "stalls": s.stalls,
            "reconnects": s.reconnects,
            "missed_s": round(s.missed_s, 3),
        }

    @property
    def nonfinite(self) -> int:
        """NaN/Inf samples zeroed so far (across restarts after gaps)."""
        analyzer = getattr(self, "analyzer", None)
        return self._nonfinite_before + (analyzer.nonfinite if analyzer is not None else 0)

    def deferred_error(self, ended: bool) -> RtgenreError | None:
        """The data problem to report once the feed stopped: a source error found at the
        end, NaN/Inf samples, or an input shorter than one window.

        Parameters
        ----------
        ended : bool
            The feed ran to the end of its input (not stopped early).
        """
        if ended and self.source.error is not None:
            return self.source.error
        if self.nonfinite:
            return NonFiniteSamplesError(
                f"{self.nonfinite} NaN/Inf samples in {self.source.description} were replaced by silence",
                "Check the producer of the audio; the results were computed with those samples zeroed",
            )
        if ended and self.started and self.stats.windows == 0:
            return InputEmptyError(
                f"{self.source.description} ended before one full {self.card.window_seconds:.2f} s window",
                "Give at least one window's worth of audio",
            )
        return None

    def summary(self) -> dict[str, Any]:
        """Per-feed summary: dominant label and share of windows per single-label head.

        With a content head, also the share of windows per content state
        (``content``, silence included) and the ``talk`` and ``music`` shares
        (music: ``music`` and ``speech over music``).
        """
        share = {}
        dominant = {}
        for head, counter in self.stats.tops.items():
            total = sum(counter.values())
            share[head] = {label: round(n / total, 4) for label, n in counter.most_common()}
            dominant[head] = counter.most_common(1)[0][0]
        out = {"windows": self.stats.windows, "predictions": self.stats.predictions, "dominant": dominant, "share": share}
        content, n = self.stats.content, self.stats.windows
        if self.smoother.gate is not None and n:
            talk = content[SPEECH]
            out["content"] = {label: round(k / n, 4) for label, k in content.most_common()}
            out["talk_share"] = round(talk / n, 4)
            out["music_share"] = round((n - talk - content[SILENCE]) / n, 4)
        return out


@dataclass
class FileAnalysis:
    """Raw (unsmoothed) per-window results of one file (``probs`` also holds ``hash`` when the engine returns it)."""

    path: Path
    t: np.ndarray
    level_dbfs: np.ndarray
    probs: dict[str, np.ndarray]
    duration: float = 0.0
    """Seconds of audio read."""


def analyze_file(path: str | Path, card: ModelCard, engine: Engine, hop_s: float = 0.5, block_s: float = 10.0, lookahead: str = "wait", live_block: int | None = None) -> FileAnalysis:
    """Offline analysis of one file with the same stages as the live path, without smoothing.

    Parameters
    ----------
    path : str or Path
        Any file the file source reads.
    card, engine
        The model and the engine that runs it.
    hop_s : float
        Seconds between windows.
    lookahead : {"wait", "provisional"}
        For a streaming engine, as for :class:`Analyzer`.
    live_block : int, optional
        Hand the audio to the analyzer, and run the windows it completes, in
        blocks of this many source frames, as a live source would (what
        ``provisional`` features are depends on it); default: as read.

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
    analyzer = Analyzer(card, source.sample_rate, hop_s, lookahead_for(engine, lookahead))
    source.start(ring)
    windows: list[Window] = []
    results: list[dict[str, np.ndarray]] = []

    def run(new: list[Window]) -> None:
        windows.extend(new)
        results.extend(infer(engine, [(analyzer, w) for w in new]))

    n_frames = 0
    try:
        while True:
            frames, _ = ring.read()
            if len(frames):
                n_frames += len(frames)
                step = live_block or len(frames)
                for i in range(0, len(frames), step):
                    run(analyzer.process(frames[i : i + step]))
            elif ring.closed and ring.available() == 0:
                break
            else:
                ring.wait_available(1, 0.01)
        run(analyzer.flush())
    finally:
        source.stop()
    if source.error is not None:
        raise source.error
    if not windows:
        raise InputEmptyError(f"{path} is shorter than one {card.window_seconds:.2f} s window", "Use files of at least that length")
    return FileAnalysis(
        path=Path(path),
        t=np.array([w.t for w in windows]),
        level_dbfs=np.array([w.level_dbfs for w in windows]),
        probs={name: np.stack([r[name] for r in results]) for name in results[0]},
        duration=n_frames / source.sample_rate,
    )
