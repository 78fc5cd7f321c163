"""``rtgenre monitor --processes N``: feeds dealt over real worker processes, sinks in the parent.

The feeds' predictions equal one process's; a worker killed with SIGKILL is
replaced and only its feeds reconnect while the others go on; SIGTERM stops
every worker with a ``stop`` per feed; a parent killed with SIGKILL leaves no
worker behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cluster import equal_to_one_process, feeds_toml, run_once, same_predictions
from test_monitor import Monitor, music, wait_for
from test_monitor_sinks import scrape

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The small test CRNN (same window and heads as the shipped model, far cheaper to run)."""
    pytest.importorskip("torch")
    from engine_fixtures import export_test_model

    return export_test_model(tmp_path_factory.mktemp("model"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_feeds_in_two_processes_equal_one_process(model, tmp_path):
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 9.0, 180.0 + 55 * i) for i in range(4)}
    missing = ["--feed", f"missing={tmp_path / 'none.wav'}"]  # a feed that fails in its worker: its error reaches the parent
    rc, events, stderr = run_once([str(feeds_toml(tmp_path / "feeds.toml", model, songs, realtime=False)), *missing, "--processes", "2"])
    assert rc == 20 and "rtgenre: error: File" in stderr and "none.wav does not exist" in stderr, stderr  # the first feed error's exit code
    rc, alone, stderr = run_once([str(feeds_toml(tmp_path / "alone.toml", model, songs, realtime=False)), *missing])
    assert rc == 20, stderr
    starts = equal_to_one_process(events, alone, songs, "process")
    assert not any(alive(s["process"]) for s in starts.values())


def test_the_shipped_streaming_model_in_two_processes_equals_one_process(tmp_path):
    """The shipped model is split (step encoder + back end): every call of it reaches the worker's engine."""
    from rtgenre.card import resolve_model

    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 9.0, 180.0 + 55 * i) for i in range(2)}
    toml = feeds_toml(tmp_path / "feeds.toml", resolve_model(None), songs, realtime=False)
    (rc, events, stderr), (rc1, alone, stderr1) = run_once([str(toml), "--processes", "2"]), run_once([str(toml)])
    assert rc == 0 and rc1 == 0, stderr + stderr1
    same_predictions(events, alone, songs, atol=1e-4)


def test_a_killed_worker_is_replaced_and_only_its_feeds_reconnect(model, tmp_path):
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 60.0, 200.0 + 50 * i) for i in range(3)}
    run = Monitor([str(feeds_toml(tmp_path / "feeds.toml", model, songs)), "--processes", "2", "--metrics-port", "0"], tmp_path)
    try:
        starts = {n: run.until(lambda e, n=n: e["event"] == "start" and e["stream"] == n, 60) for n in songs}
        for name in songs:
            run.until(lambda e, n=name: e["event"] == "prediction" and e["stream"] == n, 60)
        workers = {s["process"] for s in starts.values()}
        assert len(workers) == 2 and run.proc.pid not in workers, starts
        victim = starts["f1"]["process"]  # dealt in turn: f0 and f2 to the first worker, f1 alone to the second
        assert {n for n, s in starts.items() if s["process"] == victim} == {"f1"}, starts
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        lost = run.until(lambda e: e["event"] == "reconnect" and e["stream"] == "f1" and e["status"] == "lost", 20)
        assert lost["process"] == victim and lost["to_process"] not in workers and "killed by SIGKILL" in lost["reason"], lost
        back = run.until(lambda e: e["event"] == "start" and e["stream"] == "f1" and e["process"] == lost["to_process"], 30)
        recovered = run.until(lambda e: e["event"] == "reconnect" and e["stream"] == "f1" and e["status"] == "recovered", 30)
        assert recovered["from_process"] == victim and recovered["process"] == back["process"] and recovered["missed_s"] < 30
        run.until(lambda e: e["event"] == "prediction" and e["stream"] == "f1" and e["t"] > back["t"], 30)
        time.sleep(2.0)  # the others go on after the replacement too
        metrics = scrape(re.search(r"metrics on (http://\S+)", run.stderr.read_text()).group(1))
        rc = run.interrupt(signal.SIGTERM, 30)
    finally:
        run.proc.kill()
    assert rc == 0, run.stderr.read_text()
    events = [e for _, e in run.events]
    assert {e["stream"] for e in events if e["event"] == "reconnect"} == {"f1"}
    for name in ("f0", "f2"):  # the other worker's feeds never stopped
        arrivals = [at for at, e in run.events if e["event"] == "prediction" and e["stream"] == name and at > killed_at - 1.0]
        assert len(arrivals) >= 4 and max(b - a for a, b in zip(arrivals, arrivals[1:])) < 2.0, name
    stops = {e["stream"]: e for e in events if e["event"] == "stop"}
    assert set(stops) == set(songs) and {s["reason"] for s in stops.values()} == {"interrupted"}, stops
    assert all(s.get("signal") == signal.SIGTERM.name for s in stops.values())
    # metrics: every feed's series and the workers' engine calls, in the parent's endpoint
    for name in songs:
        assert metrics["rtgenre_feed_predictions_total"][(("stream", name),)] >= 1
    assert sum(metrics["rtgenre_engine_batches_total"].values()) >= 1
    assert not any(alive(pid) for pid in workers | {back["process"]})


def test_a_killed_parent_leaves_no_worker(model, tmp_path):
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 30.0, 240.0 + 50 * i) for i in range(2)}
    run = Monitor([str(feeds_toml(tmp_path / "feeds.toml", model, songs)), "--processes", "2"], tmp_path)
    try:
        workers = {run.until(lambda e, n=n: e["event"] == "start" and e["stream"] == n, 60)["process"] for n in songs}
        assert all(alive(pid) for pid in workers)
    finally:
        run.proc.kill()
    run.proc.wait(10)
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 10), workers


@pytest.mark.parametrize("args, words", [(["--processes", "0"], "--processes 0 is out of range"),
                                         (["--processes", "2", "--ray", "127.0.0.1:1"], "--processes and --ray cannot be combined")])
def test_bad_processes_options_are_usage_errors(args, words, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "monitor", "--feed", f"a={tmp_path / 'a.wav'}", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_worker_that_cannot_make_its_engine_fails_the_run_once(model, tmp_path):
    """Every worker fails alike (here: no TensorRT): one error line and event, exit code 40, a stop per feed."""
    from rtgenre.inference.tensorrt import tensorrt_available

    if tensorrt_available()[0]:
        pytest.skip("TensorRT runs here")
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 9.0, 180.0 + 55 * i) for i in range(2)}
    rc, events, stderr = run_once([str(feeds_toml(tmp_path / "feeds.toml", model, songs, realtime=False)), "--processes", "2", "--engine", "tensorrt"])
    assert rc == 40 and stderr.count("rtgenre: error: The TensorRT engine cannot run here") == 1 and "Traceback" not in stderr, stderr
    assert "notice: worker process" not in stderr, stderr
    assert [(e["event"], e.get("code")) for e in events if e["event"] == "error"] == [("error", 40)]
    assert sorted(e["stream"] for e in events if e["event"] == "stop") == sorted(songs)
