"""Benchmark streaming inference against the whole-window recompute, side by side in one run; JSON output.

The shipped model is exported in split form (encoder + back end + the
layer-cached step encoder) into a temporary folder (``engines/`` is not
touched), and beside it the same card without ``split.step`` (the chunked
encoder), and measured, in one run, with three peers: ``step`` (the step
encoder), ``chunked`` (the chunked encoder) and ``recompute`` (the whole-window
graph every hop, the pre-streaming path):

- ``per_hop``: model milliseconds per hop and feed at 0.5 s hop, 1 and 2
  threads: the encoder on the frames one hop completes (31.25 on average; the
  chunked encoder with its context) for ``wait``, plus the 73 newest frames
  (the step encoder: a flush of a copy of its state; the chunked one: with
  their context) for ``provisional``, the back end on one window, against
  the whole-window graph; median of repeated calls on real-music Mel frames;
  a model with a patch encoder (card ``split.patch``) adds one patch call
  per ``patch.frames`` frames (``patch_ms_per_hop``: its median × 31.25 / 187);
- ``classify``: ``/usr/bin/time -v python -m rtgenre classify FILE --threads 1``
  on a 5-minute file at 0.5 s hop, for the three peers:
  audio-seconds analysed per CPU-second, peak RSS;
- ``listen``: ``rtgenre listen --input FILE --realtime --json`` latency p50/p99
  (arrival of the last sample an event depends on → JSON line written; the
  ``wait`` look-ahead is reported separately as ``lookahead_s``), CPU share and
  peak RSS, for ``wait`` and ``provisional`` (step encoder), ``chunked_wait``
  and ``recompute``;
- ``feeds``: ``rtgenre monitor --processes P --workers 1 --threads 1`` (P: the
  cores) with N paced file feeds (44.1 kHz stereo, read in real time, all
  started together) of the shipped model at 0.5 s hop, run as
  ``tools/bench_monitor.py`` runs it: latency p50/p99 (last sample's arrival →
  JSON line), overruns, CPU share and peak RSS of the monitor and its workers,
  engine batch size; sustained = no overrun and p99 ≤ 500 ms;
- ``accuracy`` (``--accuracy``): ``rtgenre eval`` scoring of the real-music
  clips (``--map broad``, hop 1 s) for the three paths; ``provisional`` is fed
  in 1024-frame blocks as from a sound card, so that its newest features are
  computed before their context arrives, as live.

The machine's load average is recorded before each part (the machine may be shared).

Usage::

    python tools/bench_stream.py --out benchmarks/results/bench_stream.json [--accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_monitor import run_n  # noqa: E402
from bench_pipeline import REAL_MUSIC, bench_listen, make_long_file  # noqa: E402
from benchutil import emit, sustained, timed_ms  # noqa: E402

from rtgenre.card import DEFAULT_MODEL, ENGINES_DIR, ModelCard, load_card  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from rtgenre.inference.streaming import window_statistics  # noqa: E402

HOP_S = 0.5
#: A live feed run is sustained with no overrun and latency p99 within this (issue 14: ≥ 100 feeds at p99 ≤ 500 ms).
FEEDS_P99_LIMIT_MS = 500.0


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def export_split(folder: Path, name: str = DEFAULT_MODEL) -> tuple[Path, Path]:
    """A shipped model (its encoders, its back end from its .backend.npz) exported in split form: its card, and a copy without the step graph."""
    from rtgenre.training.encoder import load_encoder
    from rtgenre.training.export import export_split_model, load_backend
    from rtgenre.training.musicnn import load_vgg

    shipped = json.loads((ENGINES_DIR / f"{name}.json").read_text())
    keep = {k: v for k, v in shipped.items() if k in ("training", "evaluation", "teacher", "license")}
    backend = load_backend(ENGINES_DIR / f"{name}.backend.npz")
    taggers = [load_vgg(n) for n in backend.config.patch_encoders] or None
    card = export_split_model(backend, folder, name, shipped["mappings"], keep, encoder=load_encoder(backend.config.encoders), taggers=taggers)
    raw = json.loads(card.read_text())
    del raw["split"]["step"]
    chunked = folder / f"{name}-chunked.json"
    chunked.write_text(json.dumps(raw, indent=1))
    return card, chunked


def real_mel(card: ModelCard, frames: int, music: Path) -> np.ndarray:
    """``frames`` log-Mel frames of real music (or of the demo song)."""
    from rtgenre.dsp.mel import log_mel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        make_long_file(path, frames * card.frontend.hop_length / card.frontend.sample_rate + 2, music)
        import soundfile as sf
        import soxr

        x, sr = sf.read(path, dtype="float32")
        x = soxr.resample(x.mean(axis=1), sr, card.frontend.sample_rate)
    return log_mel(x, card.frontend)[:frames]


def bench_per_hop(card: ModelCard, chunked: ModelCard, threads: int, iters: int, music: Path) -> dict:
    enc, step = card.split.encoder, card.split.step
    context = enc.context_before + enc.context_after
    mel = real_mel(card, card.window_frames + context + enc.context_after + 40, music)
    stream = OnnxRuntimeEngine(card, threads=threads)
    chunks = OnnxRuntimeEngine(chunked, threads=threads)
    full = OnnxRuntimeEngine(card, threads=threads, stream=False)
    hop_frames = HOP_S * card.frontend.sample_rate / card.frontend.hop_length  # 31.25
    lo, hi = int(hop_frames), int(hop_frames) + 1  # hops alternate between 31 and 32 frames
    frac = hop_frames - lo

    def per_hop(ms) -> float:
        return (1 - frac) * ms(lo) + frac * ms(hi)

    def chunked_ms(n: int) -> float:
        x, v = mel[None, : n + context], np.ones((1, n + context), np.float32)
        return float(np.median(timed_ms(lambda: chunks.encode(x, v), iters)))

    # the step encoder in the state of a running stream (its state after the window's frames)
    _, state = stream.step(mel[None, : card.window_frames], np.ones((1, card.window_frames), np.float32), [np.zeros((1, *s), np.float32) for _, _, s in step.state])
    new = mel[None, card.window_frames :]

    def step_ms(n: int) -> float:
        return float(np.median(timed_ms(lambda: stream.step(new[:, :n], np.ones((1, n), np.float32), state), iters)))

    flush = float(np.median(timed_ms(lambda: stream.step(np.zeros((1, step.delay, mel.shape[1]), np.float32), np.zeros((1, step.delay), np.float32), state), iters)))
    step_wait = per_hop(step_ms)
    chunked_wait = per_hop(chunked_ms)
    chunked_provisional = per_hop(lambda n: chunked_ms(n + enc.context_after))
    feats = chunks.encode(mel[None, : card.window_frames + context], np.ones((1, card.window_frames + context), np.float32))
    patch = card.split.patch
    patches = np.zeros((1, 2 * patch.dim), np.float32) if patch is not None else None
    head_in = window_statistics(feats, card.split.stats.pool) if stream.head_stats else feats  # the card's split.stats graph: the window's statistics
    backend = float(np.median(timed_ms(lambda: stream.head(head_in, patches), iters)))
    window = mel[None, : card.window_frames]
    recompute = float(np.median(timed_ms(lambda: full.run(window), max(5, iters // 4))))
    out = {"threads": threads, "hop_frames": hop_frames, "backend_ms": round(backend, 3), "recompute_ms": round(recompute, 3)}
    if patch is not None:  # one patch call every patch.frames frames, spread over the hops
        one = float(np.median(timed_ms(lambda: stream.patch(mel[None, : patch.frames]), iters)))
        out.update(patch_ms=round(one, 3), patch_ms_per_hop=round(one * hop_frames / patch.frames, 3))
        backend += one * hop_frames / patch.frames
    for name, wait, provisional in (("step", step_wait, step_wait + flush), ("chunked", chunked_wait, chunked_provisional)):
        out[name] = {
            "encoder_ms_wait": round(wait, 3),
            "encoder_ms_provisional": round(provisional, 3),
            "model_ms_wait": round(wait + backend, 3),
            "model_ms_provisional": round(provisional + backend, 3),
            "ratio_wait": round(recompute / (wait + backend), 2),
            "ratio_provisional": round(recompute / (provisional + backend), 2),
        }
    return {**out, "iterations": iters, "loadavg": load()}


def bench_classify(card_path: Path, audio: Path, seconds: float, recompute: bool) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "rtgenre", "classify", str(audio), "--model", str(card_path), "--threads", "1", "--hop", str(HOP_S), "--json"]
    if recompute:
        cmd.append("--recompute")
    card_name = "CHUNKED_CARD" if card_path.stem.endswith("-chunked") else "SPLIT_CARD"
    before = load()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"classify failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", proc.stderr).group(1).strip()

    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    windows = sum(1 for line in proc.stdout.splitlines() if '"prediction"' in line or '"silence"' in line)
    return {
        "command": f"/usr/bin/time -v rtgenre classify FILE --model {card_name} --threads 1 --hop 0.5 --json" + (" --recompute" if recompute else ""),
        "audio_s": seconds,
        "windows": windows,
        "cpu_s": round(cpu, 2),
        "wall_s": round(sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall))), 2),
        "audio_s_per_cpu_s": round(seconds / cpu, 2),
        "peak_rss_mb": round(int(field("Maximum resident set size (kbytes)")) / 1024, 1),
        "loadavg": before,
    }


def bench_feeds(audio: Path, counts: list[int], seconds: float, processes: int, window_s: float) -> dict:
    """``rtgenre monitor`` with N paced feeds of ``audio`` for each N (:func:`bench_monitor.run_n`), as in ``tools/bench_monitor.py``."""
    runs = []
    for n in counts:
        r = run_n(audio, n, seconds, HOP_S, 1, window_s, workers=1, processes=processes)
        r["sustained"] = sustained(r, FEEDS_P99_LIMIT_MS)
        runs.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    return {
        "command": f"rtgenre monitor --json --no-dashboard --metrics-port 0 --threads 1 --workers 1 --processes {processes} --feed=f000=FILE ... (N feeds)",
        "p99_limit_ms": FEEDS_P99_LIMIT_MS,
        "max_sustained_feeds": max((r["feeds"] for r in runs if r["sustained"]), default=0),
        "runs": runs,
    }


def bench_accuracy(card: ModelCard, music: Path) -> dict:
    from rtgenre.evaluate import evaluate, labelled_files

    files = labelled_files(music, music / "LABELS.csv", "broad_genre")
    out = {"command": "rtgenre eval --data ../shared/data/real-music --labels ../shared/data/real-music/LABELS.csv --label-column broad_genre --map broad [--recompute | --lookahead provisional]"}
    for name, kw in (("recompute", {"stream": False}), ("wait", {}), ("provisional_live", {"lookahead": "provisional", "live_block": 1024})):
        ev = evaluate(card, files, "broad", 1.0, 1, **kw)
        out[name] = {"clip_accuracy": round(ev.clip.accuracy, 4), "clips_right": sum(c["prediction"] == c["label"] for c in ev.clips),
                     "window_accuracy": round(ev.window.accuracy, 4), "windows": ev.window.n,
                     "predictions": {c["file"]: c["prediction"] for c in ev.clips}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Streaming vs whole-window inference benchmark (JSON output).")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--iters", type=int, default=40, help="timed calls per per-hop figure (default 40)")
    ap.add_argument("--classify-seconds", type=float, default=300.0, help="length of the classify file (default 300)")
    ap.add_argument("--listen-seconds", type=float, default=120.0, help="length of each realtime listen run (default 120)")
    ap.add_argument("--feeds", default="50,100,110", help="numbers of paced feeds to run (default 50,100,110)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="monitor --processes for the feeds runs (default: the cores)")
    ap.add_argument("--feeds-seconds", type=float, default=40.0, help="seconds per feeds run (default 40)")
    ap.add_argument("--accuracy", action="store_true", help="also score the real-music clips with each path")
    ap.add_argument("--music", type=Path, default=REAL_MUSIC, help=f"real-music folder (default {REAL_MUSIC}; the demo song when absent)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"a model in {ENGINES_DIR.name}/ with a back end of its own (default {DEFAULT_MODEL})")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (per_hop,classify,listen,feeds)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python tools/bench_stream.py " + " ".join(sys.argv[1:]),
        "loadavg_start": load(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        card_path, chunked_path = export_split(tmp / "model", args.model)
        card, chunked = load_card(card_path), load_card(chunked_path)
        result["model"] = (f"{card.name} (shipped back end) exported in split form: step encoder (delay {card.split.step.delay} frames) and, "
                           f"as a peer, the chunked encoder (context {card.split.encoder.context_before}/{card.split.encoder.context_after} frames)")
        if "per_hop" not in skip:
            result["per_hop"] = [bench_per_hop(card, chunked, t, args.iters, args.music) for t in (1, 2)]
        long_file = tmp / "long.wav"
        result["input"] = make_long_file(long_file, max(args.classify_seconds, args.listen_seconds, args.feeds_seconds), args.music)
        if "classify" not in skip:
            clip = tmp / "classify.wav"
            make_long_file(clip, args.classify_seconds, args.music)
            peers = (("step", card_path, False), ("chunked", chunked_path, False), ("recompute", card_path, True))
            result["classify"] = {name: bench_classify(path, clip, args.classify_seconds, recompute) for name, path, recompute in peers}
        if "listen" not in skip:
            clip = tmp / "listen.wav"
            make_long_file(clip, args.listen_seconds, args.music)
            result["listen"] = {}
            lookahead_s = round(card.split.encoder.context_after * card.frontend.hop_length / card.frontend.sample_rate, 4)
            runs = (("wait", card_path, []), ("provisional", card_path, ["--lookahead", "provisional"]), ("chunked_wait", chunked_path, []), ("recompute", card_path, ["--recompute"]))
            for name, path, extra in runs:
                before = load()
                r = bench_listen(clip, 1, ["--model", str(path), *extra])
                result["listen"][name] = {**r, "lookahead_s": lookahead_s if name.endswith("wait") else 0.0, "loadavg": before}
        if "feeds" not in skip:
            result["feeds"] = bench_feeds(long_file, [int(n) for n in args.feeds.split(",")], args.feeds_seconds, args.processes, card.window_seconds)
        if args.accuracy and args.music.is_dir():
            result["accuracy"] = bench_accuracy(card, args.music)
    result["loadavg_end"] = load()
    emit(result, args.out)


if __name__ == "__main__":
    main()
