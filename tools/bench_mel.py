"""Benchmark the streaming log-Mel front end against recomputing the window; JSON output.

Per hop of 0.5 s at 16 kHz (8000 new samples) it times

- ``MelStream.process`` on the 8000 new samples (about 31 new frames), and
- ``librosa.feature.melspectrogram`` on the whole 7.5 s window (120 320
  samples, 469 frames) followed by the same log compression, which is what a
  non-streaming front end would do at every hop,

and reports the median and p99 wall-clock milliseconds of each (after
warm-up), the median CPU milliseconds of the process (all threads; robust when other
processes compete for the cores) and the ratios of the medians.

Usage::

    python tools/bench_mel.py --out benchmarks/results/bench_mel.json [--hops 300]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchutil import emit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtgenre.card import FrontendParams  # noqa: E402
from rtgenre.dsp.mel import MelStream  # noqa: E402

HOP_SAMPLES = 8000
WINDOW_FRAMES = 469


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(float(np.median(wall)), 4),
        "p99_ms": round(float(np.percentile(wall, 99)), 4),
        "cpu_median_ms": round(float(np.median(cpu)), 4),
    }


def bench(hops: int = 300, warmup: int = 20, seed: int = 0) -> dict:
    """Time both front ends over ``hops`` hops of a noise+tone signal after ``warmup`` hops.

    Returns
    -------
    dict
        ``streaming``, ``librosa_window`` (wall median/p99 ms, CPU median ms),
        ``ratio`` and ``cpu_ratio`` (librosa / streaming medians) and the parameters used.
    """
    import librosa

    p = FrontendParams()
    window = (WINDOW_FRAMES - 1) * p.hop_length + p.n_fft
    total = window + (hops + warmup) * HOP_SAMPLES
    rng = np.random.default_rng(seed)
    t = np.arange(total) / p.sample_rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(total)).astype(np.float32)

    stream = MelStream(p)
    stream.process(x[:window])
    s_ms, l_ms, s_cpu, l_cpu = [], [], [], []
    for h in range(hops + warmup):
        end = window + (h + 1) * HOP_SAMPLES
        c0, t0 = time.process_time(), time.perf_counter()
        stream.process(x[end - HOP_SAMPLES : end])
        c1, t1 = time.process_time(), time.perf_counter()
        S = librosa.feature.melspectrogram(
            y=x[end - window : end], sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels,
            center=False, power=p.power, window="hann", htk=p.htk, norm=p.norm, fmin=p.fmin, fmax=p.fmax,
        )
        np.log10(p.log_scale * S + p.log_offset)
        c2, t2 = time.process_time(), time.perf_counter()
        if h >= warmup:
            s_ms.append((t1 - t0) * 1e3)
            l_ms.append((t2 - t1) * 1e3)
            s_cpu.append((c1 - c0) * 1e3)
            l_cpu.append((c2 - c1) * 1e3)
    streaming, full = _stats(s_ms, s_cpu), _stats(l_ms, l_cpu)
    return {
        "streaming": streaming,
        "librosa_window": full,
        "ratio": round(full["median_ms"] / streaming["median_ms"], 2),
        "cpu_ratio": round(full["cpu_median_ms"] / streaming["cpu_median_ms"], 2),
        "hop_samples": HOP_SAMPLES,
        "window_samples": window,
        "sample_rate": p.sample_rate,
        "hops": hops,
        "warmup": warmup,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hops", type=int, default=300, help="timed hops (after 20 warm-up hops)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    emit(bench(args.hops), args.out)


if __name__ == "__main__":
    main()
