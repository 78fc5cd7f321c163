"""The step encoder's cost per frame against how many feeds share a call; JSON output.

A monitor's streaming step gives every feed's new frames to the step encoder
(:func:`rtgenre.inference.streaming.run_windows`); feeds with the same number
of new frames can run in one call with their states stacked, or one call each.
This measures both on ONNX Runtime (1 thread, the calling thread's CPU time):
for each batch size ``B`` (``--batches``), calls of ``B`` feeds × ``--frames``
new frames, every feed with its own state (as in a monitor, where each feed's
state is its own memory), the stacking of the states counted as the monitor
counts it.  The sizes run in rounds (``--rounds``), their order reversed
every other round, so that a drift in the machine's speed falls on all alike.
The figure is CPU ms per 31.25 frames (one 0.5 s hop of one feed), its median
over the rounds, and its ratio to one feed per call in the same round.

Usage::

    python tools/bench_step.py --out benchmarks/results/bench_step.json [--model NAME] [--batches 1,2,4,8,16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchutil import cpu_model, emit  # noqa: E402

from rtgenre.card import load_card  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402

#: Mel frames per 0.5 s hop at 16 kHz and hop 256, on average.
HOP_FRAMES = 31.25


def cost_per_hop(engine: OnnxRuntimeEngine, states: list[list[np.ndarray]], batch: int, frames: int, hops: int, rng: np.random.Generator) -> float:
    """CPU ms per :data:`HOP_FRAMES` frames of ``hops`` feed-steps in calls of ``batch`` feeds (each with its state of ``states``)."""
    n_mels = engine.card.frontend.n_mels
    calls = max(1, hops // batch)
    mels = [rng.standard_normal((batch, frames, n_mels)).astype(np.float32) + 2.0 for _ in range(calls)]
    valid = np.ones((batch, frames), np.float32)
    cpu = 0.0
    for k, mel in enumerate(mels):
        feeds = [states[(k * batch + j) % len(states)] for j in range(batch)]
        t0 = time.thread_time()
        state = feeds[0] if batch == 1 else [np.concatenate(s) for s in zip(*feeds)]
        engine.step(mel, valid, state)
        cpu += time.thread_time() - t0
    return cpu * 1000.0 / (calls * batch * frames) * HOP_FRAMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model card (default: the shipped default)")
    ap.add_argument("--batches", default="1,2,4,8,16", help="feeds per call to compare")
    ap.add_argument("--frames", type=int, default=32, help="new frames per feed and step (a 0.5 s hop: 31 or 32)")
    ap.add_argument("--feeds", type=int, default=40, help="feeds whose states the calls go through")
    ap.add_argument("--hops", type=int, default=64, help="feed-steps per batch size and round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    card = load_card(args.model)
    if card.split is None or card.split.step is None:
        sys.exit(f"model {card.name} has no step encoder (card split.step)")
    engine = OnnxRuntimeEngine(card, threads=1)
    rng = np.random.default_rng(0)
    shapes = [shape for _, _, shape in card.split.step.state]
    states = [[rng.standard_normal((1, *s)).astype(np.float32) for s in shapes] for _ in range(args.feeds)]
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:  # warm-up: every shape once
        cost_per_hop(engine, states, b, args.frames, b, rng)
    per: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(args.rounds):
        for b in batches if r % 2 == 0 else batches[::-1]:
            per[b].append(cost_per_hop(engine, states, b, args.frames, args.hops, rng))
    rows = []
    for b in batches:
        ratios = [x / one for x, one in zip(per[b], per[batches[0]])]
        rows.append({"feeds_per_call": b, "cpu_ms_per_hop_median": round(float(np.median(per[b])), 3),
                     "cpu_ms_per_hop": [round(x, 3) for x in per[b]],
                     f"ratio_to_{batches[0]}_median": round(float(np.median(ratios)), 3)})
    emit({"benchmark": "step encoder cost by feeds per call", "model": card.name, "version": card.version, "engine": engine.detail,
          "frames_per_feed_step": args.frames, "feeds": args.feeds, "hops_per_size_and_round": args.hops, "rounds": args.rounds,
          "machine": {"cpu": cpu_model(), "python": platform.python_version()},
          "command": "python tools/bench_step.py " + " ".join(sys.argv[1:]), "results": rows}, args.out)


if __name__ == "__main__":
    main()
