"""Event queues, the JSON Lines sink and the event schema."""

import io
import json
import threading
import time

from rtgenre.events import Event
from rtgenre.sinks.base import EventBus, EventQueue, Sink
from rtgenre.sinks.jsonl import JsonLinesSink


def ev(kind, i=0):
    return Event(kind, "main", float(i), {"i": i})


def test_queue_drops_oldest_predictions_only():
    q = EventQueue(capacity=4)
    q.put(ev("start"))
    for i in range(10):
        q.put(ev("prediction", i))
    q.put(ev("change", 99))
    q.put(ev("stop", 100))
    q.close()
    got = []
    while (e := q.get(0)) is not None:
        got.append((e.kind, e.data["i"]))
    assert got[0] == ("start", 0)
    assert got[-2:] == [("change", 99), ("stop", 100)]
    preds = [i for k, i in got if k == "prediction"]
    assert preds == sorted(preds) and preds[-1] == 9  # the newest survive, in order
    assert q.dropped == 10 - len(preds)


def test_queue_never_drops_critical_events():
    q = EventQueue(capacity=2)
    for i in range(5):
        q.put(ev("error", i))
    assert q.dropped == 0 and len(q._items) == 5


class Stalled(Sink):
    """A sink whose reader stalls until released."""

    def __init__(self):
        self.release = threading.Event()
        self.seen = []

    def handle(self, event):
        self.release.wait()
        self.seen.append(event)


def test_stalled_sink_never_blocks_publisher():
    bus = EventBus()
    sink = Stalled()
    bus.add(sink, on_gone=lambda: None, capacity=8)
    bus.publish(ev("start"))
    t0 = time.monotonic()
    for i in range(5000):
        bus.publish(ev("prediction", i))
    bus.publish(ev("stop"))
    assert time.monotonic() - t0 < 5  # publishing never waited for the stalled reader
    sink.release.set()
    bus.finish(timeout=5)
    kinds = [e.kind for e in sink.seen]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert bus.dropped == 5000 - kinds.count("prediction") > 0


def test_jsonl_line_format_and_latency():
    buf = io.BytesIO()
    sink = JsonLinesSink(buf)
    sink.handle(Event("prediction", "s1", 7.52, {"heads": {}, "x": float("nan")}, arrival=time.monotonic() - 0.05))
    line = buf.getvalue().decode()
    assert line.endswith("\n") and line.count("\n") == 1
    d = json.loads(line)
    assert d["event"] == "prediction" and d["stream"] == "s1" and d["t"] == 7.52
    assert d["wall"].endswith("Z") and "T" in d["wall"]
    assert d["x"] is None  # NaN is not JSON
    assert 50 <= d["latency_ms"] < 5000


def test_event_round_trip():
    e = Event("change", "feed-2", 12.25, {"head": "genre", "from": "rock", "to": "jazz", "p": 0.61})
    back = Event.from_dict(json.loads(e.to_json()))
    assert back == e
