"""Capacity of ``rtgenre monitor --ray`` on 1 and 2 Ray nodes of this machine; JSON output.

Run as ``python tools/bench_monitor.py --ray ...`` (or this file).  For each
node count (``--nodes``, default 1 and 2) it starts a local Ray cluster on
127.0.0.1 (``ray.cluster_utils.Cluster``: a head node and workers, each given
``num_cpus=1``, so one shard per node) and runs ``rtgenre monitor --ray`` with
N ``--feed`` file feeds paced in real time (N = ``--feeds``, ascending, until
the first N that is not sustained: latency p99 over ``--p99-limit-ms`` or an
overrun).  Per run, in its steady state (``--seconds`` from the feeds' second
window on): predictions per second, latency p50/p99 (at the driver's JSON
sink), overruns, the driver's CPU share and CPU per event, and the shards' CPU
(their Ray worker processes).  The
feeds sustained by 2 nodes over those of 1 node is the scaling ratio.

For the driver's per-event overhead it also runs the single-process monitor
(``rtgenre monitor`` without ``--ray``, ``--threads 1``) with the feeds 1 node
sustained: its CPU per event and latency beside the cluster runs' at that N.

The nodes are processes of this machine: "1 CPU each" is Ray's resource count,
not a core of their own; they share the machine's cores with everything else
on it (the load average before and after each run is recorded).

``--failover N`` measures a node failure instead: N feeds on 2 nodes, the worker
node's raylet killed once every feed predicts, and the seconds until each of its
feeds is given up, started on the head node and predicting again there.

Usage::

    python tools/bench_monitor.py --ray --out benchmarks/results/bench_ray.json [--seconds 30] [--feeds 2,4,6,8,12,16]
    python tools/bench_monitor.py --ray --failover 4 --out benchmarks/results/bench_ray_failover.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_pipeline import make_long_file  # noqa: E402
from benchutil import cpu_s, emit, sustained  # noqa: E402

from rtgenre.card import load_card  # noqa: E402

#: Ray resolves 127.0.0.1 to the machine's outward address unless told it runs without a real network.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def shard_cpu_s() -> float:
    """CPU seconds used so far by the processes that hold a shard actor (Ray names them ``ray::Shard...``)."""
    total = 0.0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::Shard"):
                    total += cpu_s(int(pid))
        except OSError:
            continue
    return total


def run_n(path: Path, n: int, seconds: float, hop: float, window_s: float, address: str | None) -> dict:
    """One ``monitor`` run (on the cluster at ``address``, or in one process) with ``n`` paced feeds of ``path``.

    The figures are those of the steady state: from the first prediction of the feeds' second window
    (start-up, Ray's connection and the first window's fill are left out) for ``seconds`` seconds.
    """
    cmd = [sys.executable, "-m", "rtgenre", "monitor", "--json", "--no-dashboard", "--threads", "1"]
    cmd += ["--ray", address] if address else []
    cmd += [f"--feed=f{i:03d}={path}" for i in range(n)]
    env = {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    with tempfile.NamedTemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env)

        def lines() -> list[str]:
            return Path(out.name).read_text().splitlines()

        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and not any('"prediction"' in x and json.loads(x)["t"] > window_s + hop / 2 for x in lines()):
            time.sleep(0.2)
        t_a, cpu_a, shards_a, seen_a = time.monotonic(), cpu_s(proc.pid), shard_cpu_s() if address else 0.0, len(lines())
        while proc.poll() is None and time.monotonic() - t_a < seconds:
            time.sleep(0.5)
        t_b, cpu_b, shards_b, seen_b = time.monotonic(), cpu_s(proc.pid), shard_cpu_s() if address else 0.0, len(lines())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        events = [json.loads(line) for line in lines()]
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"monitor failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    steady = events[seen_a:seen_b]
    preds = [e for e in steady if e["event"] == "prediction"]
    lat = np.array([e["latency_ms"] for e in preds])
    stops = [e for e in events if e["event"] == "stop"]
    wall, cpu = t_b - t_a, cpu_b - cpu_a
    starts = [e for e in events if e["event"] == "start"]
    return {
        "feeds": n,
        "mode": "ray" if address else "one process",
        "nodes_serving": len({e.get("node") for e in starts}) if address else None,
        "steady_s": round(wall, 2),
        "events": len(steady),
        "predictions_per_s": round(len(preds) / wall, 2),
        "expected_predictions_per_s": round(n / hop, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "overruns": sum(e["counts"].get("overruns", 0) for e in stops),
        "dropped_samples": sum(e["counts"].get("dropped_samples", 0) for e in stops),
        "monitor_cpu_share_of_one_core": round(cpu / wall, 3),
        "monitor_cpu_ms_per_event": round(cpu * 1000.0 / len(steady), 3) if steady else None,
        "shards_cpu_share_of_one_core": round((shards_b - shards_a) / wall, 3) if address else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def local_cluster(nodes: int) -> Iterator[Any]:
    """A Ray cluster of ``nodes`` nodes with ``num_cpus=1`` each on 127.0.0.1 (``ray.cluster_utils.Cluster``); its worker nodes."""
    from ray.cluster_utils import Cluster

    os.environ.update({**LOOPBACK_ENV, "PYTHONPATH": str(ROOT)})  # the nodes' processes inherit it
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(nodes - 1)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        cluster.shutdown()


def capacity(nodes: int, path: Path, feeds: list[int], args: argparse.Namespace, hop: float, window_s: float) -> dict:
    """The runs on a fresh ``nodes``-node cluster, up to the first N not sustained."""
    runs = []
    with local_cluster(nodes) as (cluster, _):
        for n in feeds:
            r = run_n(path, n, args.seconds, hop, window_s, cluster.address)
            r["sustained"] = sustained(r, args.p99_limit_ms)
            runs.append(r)
            print(json.dumps({"nodes": nodes, **r}), file=sys.stderr, flush=True)
            if not r["sustained"]:
                break
    return {"nodes": nodes, "runs": runs, "max_sustained_feeds": max((r["feeds"] for r in runs if r["sustained"]), default=0)}


def failover(path: Path, n: int, window_s: float) -> dict:
    """``n`` paced feeds on 2 nodes; the worker node's raylet is killed once every feed predicts.

    Seconds from the kill (by the events' ``wall``) until each moved feed's ``reconnect`` ``lost``, its new
    ``start`` and its first prediction there (which waits for a window of audio to fill).
    """
    def wall(e: dict) -> float:
        return datetime.strptime(e["wall"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()

    cmd = [sys.executable, "-m", "rtgenre", "monitor", "--json", "--no-dashboard", "--threads", "1"] + [f"--feed=f{i:03d}={path}" for i in range(n)]
    with local_cluster(2) as (cluster, workers), tempfile.NamedTemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd + ["--ray", cluster.address], stdout=out, stderr=err, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

        def events() -> list[dict]:
            return [json.loads(x) for x in Path(out.name).read_text().splitlines()]

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len({e["stream"] for e in events() if e["event"] == "prediction" and e["t"] > window_s}) < n:
            time.sleep(0.2)
        load, killed = os.getloadavg(), time.time()
        cluster.remove_node(workers[0], allow_graceful=False)
        moved: set[str] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ev = events()
            moved = {e["stream"] for e in ev if e["event"] == "reconnect" and e["status"] == "lost"}
            restarted = {e["stream"] for e in ev if e["event"] == "reconnect" and e["status"] == "recovered"}
            if moved and moved == restarted and all(any(e["event"] == "prediction" and e["stream"] == s and e["t"] < window_s + 1 and wall(e) > killed for e in ev) for s in moved):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        ev = events()
    per_feed = {}
    for name in sorted(moved):
        mine = [e for e in ev if e["stream"] == name and wall(e) > killed]
        lost = next(e for e in mine if e["event"] == "reconnect" and e["status"] == "lost")
        start = next(e for e in mine if e["event"] == "start")
        first = next((e for e in mine[mine.index(start):] if e["event"] == "prediction"), None)
        per_feed[name] = {"from_node": lost["node"], "to_node": start["node"], "lost_after_s": round(wall(lost) - killed, 2),
                          "started_after_s": round(wall(start) - killed, 2), "predicting_after_s": round(wall(first) - killed, 2) if first else None}
    stops = [e for e in ev if e["event"] == "stop"]
    return {"feeds": n, "moved": per_feed, "feeds_lost": n - len({e["stream"] for e in stops if e["reason"] == "interrupted"}),
            "back_within_s": max((f["predicting_after_s"] or math.inf for f in per_feed.values()), default=None),
            "load_average_at_kill": [round(x, 2) for x in load], "exit_code": proc.returncode}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Capacity of rtgenre monitor --ray on 1 and 2 local Ray nodes (JSON output).")
    ap.add_argument("--ray", action="store_true", help="(the switch of tools/bench_monitor.py that runs this benchmark)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each run (default 30)")
    ap.add_argument("--feeds", default="2,4,6,8,10,12,16,20,24", help="values of N, ascending (default 2,4,6,8,10,12,16,20,24)")
    ap.add_argument("--nodes", default="1,2", help="node counts (default 1,2)")
    ap.add_argument("--failover", type=int, default=0, metavar="N",
                    help="instead: N feeds on 2 nodes, kill the worker node, time until its feeds predict again on the other")
    ap.add_argument("--p99-limit-ms", type=float, default=500.0, help="a run is sustained with latency p99 at most this and no overrun (default 500)")
    args = ap.parse_args(argv)
    card = load_card()
    hop, feeds = 0.5, [int(x) for x in args.feeds.split(",")]
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python tools/bench_monitor.py --ray " + " ".join(a for a in sys.argv[1:] if a != "--ray"),
        "model": card.name,
        "hop_s": hop,
        "p99_limit_ms": args.p99_limit_ms,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.wav"
        result["input"] = make_long_file(path, args.seconds + 30 if not args.failover else 120)
        if args.failover:
            result["failover"] = failover(path, args.failover, card.window_seconds)
            emit(result, args.out)
            return
        result["clusters"] = [capacity(int(k), path, feeds, args, hop, card.window_seconds) for k in args.nodes.split(",")]
        by = {c["nodes"]: c["max_sustained_feeds"] for c in result["clusters"]}
        if by.get(1) and 2 in by:
            result["scaling_2_over_1_nodes"] = round(by[2] / by[1], 2)
        n = by.get(1) or feeds[0]
        alone = run_n(path, n, args.seconds, hop, card.window_seconds, None)
        alone["sustained"] = sustained(alone, args.p99_limit_ms)
        result["one_process_at_1_node_capacity"] = alone
        overhead = []
        for c in result["clusters"]:
            r = next((r for r in c["runs"] if r["feeds"] == n), None)
            if r is not None:
                overhead.append({
                    "nodes": c["nodes"], "feeds": n,
                    "driver_cpu_ms_per_event": r["monitor_cpu_ms_per_event"], "one_process_cpu_ms_per_event": alone["monitor_cpu_ms_per_event"],
                    "driver_cpu_share_of_one_core": r["monitor_cpu_share_of_one_core"],
                    "driver_share_of_all_cpu": round(r["monitor_cpu_share_of_one_core"] / (r["monitor_cpu_share_of_one_core"] + r["shards_cpu_share_of_one_core"]), 3),
                    "latency_ms_p50_ray_vs_one_process": [r["latency_ms_p50"], alone["latency_ms_p50"]],
                })
        result["driver_overhead_at_same_feeds"] = overhead
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["note"] = ("The nodes are processes of this one machine (2 cores shared with other agents' work and a training job: see the load "
                      "averages); each node has num_cpus=1 in Ray's accounting, not a core of its own. N feeds play the same file, started together. "
                      "The one-process run uses --threads 1 like each shard.")
    emit(result, args.out)


if __name__ == "__main__":
    main()
