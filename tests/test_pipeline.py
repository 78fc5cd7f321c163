"""The session's run loop: several feeds batched into one engine, overruns, and the offline path."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from engine_fixtures import export_test_model
from rtgenre.card import load_card
from rtgenre.events import Event
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
from rtgenre.pipeline import STEP_AHEAD, Analyzer, Feed, analyze_file
from rtgenre.session import Session
from rtgenre.sinks.base import EventBus, Sink
from rtgenre.smoothing import Smoother
from rtgenre.sources.file import FileSource


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return load_card(export_test_model(tmp_path_factory.mktemp("model")))


class Collect(Sink):
    def __init__(self):
        self.events: list[Event] = []

    def handle(self, event):
        self.events.append(event)


class CountingEngine(OnnxRuntimeEngine):
    """ONNX Runtime, recording the batch size of every call (and optionally slow)."""

    def __init__(self, card, delay_s: float = 0.0):
        super().__init__(card)
        self.batches: list[int] = []
        self.delay_s = delay_s

    def run(self, windows):
        self.batches.append(len(windows))
        time.sleep(self.delay_s)
        return super().run(windows)


class JitteryEngine(OnnxRuntimeEngine):
    """ONNX Runtime whose calls take a random extra 0-20 ms (so that concurrent steps finish in any order)."""

    def __init__(self, card):
        super().__init__(card)
        self._rng = np.random.default_rng(0)

    def _jitter(self):
        time.sleep(float(self._rng.uniform(0.0, 0.02)))

    def run(self, windows):
        self._jitter()
        return super().run(windows)

    def encode(self, mel, valid):
        self._jitter()
        return super().encode(mel, valid)

    def head(self, feats, patches=None):
        self._jitter()
        return super().head(feats, patches)


def noise_file(path, seconds, rate, seed, channels=1, amp=0.1):
    x = amp * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    sf.write(path, x.astype(np.float32), rate, subtype="FLOAT")
    return path


def run(feeds, engine, workers=0):
    bus, sink = EventBus(), Collect()
    bus.add(sink, on_gone=lambda: None, capacity=100000)
    Session(feeds, engine, bus, summaries=True, workers=workers).run()
    return sink.events


def feed(name, path, card, realtime=False, ring_seconds=20.0, step_ahead=STEP_AHEAD):
    return Feed(name, FileSource(str(path), realtime=realtime), card, Smoother(card.heads, 0.5, tau_s=0.0), 0.5, ring_seconds=ring_seconds,
                step_ahead=step_ahead)


def test_feeds_share_one_engine_in_batches(card, tmp_path):
    a = noise_file(tmp_path / "a.wav", 12, 44100, 1, channels=2)
    b = noise_file(tmp_path / "b.wav", 12, 16000, 2)
    engine = CountingEngine(card)
    both = run([feed("A", a, card), feed("B", b, card)], engine)
    assert max(engine.batches) > 1  # windows of both streams went through the engine together
    alone = {name: run([feed(name, path, card)], OnnxRuntimeEngine(card)) for name, path in (("A", a), ("B", b))}
    for name in ("A", "B"):
        mine = [e for e in both if e.stream == name and e.kind == "prediction"]
        ref = [e for e in alone[name] if e.kind == "prediction"]
        assert len(mine) == len(ref) == 9  # 12 s: windows end at frames 469, 500, ..., 719
        for x, y in zip(mine, ref):  # batching across streams changes nothing
            assert x.t == y.t
            for head in ("genre", "mood", "instruments"):
                np.testing.assert_allclose(list(x.data["heads"][head]["probs"].values()), list(y.data["heads"][head]["probs"].values()), atol=1e-4)
    assert {e.stream for e in both if e.kind == "stop"} == {"A", "B"}
    assert {e.data["file"] for e in both if e.kind == "summary"} == {"A", "B"}


def test_overruns_are_counted_exactly(card, tmp_path):
    """A live source with a reader slower than real time: drops are counted and reported, nothing else lost."""
    path = noise_file(tmp_path / "live.wav", 12, 16000, 3)
    f = feed("live", path, card, realtime=True, ring_seconds=0.5)
    events = run([f], CountingEngine(card, delay_s=1.5))
    overruns = [e for e in events if e.kind == "overrun"]
    stop = [e for e in events if e.kind == "stop"][0].data["counts"]
    assert overruns and stop["overruns"] == len(overruns)
    assert sum(e.data["dropped_samples"] for e in overruns) == stop["dropped_samples"] == overruns[-1].data["total_dropped_samples"]
    # every sample was either analysed or dropped: at 16 kHz the resampler passes samples through,
    # so the level meter counted exactly the samples that were kept
    assert f.analyzer.level.blocks_done == (12 * 16000 - stop["dropped_samples"]) // 256


def test_silence_events_and_held_state(card, tmp_path):
    rate = 16000
    x = np.concatenate([0.2 * np.random.default_rng(0).standard_normal(rate * 10), np.zeros(rate * 10)]).astype(np.float32)
    sf.write(tmp_path / "s.wav", x, rate, subtype="FLOAT")
    events = run([feed("s", tmp_path / "s.wav", card)], OnnxRuntimeEngine(card))
    kinds = [e.kind for e in events if e.kind in ("prediction", "silence")]
    assert kinds[0] == "prediction" and kinds[-1] == "silence"
    silences = [e for e in events if e.kind == "silence"]
    assert all(e.data["level_dbfs"] <= -120 + 1e-6 for e in silences[-3:])
    assert len({e.data["since"] for e in silences}) == 1 and silences[0].data["since"] == silences[0].t


def test_offline_path_equals_live_path(card, tmp_path):
    """analyze_file (offline, unsmoothed) and the runner give the same raw top labels."""
    path = noise_file(tmp_path / "o.wav", 15, 22050, 5, channels=2)
    offline = analyze_file(path, card, OnnxRuntimeEngine(card))
    online = [e for e in run([feed("o", path, card)], OnnxRuntimeEngine(card)) if e.kind == "prediction"]
    assert len(online) == len(offline.t)
    np.testing.assert_allclose([e.t for e in online], offline.t)
    labels = card.head("genre").labels
    assert [e.data["heads"]["genre"]["raw_top"] for e in online] == [labels[i] for i in offline.probs["genre"].argmax(1)]
    # with smoothing off, smoothed probabilities are the raw ones
    np.testing.assert_allclose([list(e.data["heads"]["genre"]["probs"].values()) for e in online], offline.probs["genre"], atol=1e-4)


def test_analyzer_chunking_invariance(card):
    rng = np.random.default_rng(7)
    x = (0.1 * rng.standard_normal((44100 * 10, 2))).astype(np.float32)
    whole = Analyzer(card, 44100, 0.5)
    w1 = whole.process(x) + whole.flush()
    pieces = Analyzer(card, 44100, 0.5)
    w2 = []
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 5000))
        w2 += pieces.process(x[i : i + n])
        i += n
    w2 += pieces.flush()
    assert len(w1) == len(w2) > 0
    for a, b in zip(w1, w2):
        assert a.t == b.t and a.level_dbfs == pytest.approx(b.level_dbfs, abs=1e-3)
        np.testing.assert_allclose(a.mel, b.mel, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rate, channels", [(44100, 2), (48000, 1), (16000, 1)])
@pytest.mark.parametrize("lookahead", [None, "wait", "provisional"])
def test_holding_audio_until_wanted_delays_no_window(card, rate, channels, lookahead):
    """Handing an analyzer its audio only once Analyzer.wanted() frames are there (what a feed's poll does)
    yields every window at the same block as handing it every block, with the same contents."""
    if lookahead is not None:
        card = load_card()  # the shipped model streams (split encoder/back end)
        if card.split is None:
            pytest.skip("the shipped model has no split encoder")
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal((rate * 12, channels))).astype(np.float32)
    block = rate // 20
    every, held = Analyzer(card, rate, 0.5, lookahead), Analyzer(card, rate, 0.5, lookahead)
    got_every, got_held, waiting, calls = [], [], [], 0
    for k, i in enumerate(range(0, len(x), block)):
        got_every += [(k, w) for w in every.process(x[i : i + block])]
        waiting.append(x[i : i + block])
        if sum(map(len, waiting)) >= held.wanted():
            got_held += [(k, w) for w in held.process(np.concatenate(waiting))]
            waiting, calls = [], calls + bool(got_held)
    assert len(got_every) == len(got_held) > 5
    for (k1, a), (k2, b) in zip(got_every, got_held):
        assert (k1, a.index, a.end_frame, a.t) == (k2, b.index, b.end_frame, b.t)
        assert a.level_dbfs == pytest.approx(b.level_dbfs, abs=1e-3)
        np.testing.assert_allclose(a.mel, b.mel, rtol=1e-4, atol=1e-4)
    if lookahead is None:  # a streaming analyzer also wants audio for its encoder, which no engine runs here
        assert calls < (len(x) - rate * 8) / block / 4  # after the first window: far fewer analysis steps than blocks


class StepCounting(OnnxRuntimeEngine):
    """ONNX Runtime counting the step encoder's calls and the frames they encode."""

    def __init__(self, card):
        super().__init__(card)
        self.calls, self.frames = 0, 0

    def step(self, mel, valid, state):
        self.calls += 1
        self.frames += int(valid.sum())
        return super().step(mel, valid, state)


def test_encoding_only_when_due_changes_no_prediction(tmp_path):
    """A monitor's feeds (``step_ahead=None``: the step encoder runs when a window is due) give the
    predictions of listen's (every STEP_AHEAD frames as they arrive), from fewer, longer encoder calls."""
    card = load_card()
    if card.split is None or card.split.step is None:
        pytest.skip("the shipped model has no step encoder")
    path = noise_file(tmp_path / "a.wav", 11, 44100, 5, channels=2)
    ahead, due = StepCounting(card), StepCounting(card)
    every = [e for e in run([feed("s", path, card, realtime=True)], ahead) if e.kind == "prediction"]
    when_due = [e for e in run([feed("s", path, card, realtime=True, step_ahead=None)], due) if e.kind == "prediction"]
    assert len(every) == len(when_due) >= 6
    for a, b in zip(every, when_due):
        assert a.t == b.t
        for head in ("genre", "mood"):
            np.testing.assert_allclose(list(a.data["heads"][head]["probs"].values()), list(b.data["heads"][head]["probs"].values()), atol=1e-4)
    assert due.frames == ahead.frames  # the same frames encoded, once each
    assert due.calls < ahead.calls  # after the first window: one call per hop instead of one per STEP_AHEAD frames


@pytest.mark.parametrize("streaming", [False, True])
def test_engine_workers_change_no_event(card, tmp_path, streaming):
    """Engine steps on two worker threads (feeds' steps overlapping each other and the front end) give
    every feed the same events, in the same order, as steps on the loop's own thread."""
    if streaming:
        card = load_card()  # the shipped model streams (split encoder/back end)
        if card.split is None:
            pytest.skip("the shipped model has no split encoder")
    paths = [noise_file(tmp_path / f"{i}.wav", 11, rate, i, channels=ch) for i, (rate, ch) in enumerate([(44100, 2), (16000, 1), (22050, 1), (48000, 2)])]
    inline = run([feed(f"s{i}", p, card) for i, p in enumerate(paths)], OnnxRuntimeEngine(card))
    threaded = run([feed(f"s{i}", p, card) for i, p in enumerate(paths)], JitteryEngine(card), workers=2)

    def per_stream(events):
        return {s: [(e.kind, e.t, {k: v for k, v in e.data.items() if k != "counts"}) for e in events if e.stream == s and e.kind != "start"] for s in {e.stream for e in events}}

    a, b = per_stream(inline), per_stream(threaded)
    assert a.keys() == b.keys() and len(a) == 4
    for name in a:
        assert [k for k, _, _ in a[name]] == [k for k, _, _ in b[name]]
        assert sum(k == "prediction" for k, _, _ in a[name]) >= 6
        for (kind, t1, d1), (_, t2, d2) in zip(a[name], b[name]):
            assert t1 == t2
            if kind == "prediction":  # probabilities are rounded to 4 decimals: values 1e-6 apart (other batches) may round one step apart
                for head in d1["heads"]:
                    np.testing.assert_allclose(list(d1["heads"][head]["probs"].values()), list(d2["heads"][head]["probs"].values()), atol=1.5e-4)


class CountingFeed(Feed):
    """A feed counting the session's looks at it."""

    polls = 0

    def poll(self, emit):
        self.polls += 1
        return super().poll(emit)


def test_idle_live_feed_is_not_polled_every_few_ms(card, tmp_path):
    """Between its windows a live (paced) feed is looked at when its audio can complete one, not every poll_s."""
    path = noise_file(tmp_path / "paced.wav", 9, 16000, 4)
    f = CountingFeed("paced", FileSource(str(path), realtime=True), card, Smoother(card.heads, 0.5, tau_s=0.0), 0.5)
    events = run([f], OnnxRuntimeEngine(card))
    assert sum(e.kind == "prediction" for e in events) == 3  # windows end at 7.52, 8.02, 8.52 s
    # 9 s at a 5 ms poll would be ~1800 looks; sleeping until the audio can be there (at most 0.1 s) is ~100-200
    assert f.polls < 400, f.polls
