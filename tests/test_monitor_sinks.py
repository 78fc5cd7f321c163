"""The monitor's outputs on their own: per-feed files and rotation, the metrics endpoint, the control room's frames."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from dashboard_driver import GENRES, prediction, start_event
from rtgenre.events import Event
from rtgenre.sinks.base import EventBus
from rtgenre.sinks.controlroom import ControlRoom
from rtgenre.sinks.files import FeedFiles
from rtgenre.sinks.metrics import CollectorRegistry, EngineMeter, MetricsServer, MetricsSink


def feed_events(name: str, n: int, genre: str = "rock", t0: float = 7.5) -> list[Event]:
    start = start_event()
    out = [Event(start.kind, name, 0.0, start.data)]
    for i in range(n):
        p = prediction(t0 + i * 0.5, genre, latency=20.0)
        out.append(Event(p.kind, name, p.t, p.data))
    return out


# -- per-feed files -----------------------------------------------------------------


def test_feed_files_append_per_stream(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"old":1}\n')
    files = FeedFiles(tmp_path, ["a", "b"])
    assert (tmp_path / "b.jsonl").exists()  # opened up front
    for e in feed_events("a", 2) + feed_events("b", 3):
        files.handle(e)
    files.close()
    a = (tmp_path / "a.jsonl").read_text().splitlines()
    b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert a[0] == '{"old":1}' and len(a) == 4 and {e["stream"] for e in b} == {"b"} and len(b) == 4


def test_unwritable_out_dir_is_a_usage_error(tmp_path):
    from rtgenre.errors import UsageError

    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="Cannot write to --out-dir"):
        FeedFiles(tmp_path / "file" / "sub", ["a"])


def test_sigusr1_rotation_loses_no_line(tmp_path):
    """Rename the file under a writing sink and send SIGUSR1, ten times: every line is in exactly one file."""
    files = FeedFiles(tmp_path, ["a"])
    bus = EventBus()
    bus.add(files, lambda: None, capacity=1_000_000)
    old = signal.signal(signal.SIGUSR1, lambda s, f: files.reopen())
    rotated = threading.Event()
    sent = []
    try:
        def produce():
            i = 0
            while not rotated.is_set():
                bus.publish(Event("overrun", "a", float(i), {"dropped_samples": i, "total_dropped_samples": i}))
                sent.append(i)
                i += 1
                if i % 50 == 0:
                    time.sleep(0.001)
        writer = threading.Thread(target=produce)
        writer.start()
        for k in range(10):
            assert wait_until(lambda: (tmp_path / "a.jsonl").exists() and (tmp_path / "a.jsonl").stat().st_size > 0)
            os.rename(tmp_path / "a.jsonl", tmp_path / f"a.jsonl.{k}")  # what logrotate does ...
            os.kill(os.getpid(), signal.SIGUSR1)                       # ... then its postrotate
        assert wait_until(lambda: (tmp_path / "a.jsonl").exists())
        rotated.set()
        writer.join()
    finally:
        rotated.set()
        bus.finish(timeout=10)
        signal.signal(signal.SIGUSR1, old)
    parts = [tmp_path / f"a.jsonl.{k}" for k in range(10)] + [tmp_path / "a.jsonl"]
    seen = [json.loads(line)["dropped_samples"] for p in parts for line in p.read_text().splitlines()]
    assert seen == sent and len(sent) > 100
    assert files.reopens == 10 and all(p.stat().st_size for p in parts)  # every file got lines


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# -- metrics ------------------------------------------------------------------------


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """Scrape and parse with prometheus_client's own parser: sample name → {sorted labels: value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_endpoint_per_feed_and_engine():
    registry = CollectorRegistry()
    sink = MetricsSink(registry)
    server = MetricsServer(registry, "127.0.0.1", 0)
    try:
        now = time.monotonic()
        for e in feed_events("radio1", 3):
            sink.handle(Event(e.kind, e.stream, e.t, e.data, e.wall, arrival=now - 0.03 if e.kind == "prediction" else None))
        for e in feed_events("radio2", 1, genre="jazz"):
            sink.handle(e)
        sink.handle(Event("overrun", "radio2", 8.0, {"dropped_samples": 512, "total_dropped_samples": 512}))
        p = prediction(8.5, "metal")
        sink.handle(Event(p.kind, "radio2", p.t, p.data))
        sink.handle(Event("silence", "radio2", 9.0, {"level_dbfs": -70.0, "peak_dbfs": -60.0, "since": 9.0}))
        sink.handle(Event("stop", "radio1", 9.0, {"reason": "error", "counts": {}}))

        class Engine:
            name = "fake"

            def run(self, batch):
                time.sleep(0.01)
                return {}

        meter = EngineMeter(Engine(), registry)
        meter.run([0] * 3)
        meter.run([0] * 5)
        assert meter.name == "fake"
        m = scrape(server.url)
    finally:
        server.close()
    r1, r2 = (("stream", "radio1"),), (("stream", "radio2"),)
    assert m["rtgenre_feed_predictions_total"] == {r1: 3.0, r2: 2.0}
    assert m["rtgenre_feed_windows_total"][r2] == 3.0                      # 2 predictions + 1 silence
    assert m["rtgenre_feed_overruns_total"][r2] == 1.0 and m["rtgenre_feed_dropped_samples_total"][r2] == 512.0
    assert m["rtgenre_feed_reconnects_total"] == {r1: 0.0, r2: 0.0}
    assert m["rtgenre_feed_state"][(("rtgenre_feed_state", "ended"), ("stream", "radio1"))] == 1.0
    assert m["rtgenre_feed_state"][(("rtgenre_feed_state", "live"), ("stream", "radio2"))] == 1.0
    assert m["rtgenre_feed_state"][(("rtgenre_feed_state", "live"), ("stream", "radio1"))] == 0.0
    assert m["rtgenre_feed_top_genre"] == {(("genre", "rock"), ("stream", "radio1")): 0.72, (("genre", "metal"), ("stream", "radio2")): 0.72}
    assert m["rtgenre_feed_latency_seconds_count"][r1] == 3.0 and 0.09 <= m["rtgenre_feed_latency_seconds_sum"][r1] < 1.0
    assert m["rtgenre_feed_latency_seconds_count"][r2] == 0.0  # no arrival time: not observed
    assert 0.0 <= m["rtgenre_feed_seconds_since_audio"][r2] < 5.0
    call = (("call", "run"),)
    assert m["rtgenre_engine_batches_total"][call] == 2.0 and m["rtgenre_engine_batch_size_sum"][call] == 8.0
    assert m["rtgenre_engine_inference_seconds_sum"][call] >= 0.02
    assert "process_resident_memory_bytes" in m


def test_metrics_port_in_use_is_a_usage_error():
    from rtgenre.errors import UsageError

    first = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    try:
        with pytest.raises(UsageError, match=f"Cannot serve metrics on 127.0.0.1:{first.port}"):
            MetricsServer(CollectorRegistry(), "127.0.0.1", first.port)
    finally:
        first.close()


# -- control room frames ----------------------------------------------------------------


def room(events, width=80, height=24, keys=()) -> tuple[ControlRoom, str]:
    c = Console(file=io.StringIO(), width=width, height=height, record=True, force_terminal=True, color_system="truecolor")
    cr = ControlRoom(c, on_quit=lambda: None)
    for i, e in enumerate(events):
        cr.state.process(e, 1000.0 + i * 0.01)
    for k in keys:
        cr.key(k)
    c.print(cr.render())
    return cr, c.export_text()


def many(n: int) -> list[Event]:
    events = []
    for i in range(n):
        events += feed_events(f"fm{i:02d}", 2, genre=GENRES[i % len(GENRES)])
    return events


def test_twelve_feeds_fit_80x24():
    events = many(12) + [Event("error", "fm03", 9.0, {"code": 24, "message": "ffmpeg failed on http://x/fm03.mp3", "fatal": True}),
                         Event("stop", "fm03", 9.0, {"reason": "stream failed", "counts": {}})]
    _, text = room(events)
    lines = text.splitlines()
    assert len(lines) == 24 and max(map(len, lines)) <= 80
    assert "12 feeds" in lines[0] and "11 live" in lines[0] and "1 ended" in lines[0]
    for i in (j for j in range(12) if j != 3):
        row = next(line for line in lines if f"fm{i:02d}" in line)
        assert GENRES[i % len(GENRES)] in row and "72%" in row and "happy" in row and "20ms" in row
    row = next(line for line in lines if "fm03" in line)
    assert "ended" in row and "error 24: ffmpeg failed on http" in row and len(row) <= 80
    assert "1–12 of 12" in lines[-1]


def test_the_top_row_is_selected_whatever_order_feeds_start_in():
    """Feeds start in any order (worker processes, slow URLs): the selection stays on the top row until a key moves it."""
    events = feed_events("fm02", 1) + feed_events("fm00", 1) + feed_events("fm01", 1)
    cr, text = room(events)
    assert cr.state.selected == "fm00" and "▸fm00" in text
    cr, _ = room(events, keys=[b"j"])
    assert cr.state.selected == "fm01"
    cr.state.process(feed_events("fm", 1)[0], 2000.0)  # a feed that sorts first, after a move: the selection stays
    assert cr.state.selected == "fm01"


def test_more_feeds_than_rows_scroll_with_the_selection_and_page():
    events = many(30)
    _, text = room(events)
    assert "fm00" in text and "fm20" in text and "fm21" not in text and "1–21 of 30" in text
    _, text = room(events, keys=[b"j"] * 25)  # the selection scrolls the list
    assert "fm25" in text and "fm04" not in text and "▸fm25" in text
    _, text = room(events, keys=[b"\x1b[6~"])  # PgDn
    assert "▸fm21" in text
    _, text = room(events, keys=[b"\x1b[6~", b"\x1b[6~", b"\x1b[5~"])  # to the end, one page back
    assert "▸fm08" in text


def test_sort_by_state_puts_trouble_first():
    events = many(4) + [Event("stall", "fm02", 9.0, {}), Event("stop", "fm01", 9.0, {"reason": "error", "counts": {}})]
    _, by_name = room(events)
    _, by_state = room(events, keys=[b"s"])
    order = lambda text: [w for line in text.splitlines()[2:6] for w in line.split() if w.lstrip("▸").startswith("fm")]  # noqa: E731
    assert order(by_name) == ["▸fm00", "fm01", "fm02", "fm03"]
    assert [w.lstrip("▸") for w in order(by_state)] == ["fm02", "fm01", "fm00", "fm03"] and "sort state" in by_state


def test_enter_opens_the_single_feed_dashboard_and_esc_goes_back():
    events = many(3)
    _, detail = room(events, keys=[b"j", b"\r"])
    assert "fm01 (2/3) live" in detail and "J A Z Z" in detail and "instruments" in detail and "timeline" in detail
    assert len(detail.splitlines()) == 24
    _, next_feed = room(events, keys=[b"j", b"\r", b"j"])
    assert "fm02 (3/3)" in next_feed and "C L A S S I C A L" in next_feed
    _, back = room(events, keys=[b"j", b"\r", b"\x1b"])
    assert "3 feeds" in back and "▸fm01" in back and "J A Z Z" not in back


def test_reconnect_and_recovery_change_the_state():
    events = many(2) + [Event("reconnect", "fm01", 8.0, {"status": "lost", "attempt": 0})]
    cr, text = room(events)
    assert cr.state.feeds["fm01"].state == "reconnecting" and "recon" in text
    p = prediction(20.0, "rock")
    cr.state.process(Event(p.kind, "fm01", p.t, p.data), 2000.0)
    assert cr.state.feeds["fm01"].state == "live"
