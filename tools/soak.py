"""Soak test: ``rtgenre listen`` on a live URL stream that drops every few minutes and stalls once.

A :class:`StreamServer` (tests/streamserver.py) on 127.0.0.1 serves a looping
MP3 stream at ``--speed`` times real time; every ``--drop-every`` seconds it
drops (FIN) or resets (RST) the connection, alternately, and once, half-way,
it stalls for twice the stall timeout.  ``rtgenre listen --input URL --json``
runs against it for ``--minutes``; this script reads its events, samples its
RSS, thread and file-descriptor counts (from /proc) every few seconds, then
stops it with SIGTERM and writes a JSON report: drops injected and recovered,
windows, events by kind, memory growth after warm-up, threads/fds at warm-up
and at the end, how long the stop took.

    python tools/soak.py --minutes 20 --speed 6 --out benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from streamserver import StreamServer, encode_mp3


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (kB), threads and open file descriptors of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_kb": rss, "threads": len(os.listdir(f"/proc/{pid}/task")), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def children(pid: int) -> int:
    """Live child processes of ``pid`` (ffmpeg decoders)."""
    try:
        return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="real time to run (default: 20)")
    ap.add_argument("--speed", type=float, default=6.0, help="stream speed, times real time (default: 6)")
    ap.add_argument("--drop-every", type=float, default=120.0, help="seconds of real time between drops (default: 120)")
    ap.add_argument("--stall-timeout", type=float, default=10.0, help="passed to listen (default: 10)")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds before the memory baseline (default: 120)")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between /proc samples (default: 5)")
    ap.add_argument("--hop", type=float, default=0.5, help="listen --hop (default: 0.5)")
    ap.add_argument("--model", default=None, help="listen --model (default: the shipped model)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args()

    mp3 = encode_mp3(120.0)
    server = StreamServer(mp3, speed=args.speed).up()
    cmd = [sys.executable, "-m", "rtgenre", "listen", "--input", server.url, "--json", "--hop", str(args.hop),
           "--stall-timeout", str(args.stall_timeout)] + (["--model", args.model] if args.model else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    kinds: collections.Counter[str] = collections.Counter()
    reconnects: list[dict] = []
    last: dict = {}

    def read() -> None:
        for line in proc.stdout:
            ev = json.loads(line)
            kinds[ev["event"]] += 1
            if ev["event"] in ("reconnect", "stall", "error"):
                reconnects.append({k: ev.get(k) for k in ("event", "t", "wall", "status", "attempt", "reason", "missed_s", "seconds")})
            last.update(ev)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    duration = args.minutes * 60
    stall_at = (duration // 2 // args.drop_every + 0.5) * args.drop_every  # half-way, between two drops
    next_drop, drops, stalled = args.drop_every, [], False
    samples, baseline = [], None
    next_sample = 0.0
    try:
        while (now := time.monotonic() - t0) < duration:
            if proc.poll() is not None:
                break
            if now >= next_sample:
                s = {"t": round(now, 1), **proc_stats(proc.pid), "children": children(proc.pid)}
                samples.append(s)
                if baseline is None and now >= args.warmup:
                    baseline = s
                next_sample += args.sample_every
            if now >= next_drop:
                kind = "reset" if len(drops) % 2 else "drop"
                getattr(server, kind)()
                drops.append({"t": round(now, 1), "kind": kind})
                next_drop += args.drop_every
            if not stalled and now >= stall_at:
                server.stall()
                time.sleep(2 * args.stall_timeout)
                server.resume()
                drops.append({"t": round(now, 1), "kind": f"stall {2 * args.stall_timeout:g} s"})
                stalled = True
            time.sleep(0.2)
        time.sleep(max(10.0, 2 * args.stall_timeout))  # let the last drop recover before the stop
        end = {"t": round(time.monotonic() - t0, 1), **proc_stats(proc.pid), "children": children(proc.pid)}
        samples.append(end)
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        stop_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
        server.down()
    reader.join(10)
    stderr = proc.stderr.read().decode(errors="replace")
    recovered = [r for r in reconnects if r.get("status") == "recovered"]
    after = [s for s in samples if baseline is not None and s["t"] >= baseline["t"]]
    growth_kb = (max(s["rss_kb"] for s in after) - baseline["rss_kb"]) if after else None
    half = next((s for s in samples if s["t"] >= end["t"] / 2), end)
    report = {
        "command": "python tools/soak.py " + " ".join(sys.argv[1:]),
        "listen_command": " ".join(cmd[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "real_seconds": round(end["t"], 1),
        "audio_seconds_served": round(end["t"] * args.speed, 1),
        "stream_t_at_stop": last.get("t"),
        "faults_injected": drops,
        "losses": sum(r.get("status") == "lost" for r in reconnects),
        "recoveries": len(recovered),
        "stalls": kinds["stall"],
        "missed_s_total": round(sum(r["missed_s"] for r in recovered), 3),
        "events": dict(kinds),
        "stop": {k: last.get(k) for k in ("event", "reason", "signal", "counts")},
        "exit_code": rc,
        "stop_seconds": round(stop_s, 3),
        "memory": {"baseline": baseline, "half": half, "end": end, "growth_after_warmup_kb": growth_kb,
                   "growth_second_half_kb": end["rss_kb"] - half["rss_kb"], "max_rss_kb": max(s["rss_kb"] for s in samples)},
        "threads": {"baseline": baseline and baseline["threads"], "end": end["threads"]},
        "fds": {"baseline": baseline and baseline["fds"], "end": end["fds"]},
        "targets": {
            "every_drop_recovered": len(recovered) == len(drops),
            "memory_growth_le_5mb": growth_kb is not None and growth_kb <= 5 * 1024,
            "no_thread_leak": baseline is not None and end["threads"] <= baseline["threads"],
            "no_fd_leak": baseline is not None and end["fds"] <= baseline["fds"],
            "stopped_within_2s_with_stop_event": stop_s < 2.0 and last.get("event") == "stop" and rc == 0,
        },
        "reconnect_events": reconnects,
        "samples": samples,
        "stderr_tail": stderr[-2000:],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("real_seconds", "audio_seconds_served", "losses", "recoveries", "stalls", "targets", "memory")}, indent=1))
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
