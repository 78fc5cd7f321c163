"""Benchmark the speech/music gate: its per-hop cost against the model's, and (``--radio``) its timing on radio programmes; JSON output.

Timing (``--radio``)
--------------------
A radio-style programme is cut from real recordings (``../shared/data``):
music segments from the 18 real-music clips (never trained on), talk
segments from the parts of the long speech recordings *after* the 30 s the
feature cache (and so training) holds of them (Apollo 11 air-to-ground radio,
a French radio/podcast discussion, a Japanese talk, codec2 HF-radio QSOs:
audio never trained on, speakers and channels that were), and the three
synthetic radio mixes (real speech over music, ``synth_radio``, never trained
on) at three of the joins, placed so that their own speech/music boundaries
are transitions.  Every segment is levelled to -20 dBFS RMS.  The programme
runs through ``rtgenre listen --json`` (the streaming path, ``wait``
look-ahead) with the gate's smoothing and hold off, which gives each
window's raw content probabilities; the gate (:class:`rtgenre.gate.ContentGate`)
is then replayed on them for each ``--talk-smooth``/``--talk-hold`` pair of a
grid, the defaults included.  Per pair: for each true talk/music transition,
the delay from the transition to the window end ``t`` of the confirming
``talk``/``music`` event (``latency_s``; the event is written
``lookahead_s`` = 1.17 s of audio later under ``wait``), transitions missed,
events that match no transition, and the share of music (talk) windows
whose gate state is talk (music), the first 3 s after each transition left out.

Cost
----
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
    python tools/bench_gate.py --radio --model rtgenre --out benchmarks/results/bench_gate_radio.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
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
from rtgenre.gate import CONTENT_HEAD, MUSIC, MUSIC_STATE, SPEECH, TALK_HOLD_S, TALK_STATE, TALK_TAU_S, ContentGate  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.pipeline import Feed  # noqa: E402
from rtgenre.smoothing import Smoother, ema_alpha  # noqa: E402

RUN = 20  # hops of music, then of speech, repeated
SHARED = ROOT.parent / "shared" / "data"
RATE = 16000
LEVEL_DBFS = -20.0
SETTLE_S = 3.0  # seconds after a transition left out of the state shares
#: Talk never trained on: (file under train/speech, start s, end s), all past the cache's first 30 s.
TALK = [("asr_testclips/speech/apollo11.ogg", 30, 45), ("asr_testclips/speech/smartphone_fr.ogg", 30, 45),
        ("codec2_samples/speech/ve9qrp.ogg", 30, 45), ("asr_testclips/speech/japanese.ogg", 30, 40.5),
        ("asr_testclips/speech/apollo11.ogg", 45, 60), ("asr_testclips/speech/smartphone_fr.ogg", 60, 75),
        ("codec2_samples/speech/ve9qrp.ogg", 60, 75), ("asr_testclips/speech/apollo11.ogg", 60, 75),
        ("asr_testclips/speech/smartphone_fr.ogg", 90, 105), ("codec2_samples/speech/ve9qrp.ogg", 90, 105),
        ("asr_testclips/speech/smartphone_fr.ogg", 120, 135), ("asr_testclips/speech/apollo11.ogg", 75, 89)]
MIX = "synth_radio/mixed/radio_example_{}.ogg"


def _read(path: Path, start: float = 0.0, end: float | None = None) -> np.ndarray:
    from rtgenre.training.realdata import read_audio

    x = read_audio(path, RATE)[int(start * RATE) : None if end is None else int(end * RATE)]
    return (x * np.float32(10 ** (LEVEL_DBFS / 20) / (np.sqrt(np.mean(x**2)) + 1e-9))).astype(np.float32)


def classifier_cost(card, n: int = 200) -> dict:
    """CPU ms of the short-window content classifier per hop (the window's features copied out, as
    :func:`rtgenre.pipeline.infer` does) against one streaming hop of the model (``bench_monitor``'s
    :func:`engine_cost`), on one thread; empty when the model has no classifier."""
    from bench_monitor import engine_cost

    from rtgenre.content import for_card

    clf = for_card(card)
    if clf is None:
        return {}
    feats = np.random.default_rng(0).random((card.window_frames, clf.feature_dim), np.float32)
    for _ in range(10):
        clf.process(feats.copy())
    cpu = []
    for _ in range(n):
        c0 = time.thread_time()
        clf.process(feats.copy())
        cpu.append((time.thread_time() - c0) * 1000.0)
    hop = engine_cost(card)
    ms = round(float(np.median(cpu)), 4)
    return {"classifier_cpu_ms_per_hop_median": ms, "model_streaming_hop": hop,
            "classifier_overhead": round(ms / hop["cpu_ms_per_window_median"], 5)}


def radio_programme(shared: Path = SHARED) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """The programme's audio (16 kHz) and its true states: ``[(start s, "talk"|"music"), ...]`` at each change.

    Music segment ``i`` (seconds 5-25 of real-music clip ``i``) is followed by
    talk segment ``i``.  Radio mix 1 (music, then speech from 3.13 s) leads
    from music 0 into talk 0; mix 3 (speech over music, then music) leads from
    talk 1 into music 2; mix 2 (music, speech over it from 5.68 s) leads from
    music 3 into talk 3: speech over music is music (the music heads run).
    """
    music = sorted((shared / "real-music").glob("*.mp3"))
    parts: list[tuple[np.ndarray, list[tuple[float, str]]]] = []  # audio, [(offset in it, state)]
    for i, (f, a, b) in enumerate(TALK):
        parts.append((_read(music[i % len(music)], 5, 25), [(0.0, MUSIC_STATE)]))
        if i == 0:
            parts.append((_read(shared / "train/speech" / MIX.format(1)), [(0.0, MUSIC_STATE), (3.13, TALK_STATE)]))
        if i == 3:
            parts.append((_read(shared / "train/speech" / MIX.format(2)), [(0.0, MUSIC_STATE)]))
        parts.append((_read(shared / "train/speech" / f, a, b), [(0.0, TALK_STATE)]))
        if i == 1:
            parts.append((_read(shared / "train/speech" / MIX.format(3)), [(0.0, MUSIC_STATE)]))
    truth: list[tuple[float, str]] = []
    t = 0.0
    for audio, states in parts:
        for off, state in states:
            if not truth or truth[-1][1] != state:
                truth.append((t + off, state))
        t += len(audio) / RATE
    return np.concatenate([a for a, _ in parts]), truth


def score_transitions(windows: list[tuple[float, str]], events: list[tuple[float, str]], truth: list[tuple[float, str]]) -> dict:
    """Latency of each true transition, missed and extra events, and wrong-state shares.

    Parameters
    ----------
    windows : list of (t, state)
        Each window's end time and gate state.
    events : list of (t, state)
        The ``talk``/``music`` events after the first (window end time, new state).
    truth : list of (start, state)
        The true states from :func:`radio_programme`.
    """
    used: set[int] = set()
    latencies, missed = [], 0
    for k, (start, state) in enumerate(truth[1:], 1):
        end = truth[k + 1][0] if k + 1 < len(truth) else float("inf")
        hit = next((j for j, (t, s) in enumerate(events) if s == state and j not in used and start - 1.0 <= t < end + SETTLE_S), None)
        if hit is None:
            missed += 1
            continue
        used.add(hit)
        latencies.append(events[hit][0] - start)

    def truth_at(t: float) -> tuple[str, float]:
        k = max(i for i, (s, _) in enumerate(truth) if s <= t) if t >= truth[0][0] else 0
        return truth[k][1], t - truth[k][0]

    wrong = {MUSIC_STATE: [0, 0], TALK_STATE: [0, 0]}
    for t, state in windows:
        true, since = truth_at(t)
        if since >= SETTLE_S:
            wrong[true][0] += state != true
            wrong[true][1] += 1
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"transitions": len(truth) - 1, "detected": len(latencies), "missed": missed, "extra_events": len(events) - len(used),
            "latency_s": {"median": round(float(np.median(lat)), 2), "max": round(float(np.max(lat)), 2), "all": [round(float(x), 2) for x in latencies]},
            "within_3s": round(float(np.mean(lat <= 3.0)) if latencies else 0.0, 4),
            "music_windows_as_talk": round(wrong[MUSIC_STATE][0] / max(1, wrong[MUSIC_STATE][1]), 4),
            "talk_windows_as_music": round(wrong[TALK_STATE][0] / max(1, wrong[TALK_STATE][1]), 4)}


def replay(probs: list[tuple[float, np.ndarray]], head, hop_s: float, tau_s: float, hold_s: float) -> tuple[list, list]:
    """The gate over raw content probabilities: each window's state and the transitions after the first."""
    gate = ContentGate(head, hop_s, ema_alpha(hop_s, tau_s), hold_s)
    windows, events = [], []
    for t, p in probs:
        d = gate.process(p)
        windows.append((t, gate.current))
        if d.transition is not None and d.transition.previous is not None:
            events.append((t, d.transition.state))
    return windows, events


def with_classifier(model: str, weights: Path | None, folder: Path) -> str:
    """A copy of ``model`` (card and graphs) in ``folder`` with ``weights`` as its content classifier (none: the content head)."""
    import shutil

    from rtgenre.card import resolve_model
    from rtgenre.content import SUFFIX

    path = resolve_model(model)
    raw = json.loads(path.read_text())
    for name in [raw["onnx"]] + [part["onnx"] for part in raw.get("split", {}).values()]:
        shutil.copy(path.parent / name, folder / name)
    shutil.copy(path, folder / path.name)
    if weights is not None:
        shutil.copy(weights, folder / f"{raw['name']}{SUFFIX}")
    return str(folder / path.name)


def radio(args: argparse.Namespace) -> dict:
    """The ``--radio`` benchmark (see the module docstring)."""
    import soundfile as sf

    from rtgenre.content import for_card
    from rtgenre.events import Event

    audio, truth = radio_programme(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        if args.content_weights or args.content_head:
            args.model = with_classifier(args.model, args.content_weights, Path(tmp))
        card = load_card(args.model)
        content_from = "short-window classifier" if for_card(card) is not None else "content head"
        wav = Path(tmp) / "programme.wav"
        sf.write(wav, audio, RATE)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rtgenre", "listen", "--input", str(wav), "--model", args.model, "--json", "--hop", str(args.hop),
                               "--talk-smooth", "0", "--talk-hold", "0", "--threads", "1"],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        wall = time.perf_counter() - t0
    events = [Event.from_dict(json.loads(line)) for line in proc.stdout.splitlines()]
    head = card.head(CONTENT_HEAD)
    probs = [(e.t, np.array([e.data["content"]["probs"][label] for label in head.labels])) for e in events if e.kind == "prediction"]
    start = next(e for e in events if e.kind == "start").data
    if args.save_probs:
        np.savez(args.save_probs, t=np.array([t for t, _ in probs]), probs=np.stack([p for _, p in probs]), labels=np.array(head.labels),
                 truth_t=np.array([t for t, _ in truth]), truth_state=np.array([s for _, s in truth]))
    grid = {}
    for tau in args.taus:
        for hold in args.holds:
            grid[f"smooth {tau:g} s, hold {hold:g} s"] = score_transitions(*replay(probs, head, args.hop, tau, hold), truth)
    default = f"smooth {TALK_TAU_S:g} s, hold {TALK_HOLD_S:g} s"
    if default not in grid:
        grid[default] = score_transitions(*replay(probs, head, args.hop, TALK_TAU_S, TALK_HOLD_S), truth)
    return {"benchmark": "bench_gate_radio", "model": card.name, "content_from": content_from,
            "content_weights": str(args.content_weights) if args.content_weights else None, "programme_s": round(len(audio) / RATE, 1), "truth": [(round(t, 2), s) for t, s in truth], "hop_s": args.hop,
            "lookahead_s": start["lookahead_s"], "listen_wall_s": round(wall, 1), "default": default, "default_result": grid[default], "grid": grid}


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
    p.add_argument("--radio", action="store_true", help="time the gate's talk/music events on a radio programme of real recordings (needs ../shared)")
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (default: ../shared/data)")
    p.add_argument("--hop", type=float, default=0.5, help="--radio: seconds between windows")
    p.add_argument("--save-probs", type=Path, default=None, help="--radio: also save each window's raw content probabilities and the truth (.npz)")
    p.add_argument("--content-head", action="store_true", help="--radio: leave the model's content classifier out (the back end's content head decides)")
    p.add_argument("--content-weights", type=Path, default=None, help="--radio: use this .content.npz as the model's content classifier")
    p.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], help="--radio: --talk-smooth values to replay")
    p.add_argument("--holds", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0], help="--radio: --talk-hold values to replay")
    args = p.parse_args(argv)
    command = "python tools/bench_gate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.radio:
        args.model = args.model or "rtgenre"
        emit({**radio(args), "command": command}, args.out)
        return 0
    tmp = tempfile.TemporaryDirectory()
    if args.test_model:
        from content_model import build_content_model

        args.model = build_content_model(Path(tmp.name))
    card = load_card(args.model)
    if CONTENT_HEAD not in card.labels():
        p.error(f"{card.name} has no '{CONTENT_HEAD}' head")
    from engine_fixtures import random_windows

    mel = random_windows(8, frames=card.window_frames, mels=card.frontend.n_mels)
    with OnnxRuntimeEngine(card, 1, stream=False) as engine:
        outs = engine.run(mel)
    reference = load_card(args.reference_model) if args.reference_model else card
    with OnnxRuntimeEngine(reference, 1, stream=False) as engine:
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
    classifier = classifier_cost(card)
    result = {
        "benchmark": "bench_gate",
        "model": card.name,
        "reference_model": reference.name,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(), "loadavg_1min_at_end": os.getloadavg()[0]},
        "model_per_hop": model,
        **post,
        "gate_overhead": round((post["post_gated_music"]["median_ms"] - post["post_plain"]["median_ms"]) / model["median_ms"], 5),
        **classifier,
        "command": command,
    }
    emit(result, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
