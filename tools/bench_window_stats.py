"""The back end's work per window in a monitor of many feeds: the window's features copied out of each feed's
feature ring and the back-end graph, against the window's statistics kept by the feed's stream and the card's
``split.stats`` graph (JSON output).

``--feeds`` feature streams of the card (:class:`~rtgenre.inference.streaming.FeatureStream`, the chunked
encoder's interface, filled with random non-negative features as the encoder's ReLU gives them) each hold a
window and a hop more; every call takes ``--batch`` windows of streams drawn at random (so the rows read are
mostly not in the CPU's caches, as in a monitor whose feeds hold 1.6 MB of features each) and runs them as
:func:`~rtgenre.inference.streaming.run_windows` does, on one ONNX Runtime thread.  The two ways alternate in
``--rounds`` rounds (median of ``--iters`` calls each, CPU time of the calling thread); the figure per way is the
median of its rounds' medians, per window, with their ratio.

Usage::

    python tools/bench_window_stats.py --out benchmarks/results/bench_window_stats.json [--feeds 100] [--batch 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import emit  # noqa: E402

from rtgenre.card import load_card  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.inference.streaming import FeatureStream  # noqa: E402


def filled_streams(card, feeds: int, frames: int, rng: np.random.Generator) -> list[FeatureStream]:
    """``feeds`` streams holding the final features of ``frames`` frames each (random, as a ReLU's outputs)."""
    streams = []
    for _ in range(feeds):
        s = FeatureStream(card)
        s.append(np.zeros((frames + s.after, card.frontend.n_mels), np.float32))
        s.accept(0, (2.0 * rng.random((frames, s.dim))).astype(np.float32) * (rng.random((frames, s.dim)) < 0.5), keep_from=frames - card.window_frames - 64)
        streams.append(s)
    return streams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or card (default: the shipped model; it needs a split.stats graph)")
    ap.add_argument("--feeds", type=int, default=100)
    ap.add_argument("--batch", type=int, default=5, help="windows per back-end call (the monitor's mean engine batch at 100 feeds: about 5)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    card = load_card(args.model)
    if card.split is None or card.split.stats is None:
        raise SystemExit(f"{card.name} has no split.stats graph")
    card = dataclasses.replace(card, split=dataclasses.replace(card.split, step=None))  # the chunked encoder's interface fills the streams
    rng = np.random.default_rng(0)
    frames = card.window_frames + 64 + 40  # past the ring's wrap
    streams = filled_streams(card, args.feeds, frames, rng)
    engines = {"window": OnnxRuntimeEngine(card, stats=False), "stats": OnnxRuntimeEngine(card)}
    dim = streams[0].dim

    def call(name: str, picks: np.ndarray, ends: np.ndarray) -> None:
        engine = engines[name]
        x = np.empty((len(picks), engine.head_rows, dim), np.float32)
        for j, (i, end) in enumerate(zip(picks, ends)):
            (streams[i].stats if engine.head_stats else streams[i].window)(int(end), x[j])
        engine.head(x)

    rounds: dict[str, list[float]] = {name: [] for name in engines}
    result: dict = {"command": "python tools/bench_window_stats.py " + " ".join(sys.argv[1:]), "model": f"{card.name} {card.version}",
                    "feeds": args.feeds, "batch": args.batch, "threads": 1, "onnxruntime": ort.__version__,
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    for _ in range(args.rounds):
        for name in engines:
            times = []
            for k in range(args.iters + 3):
                picks = rng.choice(args.feeds, args.batch, replace=False)
                ends = frames - rng.integers(0, 32, args.batch)
                t0 = time.thread_time()
                call(name, picks, ends)
                if k >= 3:
                    times.append((time.thread_time() - t0) * 1e3 / args.batch)
            rounds[name].append(float(np.median(times)))
    ms = {name: round(float(np.median(v)), 3) for name, v in rounds.items()}
    result.update(cpu_ms_per_window=ms, ratio_window_to_stats=round(ms["window"] / ms["stats"], 2),
                  rounds_cpu_ms_per_window={n: [round(x, 3) for x in v] for n, v in rounds.items()},
                  load_average_after=[round(x, 2) for x in os.getloadavg()])
    emit(result, args.out)


if __name__ == "__main__":
    main()
