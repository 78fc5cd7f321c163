"""The session's lifecycle in-process: whatever fails, feeds stop, the engine closes and every feed gets error/stop."""

from __future__ import annotations

import collections
import errno
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from engine_fixtures import export_test_model
from rtgenre.card import load_card
from rtgenre.errors import ExitCode, InputTruncatedError, InputUnreadableError, OutputFailedError
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
from rtgenre.pipeline import Feed
from rtgenre.session import Session
from rtgenre.sinks.base import EventBus, Sink
from rtgenre.smoothing import Smoother
from rtgenre.sources.file import FileSource


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return load_card(export_test_model(tmp_path_factory.mktemp("model")))


class Collect(Sink):
    def __init__(self, fail_after: int | None = None, err: int = errno.ENOSPC):
        self.events = []
        self.fail_after, self.err = fail_after, err

    def handle(self, event):
        if self.fail_after is not None and len(self.events) >= self.fail_after:
            raise OSError(self.err, "No space left on device")
        self.events.append(event)


class TrackedEngine(OnnxRuntimeEngine):
    closed = False

    def close(self):
        self.closed = True


def wav(path, seconds, seed=0):
    x = 0.1 * np.random.default_rng(seed).standard_normal((int(seconds * 16000), 1))
    sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
    return path


def feed(name, path, card):
    return Feed(name, FileSource(str(path)), card, Smoother(card.heads, 0.5, tau_s=0.0), 0.5)


def session(feeds, engine, sink, **kw):
    bus = EventBus()
    bus.add(sink, on_gone=lambda: None, capacity=100000)
    return Session(feeds, engine, bus, signals=False, **kw)


def by_stream(events, name):
    return [e.kind for e in events if e.stream == name]


def test_isolated_feed_failure_leaves_the_others_running(card, tmp_path):
    good = wav(tmp_path / "good.wav", 30)
    data = wav(tmp_path / "full.wav", 12, seed=1).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])  # the header promises 12 s, 4 s are there
    sink = Collect()
    s = session([feed("good", good, card), feed("cut", tmp_path / "cut.wav", card)], OnnxRuntimeEngine(card), sink, isolate=True)
    with pytest.raises(InputTruncatedError):  # the run's first error still decides the exit code
        s.run()
    assert by_stream(sink.events, "cut") == ["start", "error", "stop"]  # 4 s: no window, then the truncation
    cut_stop = [e for e in sink.events if e.stream == "cut" and e.kind == "stop"][0]
    assert cut_stop.data["reason"] == "truncated input"
    good_kinds = by_stream(sink.events, "good")
    assert good_kinds.count("prediction") == 45 and good_kinds[-1] == "stop" and "error" not in good_kinds  # every window of 30 s
    assert [e for e in sink.events if e.stream == "good" and e.kind == "stop"][0].data["reason"] == "end of input"
    # the good feed ran on after the cut one stopped
    assert sink.events.index([e for e in sink.events if e.stream == "cut" and e.kind == "stop"][0]) < len(sink.events) - 1


def test_without_isolation_one_failure_stops_every_feed(card, tmp_path):
    sink = Collect()
    s = session([feed("a", wav(tmp_path / "a.wav", 60), card), feed("b", tmp_path / "missing.wav", card)], OnnxRuntimeEngine(card), sink)
    with pytest.raises(InputUnreadableError):
        s.run()
    assert s.stop_reason == "input unreadable"
    stops = [e for e in sink.events if e.kind == "stop"]
    assert {e.stream for e in stops} == {"a", "b"}
    errors = [e for e in sink.events if e.kind == "error"]
    assert len(errors) == 1 and errors[0].data["code"] == ExitCode.INPUT_UNREADABLE


def test_engine_factory_failure_still_stops_feeds_and_reports(card, tmp_path):
    sink = Collect()
    f = feed("x", wav(tmp_path / "x.wav", 10), card)

    def broken_engine():
        raise InputUnreadableError("Engine could not be made", "Test")

    s = session([f], broken_engine, sink)
    with pytest.raises(InputUnreadableError):
        s.run()
    assert [e.kind for e in sink.events] == ["error", "stop"]
    assert f.source._file is None  # the opened file was released


def test_a_bug_is_reported_then_raised_and_the_engine_closed(card, tmp_path):
    sink = Collect()
    engine = TrackedEngine(card)
    f = feed("x", wav(tmp_path / "x.wav", 10), card)
    f.events_for = lambda *a: 1 / 0  # a bug in the analysis path
    s = session([f], lambda: engine, sink)
    with pytest.raises(ZeroDivisionError):
        s.run()
    assert engine.closed and not f.source._thread
    assert [e.kind for e in sink.events] == ["start", "error", "stop"]
    assert sink.events[1].data["code"] == ExitCode.INTERNAL and sink.events[2].data["reason"] == "internal error"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EBADF])
def test_output_write_error_ends_the_run(card, tmp_path, err):
    sink = Collect(fail_after=3, err=err)
    s = session([feed("x", wav(tmp_path / "x.wav", 60), card)], OnnxRuntimeEngine(card), sink)
    with pytest.raises(OutputFailedError) as e:
        s.run()
    assert e.value.code == ExitCode.OUTPUT_FAILED and errno.errorcode[err] in str(e.value)
    assert s.stop_reason == "output failed"
    assert len(sink.events) == 3  # nothing more was written after the failure


def test_stop_request_from_another_thread(card, tmp_path):
    sink = Collect()
    s = session([feed("x", wav(tmp_path / "x.wav", 600), card)], OnnxRuntimeEngine(card), sink)
    threading.Timer(1.0, s.request_stop, args=("quit",)).start()
    s.run()
    assert s.stop_reason == "quit" and sink.events[-1].kind == "stop" and sink.events[-1].data["reason"] == "quit"


class SlowEngine(OnnxRuntimeEngine):
    def run(self, windows):
        time.sleep(0.1 * len(windows))  # a slow model: 100 ms per window (20 s of audio in the ring: 4 s in one batch)
        return super().run(windows)


def test_stop_is_not_kept_waiting_behind_a_backlog(card, tmp_path):
    """Minutes of audio ready at once (a file read as fast as possible): a stop still ends the run within 2 s."""
    sink = Collect()
    s = session([feed("x", wav(tmp_path / "x.wav", 120), card)], SlowEngine(card), sink)
    stopped_at = []
    threading.Timer(1.5, lambda: (stopped_at.append(time.monotonic()), s.request_stop("interrupted"))).start()
    s.run()
    assert time.monotonic() - stopped_at[0] < 2.0
    stop = sink.events[-1]
    assert stop.kind == "stop" and stop.data["reason"] == "interrupted" and 0 < stop.data["counts"]["windows"] < 200


def test_a_step_takes_every_due_window_of_its_feeds():
    """A feed behind by several windows gets them all in one step (their frames are encoded in it
    anyway), for at most STEP_FEEDS feeds, the feeds shared out among the free workers; the windows
    left keep their order."""
    from rtgenre.session import STEP_FEEDS

    s = Session.__new__(Session)
    s.feeds = []  # nothing to encode ahead
    feeds = [object() for _ in range(STEP_FEEDS + 3)]
    queued = [(f, k, 0.0) for k in range(3) for f in feeds]  # three windows due per feed, as polls add them
    pending = collections.deque(queued)
    take, ahead = s._next_step(pending, busy={id(feeds[0])})
    assert ahead == [] and [f for f, _, _ in take] == [f for f, _, _ in queued if f in feeds[1 : STEP_FEEDS + 1]]
    assert list(pending) == [q for q in queued if q not in take]
    take, _ = s._next_step(collections.deque(queued), busy=set(), slots=2)  # two free workers: half the feeds each
    assert len({id(f) for f, _, _ in take}) == -(-len(feeds) // 2) and len(take) == 3 * -(-len(feeds) // 2)


class CountedFeed(Feed):
    """A feed that counts its polls and the windows they bring."""

    polls = windows = 0

    def poll(self, emit):
        windows, now = super().poll(emit)
        self.polls += 1
        self.windows += len(windows)
        return windows, now


def test_live_feeds_are_read_when_a_window_can_be_due_not_on_every_pass(card, tmp_path):
    """Twelve live feeds whose windows fall due at different moments: each is read about when its next
    window can be complete (and at least every IDLE_MAX_S), not on every pass of the loop that another
    feed's window brought about (which read each feed 36 times a second in this test)."""
    from rtgenre.session import IDLE_MAX_S

    path = wav(tmp_path / "live.wav", 30)
    hop = 0.25
    feeds = [CountedFeed(f"f{k}", FileSource(str(path), realtime=True), card, Smoother(card.heads, hop, tau_s=0.0), hop, phase=k / 12)
             for k in range(12)]
    sink = Collect()
    s = session(feeds, OnnxRuntimeEngine(card), sink)
    seconds = card.window_seconds + 3.0
    threading.Timer(seconds, s.request_stop, args=("quit",)).start()
    s.run()
    for f in feeds:
        assert f.windows >= 3.0 / hop - 2  # every window still comes, as its audio does
        assert f.polls <= seconds * (1 / IDLE_MAX_S + 2 / hop) + 5, (f.name, f.polls, f.windows)
