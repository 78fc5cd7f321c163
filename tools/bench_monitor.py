"""Capacity of ``rtgenre monitor`` on this machine: N live feeds paced in real time; JSON output.

For N = 1, 5, 10, 20, 30, ... (``--feeds``) it runs ``rtgenre monitor`` with N
``--feed`` file feeds paced in real time (the same WAV for every feed: real
music from ``../shared/data/real-music`` when present, else the generated demo
song) for ``--seconds`` seconds (``--processes``: in that many worker
processes), then reports per N: the CPU share of the monitor and its workers,
peak RSS (the monitor's own, and all its processes' together, sampled),
prediction latency p50/p99 (after the first window of every feed), overruns,
predictions per second, and the engine's mean batch size (scraped
from the run's own Prometheus endpoint with ``prometheus_client.parser``).  It
stops after the first N whose latency p99 passes ``--p99-limit-ms`` or that
overruns.

Per N it also gives the monitor's whole CPU time per window analysed and the
model's share of it: the share of the compute bound the monitor would reach
with the machine to itself, whatever else runs on it now; ``_steady`` figures
count only from :data:`STEADY_AFTER_S` seconds after the first window on
(without the start: imports, model loading, the first window's encoding).

In the same run (just before and after each N, averaged per N; the median over the N counts) it measures the
engine's own cost (CPU ms of model work per
window: one window per call, ONNX Runtime on the calling thread, median of
that thread's CPU time) and from it the *compute bound*: the feeds the
machine could carry if the model were the only work,
``cores / (ms per window / 1000 × windows per second per feed)``.  The result
says how close the sustained feeds come to it (and to the same bound from the
model's cost with every core running it at once, ``_all_cores``), and the load average before
and after each step (other processes on a shared machine).  On a shared
machine a monitor that cannot keep up gets less than all cores; the most CPU
it obtained in a run it could not sustain gives a second bound, on the cores
it actually obtained.

``--ray`` runs the cluster benchmark instead (:mod:`bench_ray`: 1 vs 2 Ray nodes).
``--paired-with DIR`` compares two versions of the code instead: for every N
it runs the monitor of the checkout in DIR (e.g. ``git worktree add --detach
/tmp/old <commit>``) and then this tree's, back to back, so that both see the
same load; every N is run whatever the outcome.  ``--paired-workers N``
compares this tree's monitor at ``--workers N`` with it at ``--workers``
instead.  Paired runs are repeated ``--repeat`` times, the two sides' order
alternating, and each run carries the model's cost per window measured just
before it (this machine's speed drifts by a third from one minute to the next).

Usage::

    python tools/bench_monitor.py --out benchmarks/results/bench_monitor.json [--seconds 45] [--feeds 1,5,10,20,30,40] [--threads 1 --workers 2] [--processes 2] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_pipeline import REAL_MUSIC, make_long_file  # noqa: E402
from benchutil import emit, status_kb, sustained, timed_ms, tree_cpu_s, tree_rss_kb  # noqa: E402

from rtgenre.card import ModelCard, load_card  # noqa: E402


def model_work(card: ModelCard) -> tuple[Any, Callable[[], None]]:
    """One window's model work as a call, ONNX Runtime on 1 thread (the calling thread): ``(engine, work)``.

    A streaming (split) model's work per window is one hop's: the encoder the monitor runs on the 32
    frames a 0.5 s hop completes (31.25 on average) — the step encoder from a running stream's state
    when the card has one, else the chunked encoder with its context — plus the back end on one
    window of features (on the window's statistics where the card has a ``split.stats`` graph: what
    the monitor then runs; the statistics themselves are the monitor's work, as the copy of the
    window's features was before).
    """
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.inference.streaming import window_statistics

    engine = OnnxRuntimeEngine(card, threads=1)
    rng = np.random.default_rng(0)
    if engine.streaming:
        enc, step = card.split.encoder, card.split.step
        frames = 32 if step is not None else 32 + enc.context_before + enc.context_after
        mel = rng.standard_normal((1, frames, card.frontend.n_mels)).astype(np.float32) + 2.0
        valid = np.ones((1, frames), np.float32)
        start = rng.standard_normal((1, card.window_frames + 2 * frames, card.frontend.n_mels)).astype(np.float32) + 2.0
        if step is not None:
            feats, state = engine.step(start, np.ones(start.shape[:2], np.float32), [np.zeros((1, *s), np.float32) for _, _, s in step.state])

            def encode() -> None:
                engine.step(mel, valid, state)
        else:
            feats = engine.encode(start, np.ones(start.shape[:2], np.float32))

            def encode() -> None:
                engine.encode(mel, valid)
        feats = np.ascontiguousarray(feats[:, : card.window_frames])
        if engine.head_stats:  # the back end on the window's statistics (card split.stats)
            feats = window_statistics(feats, card.split.stats.pool)
        patches = np.zeros((1, 2 * card.split.patch.dim), np.float32) if card.split.patch is not None else None

        def work() -> None:
            encode()
            engine.head(feats, patches)
    else:
        x = rng.standard_normal((1, card.window_frames, card.frontend.n_mels)).astype(np.float32) + 2.0

        def work() -> None:
            engine.run(x)
    return engine, work


def engine_cost(card, n: int = 40, hop_s: float = 0.5) -> dict:
    """Model work per window (:func:`model_work`) as CPU time of the calling thread (what other
    processes on the machine do not change) and wall time, medians of ``n`` calls; a model with a
    patch encoder adds its patch call's median times the share of a patch one ``hop_s`` hop completes."""
    engine, work = model_work(card)
    for _ in range(5):
        work()
    cpu, wall = [], []
    for _ in range(n):
        c0, w0 = time.thread_time(), time.perf_counter()
        work()
        cpu.append((time.thread_time() - c0) * 1000.0)
        wall.append((time.perf_counter() - w0) * 1000.0)
    cpu, wall = float(np.median(cpu)), float(np.median(wall))
    out = {"threads": 1, "runs": n, "streaming": engine.streaming, "encoder": "step" if engine.streaming and card.split.step is not None else
           ("chunked" if engine.streaming else None)}
    patch = card.split.patch if engine.streaming else None
    if patch is not None:  # one patch call per patch.frames frames, spread over the hops (a 0.5 s hop: 31.25 / 187 of one)
        mel = np.random.default_rng(1).standard_normal((1, patch.frames, card.frontend.n_mels)).astype(np.float32) + 2.0
        share = hop_s * card.frontend.sample_rate / card.frontend.hop_length / patch.frames
        patch_cpu = float(np.median(timed_ms(lambda: engine.patch(mel), max(5, n // 4), clock=time.thread_time)))
        patch_wall = float(np.median(timed_ms(lambda: engine.patch(mel), max(5, n // 4))))
        out.update(patch_cpu_ms=round(patch_cpu, 2), patch_share_per_window=round(share, 4))
        cpu, wall = cpu + share * patch_cpu, wall + share * patch_wall
    return {**out, "cpu_ms_per_window_median": round(float(cpu), 2), "wall_ms_per_window_median": round(float(wall), 2)}


def _cost_from(model: str | None, start_at: float) -> float:
    """:func:`engine_cost` (its CPU median) in a process of its own, from the wall-clock time ``start_at`` on."""
    card = load_card(model)
    model_work(card)  # loads ONNX Runtime and the model before the start
    time.sleep(max(0.0, start_at - time.time()))
    return engine_cost(card, n=200)["cpu_ms_per_window_median"]


def engine_cost_all_cores(model: str | None, cores: int) -> dict:
    """:func:`engine_cost` in ``cores`` processes at once: the model's work per window when every core
    runs it, as in a monitor that uses them all (the cores share caches and memory bandwidth)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        costs = list(pool.map(_cost_from, [model] * cores, [time.time() + 15.0] * cores))
    return {"processes": cores, "cpu_ms_per_window_median": round(float(np.median(costs)), 2), "per_process": costs}


#: Seconds after the first window from which a run's steady CPU per window is counted (startup and model loading excluded).
STEADY_AFTER_S = 3.0


def _wall(event: dict) -> float:
    """An event's ``wall`` time as Unix seconds."""
    return datetime.strptime(event["wall"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def scrape(url: str) -> dict[str, float]:
    """Sum of every sample of each name (over its labels) on a Prometheus endpoint."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def run_n(path: Path, n: int, seconds: float, hop: float, threads: int, window_s: float, workers: int = 1, root: Path = ROOT, processes: int = 1,
          model: str | None = None) -> dict:
    """One ``monitor`` run with ``n`` paced feeds of ``path`` (the code of the checkout ``root``); its figures
    (CPU and memory of the monitor and its worker processes together)."""
    cmd = [sys.executable, "-m", "rtgenre", "monitor", "--json", "--no-dashboard", "--metrics-port", "0", "--threads", str(threads), "--workers", str(workers)]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    if model is not None:
        cmd += ["--model", model]
    cmd += [f"--feed=f{i:03d}={path}" for i in range(n)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=root, env=env)
        url, peak_kb, peak_all_kb, metrics, steady = None, 0, 0, {}, None
        while proc.poll() is None and time.monotonic() - t0 < seconds:
            peak_kb, peak_all_kb = max(peak_kb, status_kb(proc.pid, "VmHWM")), max(peak_all_kb, tree_rss_kb(proc.pid))
            if steady is None and time.monotonic() - t0 >= window_s + STEADY_AFTER_S:
                steady = (time.time(), tree_cpu_s(proc.pid))
            if url is None:
                err.seek(0)
                m = re.search(r"metrics on (http://\S+)", err.read())
                url = m.group(1) if m else None
            time.sleep(0.5)
        if url is not None and proc.poll() is None:
            metrics = scrape(url)
        steady_end = (time.time(), tree_cpu_s(proc.pid))
        peak_kb = max(peak_kb, status_kb(proc.pid, "VmHWM"))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0), err.seek(0)
        events = [json.loads(line) for line in out.read().splitlines()]
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"monitor failed ({proc.returncode}): {stderr.strip()}")
    preds = [e for e in events if e["event"] == "prediction"]
    windows = sum(1 for e in events if e["event"] in ("prediction", "silence"))
    firsts = {}  # each feed's first window (the encoding of its start): its t, left out of the latency
    for e in events:
        if e["event"] in ("prediction", "silence"):
            firsts.setdefault(e["stream"], e["t"])
    lat = np.array([e["latency_ms"] for e in preds if e["t"] > firsts[e["stream"]]])
    stops = [e for e in events if e["event"] == "stop"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    steady_windows = 0 if steady is None else sum(1 for e in events if e["event"] in ("prediction", "silence") and steady[0] <= _wall(e) <= steady_end[0])
    batches = metrics.get("rtgenre_engine_batches_total", 0.0)
    return {
        "feeds": n,
        "wall_s": round(wall, 2),
        "predictions": len(preds),
        "predictions_per_s": round(len(preds) / max(wall - window_s, 1e-9), 2),
        "expected_predictions_per_s": round(n / hop, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "latency_ms_max": round(float(lat.max()), 1) if lat.size else None,
        "overruns": sum(e["counts"].get("overruns", 0) for e in stops),
        "dropped_samples": sum(e["counts"].get("dropped_samples", 0) for e in stops),
        "dropped_events": max((e["counts"].get("dropped_events", 0) for e in stops), default=0),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "cpu_share_of_machine": round(cpu / wall / (os.cpu_count() or 1), 3),
        "cpu_ms_per_window": round(cpu * 1000.0 / windows, 1) if windows else None,
        "cpu_ms_per_window_steady": round((steady_end[1] - steady[1]) * 1000.0 / steady_windows, 2) if steady_windows else None,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_rss_mb_all_processes": round(peak_all_kb / 1024, 1),
        "engine_batches": int(batches),
        "engine_mean_batch_size": round(metrics.get("rtgenre_engine_batch_size_sum", 0.0) / batches, 2) if batches else None,
        "engine_seconds_per_window_ms": round(1000 * metrics.get("rtgenre_engine_inference_seconds_sum", 0.0) / max(metrics.get("rtgenre_engine_batch_size_sum", 0.0), 1), 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "stop_reasons": sorted({e["reason"] for e in stops}),
    }


def main() -> None:
    if "--ray" in sys.argv[1:]:  # the same on 1 and 2 Ray nodes (tools/bench_ray.py)
        from bench_ray import main as bench_ray

        return bench_ray()
    ap = argparse.ArgumentParser(description="Capacity of rtgenre monitor: N live feeds (JSON output).")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--seconds", type=float, default=45.0, help="length of each run (default 45)")
    ap.add_argument("--feeds", default="1,2,3,5,10,15,20,25,30,40,60", help="values of N, in order (default 1,2,3,5,10,15,20,25,30,40,60)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per engine call of the monitor (default: 1)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="engine threads of the monitor, --workers (default: all cores)")
    ap.add_argument("--processes", type=int, default=1, help="worker processes of the monitor, --processes (default: 1)")
    ap.add_argument("--music", type=Path, default=REAL_MUSIC, help=f"folder of MP3 clips played back to back by every feed (default: {REAL_MUSIC})")
    ap.add_argument("--p99-limit-ms", type=float, default=500.0, help="stop after the first N over this latency p99 (default 500)")
    ap.add_argument("--all", action="store_true", help="run every N even after one was not sustained (CPU figures of larger N on a busy machine)")
    ap.add_argument("--model", default=None, help="the model the monitor runs (default: the shipped default)")
    ap.add_argument("--paired-with", type=Path, default=None, metavar="DIR",
                    help="compare with the code of the checkout DIR: for every N its monitor, then this tree's (module docstring)")
    ap.add_argument("--paired-workers", type=int, default=None, metavar="N",
                    help="compare with this tree's monitor at --workers N instead of another checkout")
    ap.add_argument("--repeat", type=int, default=1, help="paired runs: every N this many times, the two sides' order alternating (default 1)")
    args = ap.parse_args()
    card = load_card(args.model)
    hop, cores = 0.5, os.cpu_count() or 1
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores, "python": platform.python_version()},
        "command": "python tools/bench_monitor.py " + " ".join(sys.argv[1:]),
        "model": card.name,
        "hop_s": hop,
        "monitor_threads": args.threads,
        "monitor_workers": args.workers,
        "monitor_processes": args.processes,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    windows_per_s = 1.0 / hop
    if args.paired_with is not None or args.paired_workers is not None:
        return emit(paired(args, result, card, hop), args.out)
    result["engine_cost_before"] = engine_cost(card, hop_s=hop)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.wav"
        result["input"] = make_long_file(path, args.seconds + 30, args.music)
        for n in (int(x) for x in args.feeds.split(",")):
            before = engine_cost(card, hop_s=hop)["cpu_ms_per_window_median"]
            r = run_n(path, n, args.seconds, hop, args.threads, card.window_seconds, args.workers, processes=args.processes, model=args.model)
            r["model_cpu_ms_per_window"] = round((before + engine_cost(card, hop_s=hop)["cpu_ms_per_window_median"]) / 2, 2)
            r["sustained"] = sustained(r, args.p99_limit_ms)
            runs.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            if not r["sustained"] and not args.all:
                break
    result["runs"] = runs
    first_miss = next((i for i, r in enumerate(runs) if not r["sustained"]), len(runs))
    kept = [r["feeds"] for r in runs[:first_miss]]  # every N up to the first one not sustained
    result["engine_cost_after"] = engine_cost(card, hop_s=hop)
    # the model's cost beside each run, their median: this machine's speed drifts by a third from one minute to the next
    model_ms = float(np.median([r["model_cpu_ms_per_window"] for r in runs]))
    result["model_cpu_ms_per_window"] = round(model_ms, 2)
    result["compute_bound_feeds"] = round(cores / (model_ms / 1000.0 * windows_per_s), 1)
    result["max_sustained_feeds"] = max(kept, default=0)
    result["share_of_compute_bound"] = round(result["max_sustained_feeds"] / result["compute_bound_feeds"], 3)
    all_cores = engine_cost_all_cores(args.model, cores)  # the same work on every core at once
    result["engine_cost_all_cores"] = all_cores
    result["compute_bound_feeds_all_cores"] = round(cores / (all_cores["cpu_ms_per_window_median"] / 1000.0 * windows_per_s), 1)
    result["share_of_compute_bound_all_cores"] = round(result["max_sustained_feeds"] / result["compute_bound_feeds_all_cores"], 3)
    saturated = [r["cpu_share_of_one_core"] for r in runs if not r["sustained"]]
    if saturated:  # a backlogged monitor takes all the CPU it can get: on a shared machine that is less than the cores
        got = max(saturated)
        result["cores_obtained_when_saturated"] = got
        result["compute_bound_feeds_on_cores_obtained"] = round(got / (model_ms / 1000.0 * windows_per_s), 2)
        result["share_of_compute_bound_on_cores_obtained"] = round(result["max_sustained_feeds"] / result["compute_bound_feeds_on_cores_obtained"], 3)
    for r in runs:  # the monitor's whole CPU per window against the model's: how much of the bound it could reach with the machine to itself
        if r["cpu_ms_per_window"]:
            r["model_share_of_cpu"] = round(r["model_cpu_ms_per_window"] / r["cpu_ms_per_window"], 3)
        if r["cpu_ms_per_window_steady"]:
            r["model_share_of_cpu_steady"] = round(r["model_cpu_ms_per_window"] / r["cpu_ms_per_window_steady"], 3)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["note"] = ("N feeds play the same file, started together; the monitor spreads their windows over the hop (feed phases, "
                      "since v12; before, they fell due at the same time). The machine is shared: see the load averages for other load during the run.")
    emit(result, args.out)


def paired(args: argparse.Namespace, result: dict, card: ModelCard, hop: float) -> dict:
    """``--paired-with`` / ``--paired-workers``: every N on the other side's monitor and on this tree's, the
    order alternating over ``--repeat`` rounds, each run with the model's cost per window (:func:`engine_cost`)
    measured just before it, so that a machine whose speed drifts between runs is compared run by run."""
    if args.paired_with is not None:
        other = args.paired_with.resolve()
        rev = subprocess.run(["git", "-C", str(other), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        sides = {"other": (other, args.workers), "this": (ROOT, args.workers)}
        result["paired"] = {"other": f"{other} at {rev or '?'}", "this": f"{ROOT} (working tree)"}
    else:
        sides = {"other": (ROOT, args.paired_workers), "this": (ROOT, args.workers)}
        result["paired"] = {"other": f"{ROOT} (working tree), --workers {args.paired_workers}", "this": f"{ROOT} (working tree), --workers {args.workers}"}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.wav"
        result["input"] = make_long_file(path, args.seconds + 30, args.music)
        for k in range(args.repeat):
            for n in (int(x) for x in args.feeds.split(",")):
                for code in (("other", "this") if k % 2 == 0 else ("this", "other")):
                    root, workers = sides[code]
                    model_ms = engine_cost(card, hop_s=hop)["cpu_ms_per_window_median"]
                    r = run_n(path, n, args.seconds, hop, args.threads, card.window_seconds, workers, root, args.processes, args.model)
                    r.update(code=code, workers=workers, round=k, model_cpu_ms_per_window=model_ms, sustained=sustained(r, args.p99_limit_ms))
                    if r["cpu_ms_per_window_steady"]:
                        r["model_share_of_cpu_steady"] = round(model_ms / r["cpu_ms_per_window_steady"], 3)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    result["runs"] = runs
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


if __name__ == "__main__":
    main()
