"""Milliseconds per window of back-end graphs, interleaved in one process (JSON output).

Times the card's back-end graph (``<name>.backend.onnx``) and any ``--against``
graphs (e.g. an older export: ``git show REV:rtgenre/models/rtgenre.backend.onnx
> old.onnx``) on the same features, batch 1 and 8 (``--batches``), one ONNX
Runtime thread: ``--rounds`` rounds, each timing every graph in turn (median of
``--iters`` calls after 3 untimed), so that a machine whose speed drifts moves
every graph alike; the figure per graph is the median of its rounds' medians,
with the ratio to the card's graph.  The features are random and non-negative
(the encoder ends in a ReLU), ``(batch, window frames, feature dim)``.

Usage::

    python tools/bench_backend.py --against old.onnx --out benchmarks/results/bench_backend.json
"""

from __future__ import annotations

import argparse
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
from rtgenre.inference.onnxruntime import session_options  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or card (default: the shipped model)")
    ap.add_argument("--against", type=Path, action="append", default=[], help="another back-end graph to time (repeatable)")
    ap.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    card = load_card(args.model)
    if card.split is None:
        raise SystemExit(f"{card.name} has no back-end graph")
    graphs = {"card": card.split.backend.onnx_path, **{str(p): p for p in args.against}}
    sessions = {name: ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"]) for name, path in graphs.items()}
    rng = np.random.default_rng(0)
    result: dict = {"command": "python tools/bench_backend.py " + " ".join(sys.argv[1:]), "model": f"{card.name} {card.version}",
                    "graphs": {k: str(v) for k, v in graphs.items()}, "threads": 1, "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()}, "onnxruntime": ort.__version__,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "batches": {}}
    for batch in map(int, args.batches.split(",")):
        feats = (2.0 * rng.random((batch, card.window_frames, card.split.encoder.feature_dim))).astype(np.float32)
        rounds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                for _ in range(3):
                    session.run(None, {card.split.backend.input: feats})
                times = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    session.run(None, {card.split.backend.input: feats})
                    times.append(time.perf_counter() - t0)
                rounds[name].append(float(np.median(times)) * 1e3 / batch)
        ms = {name: round(float(np.median(v)), 3) for name, v in rounds.items()}
        result["batches"][str(batch)] = {"ms_per_window": ms, "ratio_to_card": {n: round(v / ms["card"], 2) for n, v in ms.items()},
                                         "rounds_ms_per_window": {n: [round(x, 3) for x in v] for n, v in rounds.items()}}
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.out)


if __name__ == "__main__":
    main()
