"""Helpers shared by the ``tools/bench_*.py`` benchmarks: timing loops and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants (from ``/proc/PID/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its living descendants (worker processes)."""
    return sum(cpu_s(p) for p in process_tree(pid))


def status_kb(pid: int, key: str) -> int:
    """A KiB field of ``/proc/PID/status`` (``VmRSS``: resident memory now, ``VmHWM``: its peak); 0 once the process has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(f"{key}:"))
    except (OSError, StopIteration):
        return 0


def tree_rss_kb(pid: int) -> int:
    """Resident memory now (VmRSS, KiB) of ``pid`` and its living descendants together."""
    return sum(status_kb(p, "VmRSS") for p in process_tree(pid))


def timed_ms(fn: Callable[[], Any], iters: int, warmup: int = 5, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of ``iters`` calls of ``fn()`` on ``clock`` (default wall clock; ``time.thread_time``:
    the calling thread's CPU time), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1000.0)
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print ``result`` as indented JSON and, if ``out`` is given, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def sustained(run: dict[str, Any], limit_ms: float) -> bool:
    """Whether a run of live feeds kept up: no overrun, and latency p99 within ``limit_ms``."""
    return bool(run["overruns"] == 0 and run["latency_ms_p99"] is not None and run["latency_ms_p99"] <= limit_ms)
