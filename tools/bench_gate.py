"""Benchmark the speech/music gate's per-hop cost against the model's per-hop cost; JSON output.

Per hop, on one CPU thread:

- ``model``: ``engine.run`` of one window (ONNX Runtime) with the given model;
- ``post_gated_*``: :meth:`rtgenre.pipeline.Feed.events_for` of one window
  (smoothing, the gate, the events) with the model's card, content head included;
- ``post_plain``: the same with the content head left out of the card (no gate).

The windows' probabilities come from the model on log-Mel-like noise; the
content probabilities are overwritten with music throughout
(``post_gated_music``: the music heads always run, the gate's worst case) or
with runs of music and speech, 20 hops each (``post_gated_talk_and_music``:
talk hops skip the music heads).  The result is ``gate_overhead`` =
(post_gated_music − post_plain) / model: what the gate's
post-processing adds to a hop, as a share of the model's cost (of
``--reference-model`` when given: e.g. the shipped model, when the content
head is the tiny test model's).  The content
head's own cost inside the model is not separable here (same graph).

Usage::

    python tools/bench_gate.py --model engines/<model with a content head>.json --out benchmarks/results/bench_gate.json
    python tools/bench_gate.py --test-model --reference-model rtgenre   # the tiny test model's heads; the shipped model's cost per hop
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchutil import emit, timed_ms  # noqa: E402
from rtgenre.card import load_card  # noqa: E402
from rtgenre.dsp.window import Window  # noqa: E402
from rtgenre.gate import CONTENT_HEAD, MUSIC, SPEECH  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.pipeline import Feed  # noqa: E402
from rtgenre.smoothing import Smoother  # noqa: E402

RUN = 20  # hops of music, then of speech, repeated


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 5), "p99_ms": round(float(np.percentile(a, 99)), 5), "iters": len(ms)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="card of a model with a content head")
    p.add_argument("--test-model", action="store_true", help="use the band-energy test model of tests/content_model.py")
    p.add_argument("--reference-model", default=None, help="time the model cost per hop on this model instead (any card)")
    p.add_argument("--model-iters", type=int, default=50)
    p.add_argument("--post-iters", type=int, default=4000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    if args.test_model:
        from content_model import build_content_model

        args.model = build_content_model(Path(tmp.name))
    card = load_card(args.model)
    if CONTENT_HEAD not in card.labels():
        p.error(f"{card.name} has no '{CONTENT_HEAD}' head")
    from engine_fixtures import random_windows

    mel = random_windows(8, frames=card.window_frames, mels=card.frontend.n_mels)
    with OnnxRuntimeEngine(card, 1) as engine:
        outs = engine.run(mel)
    reference = load_card(args.reference_model) if args.reference_model else card
    with OnnxRuntimeEngine(reference, 1) as engine:
        model_ms = timed_ms(lambda: engine.run(mel[:1]), args.model_iters)
    content = card.head(CONTENT_HEAD)

    def sequence(talk: bool) -> list[dict[str, np.ndarray]]:
        out = []
        for k in range(2 * RUN):
            window = {h: outs[h][k % len(mel)] for h in outs}
            window[CONTENT_HEAD] = c = np.full(len(content.labels), 0.05, np.float32)
            c[content.labels.index(SPEECH if talk and k >= RUN else MUSIC)] = 0.9
            out.append(window)
        return out

    plain_card = dataclasses.replace(card, heads=tuple(h for h in card.heads if h.name != CONTENT_HEAD))
    runs = {"post_gated_music": (card, sequence(False)), "post_gated_talk_and_music": (card, sequence(True)), "post_plain": (plain_card, sequence(False))}
    feeds = {name: Feed("bench", None, c, Smoother(c.heads, 0.5), 0.5) for name, (c, _) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in feeds}
    for k in range(args.post_iters + 100):  # interleaved, so that load on the machine hits all alike
        window = Window(mel[0], k, k, 7.5 + 0.5 * k, -20.0, -6.0)
        for name, feed in feeds.items():
            probs = runs[name][1]
            t0 = time.perf_counter()
            feed.events_for(window, probs[k % len(probs)], 0.0)
            if k >= 100:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    post = {name: summary(ms) for name, ms in times.items()}
    model = summary(model_ms)
    result = {
        "benchmark": "bench_gate",
        "model": card.name,
        "reference_model": reference.name,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(), "loadavg_1min_at_end": os.getloadavg()[0]},
        "model_per_hop": model,
        **post,
        "gate_overhead": round((post["post_gated_music"]["median_ms"] - post["post_plain"]["median_ms"]) / model["median_ms"], 5),
        "command": "python tools/bench_gate.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    emit(result, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
