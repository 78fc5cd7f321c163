"""``rtgenre monitor`` end to end: several real-time feeds in one process, a failing feed isolated,
a metrics scrape, a log rotation mid-run, and the control room in tmux."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_device import needs_pulse, pulse  # noqa: F401  (the fixture)
from test_monitor_sinks import scrape
from tmux import TMUX, TmuxPane

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The small test CRNN (same window and heads as the shipped model, far cheaper to run)."""
    pytest.importorskip("torch")
    from engine_fixtures import export_test_model

    return export_test_model(tmp_path_factory.mktemp("model"))


def music(path: Path, seconds: float, base: float, sr: int = 22050) -> Path:
    """Stereo tones, chords and a beat: ``seconds`` long, pitch set by ``base``."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(base))
    tone = 0.3 * np.sin(2 * np.pi * base * t) + 0.15 * np.sin(2 * np.pi * 1.5 * base * t)
    beat = (np.sin(2 * np.pi * 2.0 * t) > 0.9) * rng.normal(0, 0.2, t.size)
    mono = (tone + beat).astype(np.float32)
    sf.write(path, np.stack([mono, 0.8 * mono], axis=1), sr, subtype="PCM_16")
    return path


def truncated(path: Path, seconds: float, keep_s: float) -> Path:
    """A WAV whose header announces ``seconds`` but whose data stops after ``keep_s``."""
    music(path, seconds, 300.0)
    data = path.read_bytes()
    path.write_bytes(data[: 44 + int(keep_s * 22050) * 4])
    return path


def wait_for(predicate, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_feeds_run_together_a_failing_feed_ends_alone_metrics_and_rotation(tmp_path, model):
    a = music(tmp_path / "a.wav", 16.0, 220.0)
    b = music(tmp_path / "b.wav", 16.0, 330.0)
    broken = truncated(tmp_path / "broken.wav", 16.0, keep_s=10.0)
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[defaults]\nhop = 0.5\nengine = "onnxruntime"\nmodel = "{model}"\n\n[[feed]]\nname = "a"\ninput = "{a}"\n\n'
                     f'[[feed]]\nname = "broken"\ninput = "{broken}"\n')
    out_dir, stdout = tmp_path / "out", tmp_path / "stdout.jsonl"
    cmd = [sys.executable, "-m", "rtgenre", "monitor", str(feeds), "--feed", f"b={b}", "--feed", f"missing={tmp_path / 'none.wav'}", "--json", "--no-dashboard",
           "--metrics-port", "0", "--out-dir", str(out_dir)]
    with open(stdout, "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, env=ENV)
    try:
        url = wait_for(lambda: (m := re.search(r"metrics on (http://\S+)", (tmp_path / "stderr").read_text())) and m.group(1), 30)
        assert url and url.startswith("http://127.0.0.1:"), (tmp_path / "stderr").read_text()
        # once every feed predicts: scrape, then rotate a's file and signal
        assert wait_for(lambda: {"a", "b", "broken"} <= {json.loads(x)["stream"] for x in lines_of(stdout) if '"prediction"' in x}, 40)
        metrics = scrape(url)
        os.rename(out_dir / "a.jsonl", out_dir / "a.jsonl.1")
        proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: len(lines_of(out_dir / "a.jsonl")) > 2, 10)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "stderr").read_text()
    events = [json.loads(x) for x in lines_of(stdout)]

    # metrics: per-feed series, parsed by prometheus_client's parser
    for name in ("a", "b", "broken"):
        assert metrics["rtgenre_feed_predictions_total"][(("stream", name),)] >= 1
        assert metrics["rtgenre_feed_state"][(("rtgenre_feed_state", "live"), ("stream", name))] == 1.0
    assert sum(metrics["rtgenre_engine_batches_total"].values()) >= 1

    # the broken feed ends alone with its error and stop; the others go on to their end
    by = {name: [e for e in events if e["stream"] == name] for name in ("a", "b", "broken")}
    err = [e for e in by["broken"] if e["event"] == "error"]
    assert len(err) == 1 and err[0]["code"] == 22 and "truncated" in err[0]["message"], err
    assert by["broken"][-1]["event"] == "stop" and by["broken"][-1]["reason"] == "truncated input"
    broken_stop = events.index(by["broken"][-1])
    for name in ("a", "b"):
        assert by[name][0]["event"] == "start" and by[name][-1]["event"] == "stop" and by[name][-1]["reason"] == "end of input"
        assert not [e for e in by[name] if e["event"] == "error"]
        preds = [e for e in by[name] if e["event"] == "prediction"]
        assert any(events.index(p) > broken_stop for p in preds)  # still predicting after the other feed ended
        ts = [p["t"] for p in preds]
        assert np.max(np.diff(ts)) < 0.55 and ts[-1] >= 15.0  # not one hop missed (t is on the 16 ms frame grid)
    # a feed that cannot even be opened ends alone, at once
    missing = [e for e in events if e["stream"] == "missing"]
    assert [e["event"] for e in missing] == ["error", "stop"] and missing[0]["code"] == 20 and missing[1]["reason"] == "input unreadable"
    assert events.index(missing[1]) < events.index(next(e for e in events if e["event"] == "prediction"))
    assert rc == 20, stderr  # the first feed error's exit code
    assert "rtgenre: error: File" in stderr and "none.wav does not exist" in stderr

    # per-feed files: stdout's lines of each feed, split across the rotated and the new file, none lost
    for name in ("a", "b", "broken"):
        got = [json.loads(x) for x in lines_of(out_dir / f"{name}.jsonl.1") + lines_of(out_dir / f"{name}.jsonl")]
        strip = lambda e: {k: v for k, v in e.items() if k != "latency_ms"}  # noqa: E731  (measured by each output)
        assert [strip(e) for e in got] == [strip(e) for e in by[name]], name
    assert lines_of(out_dir / "a.jsonl.1") and lines_of(out_dir / "a.jsonl")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.parametrize("processes", [1, 2])
def test_control_room_in_tmux_80x24(tmp_path, model, processes):
    songs = [music(tmp_path / f"s{i}.wav", 40.0, 200.0 + 60 * i) for i in range(4)]
    argv = [sys.executable, "-m", "rtgenre", "monitor", "--engine", "onnxruntime", "--model", str(model), "--processes", str(processes)]
    argv += [f"--feed=feed{i}={p}" for i, p in enumerate(songs)]
    with TmuxPane(argv, 80, 24, tmp_path, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as pane:
        rows = lambda s: [line for line in s.splitlines() if re.match(r"^.feed\d ", line)]  # noqa: E731
        screen = pane.wait_for(lambda s: len(rows(s)) == 4 and all("%" in r for r in rows(s)), 40)
        assert "4 feeds" in screen and len(rows(screen)) == 4 and all("live" in r and "%" in r for r in rows(screen)), f"{screen}\n{pane.stderr()}"
        assert len(screen.splitlines()) <= 24 and max(map(len, screen.splitlines())) <= 80
        pane.send_keys("j")
        assert "▸feed1" in pane.wait_for(lambda s: "▸feed1" in s, 10)
        pane.send_keys("Enter")
        detail = pane.wait_for(lambda s: "feed1 (2/4)" in s and "instruments" in s and "timeline" in s, 10)
        assert "feed1 (2/4)" in detail and "health" in detail, detail
        pane.send_keys("Escape")
        back = pane.wait_for(lambda s: "4 feeds" in s, 10)
        assert "4 feeds" in back and "▸feed1" in back
        pane.send_keys("q")
        assert pane.wait_exit(20) == 0, pane.stderr()


class Monitor:
    """``rtgenre monitor ... --json`` in a subprocess; its events read as they come, with their arrival time."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.stderr = tmp_path / "monitor.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "rtgenre", "monitor", "--json", "--no-dashboard", *args],
                                         stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env={**(env or os.environ), "PYTHONPATH": str(ROOT)})
        self.events: list[tuple[float, dict]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append((time.monotonic(), json.loads(line)))

    def until(self, predicate, timeout: float = 40.0) -> dict:
        found = wait_for(lambda: next((e for _, e in self.events if predicate(e)), None), timeout, 0.05)
        assert found is not None, f"not seen in {timeout} s; stderr: {self.stderr.read_text()}"
        return found

    def interrupt(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        """Send ``sig``; the exit code once the monitor has ended and its events are read."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return rc


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg and ffprobe")
def test_url_feed_dropped_and_restored_reconnects_alone(tmp_path, model):
    """Two live URL feeds and a paced file: one server goes down and comes back; only its feed reconnects,
    the other two never stop predicting."""
    from streamserver import StreamServer, encode_mp3

    mp3 = encode_mp3(20.0)
    song = music(tmp_path / "song.wav", 60.0, 262.0)
    with StreamServer(mp3) as flaky, StreamServer(mp3, port=0) as steady:
        run = Monitor(["--model", str(model), "--feed", f"flaky={flaky.url}", "--feed", f"steady={steady.url}",
                       "--feed", f"file={song}", "--metrics-port", "0"], tmp_path)
        try:
            for name in ("flaky", "steady", "file"):
                run.until(lambda e, n=name: e["event"] == "prediction" and e["stream"] == n)
            flaky.down()
            down_at = time.monotonic()
            lost = run.until(lambda e: e["event"] == "reconnect" and e["stream"] == "flaky")
            time.sleep(2.0)
            flaky.up()
            back = run.until(lambda e: e["event"] == "reconnect" and e["stream"] == "flaky" and e["status"] == "recovered")
            run.until(lambda e: e["event"] == "prediction" and e["stream"] == "flaky" and e["t"] > back["t"])
            up_at = time.monotonic()
            metrics = scrape(re.search(r"metrics on (http://\S+)", run.stderr.read_text()).group(1))
            rc = run.interrupt()
        finally:
            run.proc.kill()
    assert rc == 0, run.stderr.read_text()
    assert lost["status"] in ("lost", "failed") and back["missed_s"] > 1.0
    events = [e for _, e in run.events]
    assert {e["stream"] for e in events if e["event"] in ("reconnect", "stall", "error")} == {"flaky"}
    for name in ("steady", "file"):
        # predictions kept coming, on the wall clock, all through flaky's outage
        arrivals = [at for at, e in run.events if e["event"] == "prediction" and e["stream"] == name]
        during = [at for at in arrivals if down_at - 1.0 <= at <= up_at]
        assert len(during) >= 2 * (up_at - down_at) * 0.8, (name, len(during), up_at - down_at)
        assert max(b - a for a, b in zip(during, during[1:])) < 2.0, name
    stops = {e["stream"]: e for e in events if e["event"] == "stop"}
    assert set(stops) == {"flaky", "steady", "file"} and {s["reason"] for s in stops.values()} == {"interrupted"}
    assert stops["flaky"]["counts"]["reconnects"] == 1 and stops["steady"]["counts"]["reconnects"] == 0
    assert metrics["rtgenre_feed_reconnects_total"] == {(("stream", "flaky"),): 1.0, (("stream", "steady"),): 0.0, (("stream", "file"),): 0.0}
    for name in ("flaky", "steady", "file"):
        assert metrics["rtgenre_feed_state"][(("rtgenre_feed_state", "live"), ("stream", name))] == 1.0


@needs_pulse
def test_device_feed_beside_a_file_feed(pulse, make_tone, tmp_path, model):
    """A FEEDS.toml with a capture device (a private PulseAudio, paplay looping a tone) and a file."""
    tone = make_tone("tone.wav", seconds=12.0, freqs=(220.0, 330.0), amps=(0.4, 0.2))
    played, _ = sf.read(tone, dtype="float32", always_2d=True)
    expected = float(10 * np.log10(np.mean(np.mean(played[: int(7.5 * 48000)], axis=1, dtype=np.float64) ** 2)))
    pulse.play(tone, loop=True)
    song = music(tmp_path / "song.wav", 30.0, 262.0)
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[defaults]\nmodel = "{model}"\n[[feed]]\nname = "desk"\ndevice = "pulse"\n[[feed]]\nname = "song"\ninput = "{song}"\n')
    run = Monitor([str(feeds)], tmp_path, env=pulse.env)
    try:
        for name in ("desk", "song"):
            run.until(lambda e, n=name: e["event"] == "prediction" and e["stream"] == n)
        rc = run.interrupt()
    finally:
        run.proc.kill()
    assert rc == 0, run.stderr.read_text()
    events = [e for _, e in run.events]
    start = next(e for e in events if e["event"] == "start" and e["stream"] == "desk")
    assert "pulse" in start["source"]
    desk = [e for e in events if e["event"] == "prediction" and e["stream"] == "desk"]
    assert all(abs(p["level_dbfs"] - expected) < 1.5 for p in desk), ([p["level_dbfs"] for p in desk], expected)
    assert {e["stream"] for e in events if e["event"] == "stop"} == {"desk", "song"}


def test_engine_threads_by_default_share_the_cores_until_there_is_a_process_per_core():
    """Without --workers: the cores shared out between the processes; none (engine steps on each
    process's main thread) once every core has a process of its own (README, Capacity, v14)."""
    from rtgenre.monitor import default_workers

    assert [default_workers(1, cores=2), default_workers(2, cores=2), default_workers(3, cores=2)] == [2, 0, 0]
    assert [default_workers(1, cores=8), default_workers(2, cores=8), default_workers(3, cores=8), default_workers(8, cores=8)] == [8, 4, 2, 0]
