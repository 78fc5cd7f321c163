"""``rtgenre monitor --ray`` on a real two-node Ray cluster on loopback (``ray.cluster_utils.Cluster``,
started here: a head node and a worker node, one CPU each).

Six real-time paced file feeds produce predictions from both nodes, equal to the single-process run;
killing the worker node's raylet moves its feeds to the head node (back within 30 s); a driver that
stops stops every shard.  Skipped when Ray (the ``[cluster]`` extra) is not installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_monitor import Monitor, music, wait_for
from test_monitor_sinks import scrape

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Ray resolves 127.0.0.1 to the machine's outward address unless told it runs without a real network.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The small test CRNN (same window and heads as the shipped model, far cheaper to run)."""
    pytest.importorskip("torch")
    from engine_fixtures import export_test_model

    return export_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node on 127.0.0.1, one CPU each; their workers import this checkout."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in (*LOOPBACK_ENV, "PYTHONPATH")}
    os.environ.update({**LOOPBACK_ENV, "PYTHONPATH": str(ROOT)})  # the nodes' processes inherit it
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        worker = c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        c.wait_for_nodes()
        yield c, worker
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shard_processes() -> list[str]:
    """Processes that hold a shard actor (Ray names them ``ray::Shard...``), from /proc."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::Shard"):
            found.append(f"{pid} {cmdline.decode(errors='replace')}")
    return found


def feeds_toml(path: Path, model: Path, songs: dict[str, Path], realtime: bool = True) -> Path:
    path.write_text(f'[defaults]\nmodel = "{model}"\nengine = "onnxruntime"\nrealtime = {str(realtime).lower()}\n'
                    + "".join(f'[[feed]]\nname = "{n}"\ninput = "{p}"\n' for n, p in songs.items()))
    return path


def run_once(args: list[str], env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "monitor", "--json", "--no-dashboard", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, timeout=180)
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines()], proc.stderr


def monitor_on(c, model: Path, tmp_path: Path, songs: dict[str, Path], until: str, extra: tuple[str, ...] = ()) -> Monitor:
    """``rtgenre monitor --ray`` on cluster ``c`` with ``songs``, once every feed has had an event of kind ``until``."""
    run = Monitor([str(feeds_toml(tmp_path / "feeds.toml", model, songs)), "--ray", c.address, *extra], tmp_path, env={**os.environ, **LOOPBACK_ENV})
    try:
        for name in songs:
            run.until(lambda e, n=name: e["event"] == until and e["stream"] == n, 60)
    except BaseException:
        run.proc.kill()
        raise
    return run


def arrival(run: Monitor, event: dict) -> float:
    """When the test read ``event`` from the monitor's stdout."""
    return next(at for at, e in run.events if e is event)


def predictions(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == "prediction" and e["stream"] == name]


def same_predictions(events: list[dict], alone: list[dict], names, atol: float = 1e-5) -> None:
    """Each of ``names`` has the same predictions in ``events`` as in ``alone`` (one process's run): times, top labels, probabilities."""
    for name in names:
        got, want = predictions(events, name), predictions(alone, name)
        assert len(got) >= 3 and [p["t"] for p in got] == [p["t"] for p in want], name
        for g, w in zip(got, want):
            assert {h: v["top"] for h, v in g["heads"].items()} == {h: v["top"] for h, v in w["heads"].items()}, name
            for head in g["heads"]:
                np.testing.assert_allclose(list(g["heads"][head]["probs"].values()), list(w["heads"][head]["probs"].values()), atol=atol)


def equal_to_one_process(events: list[dict], alone: list[dict], songs: dict, where: str) -> dict[str, dict]:
    """A sharded run's ``events`` against one process's (``alone``), both with a feed ``missing`` that cannot be opened:
    its error and stop reach the driver, every song is served from two places (``where``: ``node`` or ``process``),
    ends at its end and predicts the same.  Returns the songs' ``start`` events."""
    lost = [e for e in events if e["stream"] == "missing"]
    assert [(e["event"], e.get("code"), e.get("reason")) for e in lost] == [("error", 20, None), ("stop", None, "input unreadable")], lost
    starts = {e["stream"]: e for e in events if e["event"] == "start"}
    assert set(starts) == set(songs) and len({s[where] for s in starts.values()}) == 2, starts  # both served
    stops = {e["stream"]: e for e in events if e["event"] == "stop" and e["stream"] in songs}
    assert set(stops) == set(songs) and {s["reason"] for s in stops.values()} == {"end of input"}
    same_predictions(events, alone, songs)
    return starts


def test_six_feeds_on_two_nodes_equal_one_process(cluster, model, tmp_path):
    c, _ = cluster
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 9.0, 180.0 + 55 * i) for i in range(6)}
    missing = ["--feed", f"missing={tmp_path / 'none.wav'}"]  # a feed that fails on its node: its error crosses to the driver
    rc, events, stderr = run_once([str(feeds_toml(tmp_path / "feeds.toml", model, songs)), *missing, "--ray", c.address], LOOPBACK_ENV)
    assert rc == 20 and "rtgenre: error: File" in stderr and "none.wav does not exist" in stderr, stderr  # the first feed error's exit code
    rc, alone, stderr = run_once([str(feeds_toml(tmp_path / "alone.toml", model, songs, realtime=False)), *missing])
    assert rc == 20, stderr
    starts = equal_to_one_process(events, alone, songs, "node")
    assert all(s["node"].startswith("127.0.0.1/") for s in starts.values())
    assert all(0 < p["latency_ms"] < 2000 for name in songs for p in predictions(events, name))
    # the driver stopped: no shard is left on the cluster
    assert wait_for(lambda: not shard_processes(), 15), shard_processes()


def test_a_lost_node_moves_its_feeds_and_a_stopped_driver_stops_every_shard(cluster, model, tmp_path):
    c, worker = cluster
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 60.0, 200.0 + 70 * i) for i in range(4)}
    run = monitor_on(c, model, tmp_path, songs, "prediction", ("--metrics-port", "0"))
    try:
        url = re.search(r"metrics on (http://\S+)", run.stderr.read_text()).group(1)

        def served(m: dict) -> bool:  # the nodes' engine calls and every feed's predictions (the driver's sinks run on threads of their own)
            return sum(m.get("rtgenre_engine_batches_total", {}).values()) > 0 and \
                {dict(k)["stream"] for k, v in m.get("rtgenre_feed_predictions_total", {}).items() if v > 0} == set(songs)
        assert wait_for(lambda: served(scrape(url)), 10), scrape(url)
        starts = {e["stream"]: e["node"] for _, e in run.events if e["event"] == "start"}
        assert len(set(starts.values())) == 2, starts
        head = next(n for n in starts.values() if n.endswith("/" + c.head_node.node_id[:8]))
        moved = {name for name, node in starts.items() if node != head}
        assert len(moved) == 2, starts
        c.remove_node(worker, allow_graceful=False)  # SIGKILL of the worker node's raylet and its processes
        killed_at = time.monotonic()
        back_at = {}
        for name in moved:
            lost = run.until(lambda e, n=name: e["event"] == "reconnect" and e["stream"] == n and e["status"] == "lost", 30)
            assert lost["node"] == starts[name] and lost["to_node"] == head, lost
            back = run.until(lambda e, n=name: e["event"] == "start" and e["stream"] == n and e["node"] == head, 30)
            started = arrival(run, back)
            back_at[name] = arrival(run, run.until(lambda e, n=name, t0=started: e["event"] == "prediction" and e["stream"] == n and arrival(run, e) > t0, 30))
        assert max(back_at.values()) - killed_at < 30.0, (back_at, killed_at)
        for name in set(songs) - moved:  # the feeds that stayed never stopped
            arrivals = [at for at, e in run.events if e["event"] == "prediction" and e["stream"] == name and at > killed_at - 1.0]
            assert len(arrivals) >= 2 and max(b - a for a, b in zip(arrivals, arrivals[1:])) < 3.0, name
        rc = run.interrupt(signal.SIGTERM, 30)  # SIGTERM too stops the run cleanly (ray.init installs a handler of its own)
    finally:
        run.proc.kill()
    assert rc == 0, run.stderr.read_text()
    events = [e for _, e in run.events]
    recovered = [e for e in events if e["event"] == "reconnect" and e["status"] == "recovered"]
    assert {e["stream"] for e in recovered} == moved and all(e["node"] == head and e["missed_s"] < 30.0 for e in recovered)
    stops = {e["stream"]: e for e in events if e["event"] == "stop"}
    assert set(stops) == set(songs) and {s["reason"] for s in stops.values()} == {"interrupted"}, stops
    assert all(s.get("signal") == signal.SIGTERM.name for s in stops.values())
    assert wait_for(lambda: not shard_processes(), 15), shard_processes()


def test_a_killed_driver_takes_its_shards_with_it(cluster, model, tmp_path):
    """SIGKILL leaves the driver no time to stop anything: Ray ends the actors of a job whose driver is gone."""
    c, _ = cluster
    songs = {f"f{i}": music(tmp_path / f"s{i}.wav", 30.0, 240.0 + 50 * i) for i in range(2)}
    run = monitor_on(c, model, tmp_path, songs, "start")
    try:
        assert shard_processes()
    finally:
        run.proc.kill()
    run.proc.wait(10)
    assert wait_for(lambda: not shard_processes(), 30), shard_processes()


def test_the_model_travels_as_bytes(tmp_path):
    """What the object store carries rebuilds the shipped (split, streaming) model's card in a folder of its own."""
    from rtgenre.card import load_card, resolve_model
    from rtgenre.cluster import materialise, model_files

    shipped = load_card()
    files = model_files(resolve_model(None))
    card = materialise(files, tmp_path)
    assert card.onnx_path.parent == tmp_path.resolve() and card.split.encoder.onnx_path.parent == tmp_path.resolve()
    assert (card.name, card.labels(), card.onnx_sha256) == (shipped.name, shipped.labels(), shipped.onnx_sha256)  # load_card checked the SHA-256s


def test_an_unreachable_cluster_is_one_line_and_exit_code_40(tmp_path, make_tone):
    pytest.importorskip("ray")
    tone = make_tone("tone.wav", seconds=9.0, rate=16000)
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, events, stderr = run_once(["--feed", f"a={tone}", "--ray", f"127.0.0.1:{port}"])
    assert rc == 40 and stderr.strip().splitlines()[-1].startswith(f"rtgenre: error: Cannot reach the Ray cluster at 127.0.0.1:{port}"), stderr
    assert [(e["event"], e.get("code"), e.get("reason")) for e in events] == [("error", 40, None), ("stop", None, "engine unavailable")]


def test_the_listening_runtime_does_not_import_ray(tmp_path, make_tone):
    """A monitor run without --ray never loads Ray (the [cluster] extra is optional)."""
    tone = make_tone("tone.wav", seconds=9.0, rate=16000)
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[defaults]\nrealtime = false\n[[feed]]\nname = "a"\ninput = "{tone}"\n')
    code = (f"import sys, rtgenre.cli; rc = rtgenre.cli.main(['monitor', '--json', '--no-dashboard', {str(feeds)!r}]); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"prediction"' in proc.stdout
