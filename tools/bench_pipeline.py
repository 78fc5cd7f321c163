"""Benchmark the listening pipeline on the CPU; JSON output.

Measures, in one run on this machine:

- streaming log-Mel cost per hop vs librosa recomputing the whole window (ratio),
  via ``tools/bench_mel.py``;
- inference ms per window of the default model with ONNX Runtime;
- ``latency_ms`` p50/p99 of a ``rtgenre listen --input FILE --realtime --json``
  run over a 5-minute file (real music from ``../shared/data/real-music`` when
  present, else the generated demo song), plus that process's CPU share (of one
  core) and peak resident memory.

Usage::

    python tools/bench_pipeline.py --out benchmarks/results/bench_pipeline.json [--seconds 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_mel import bench as bench_mel  # noqa: E402
from benchutil import emit, status_kb, timed_ms  # noqa: E402
from make_demo import SR as DEMO_SR, render  # noqa: E402

from rtgenre.card import load_card  # noqa: E402
from rtgenre.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402

REAL_MUSIC = ROOT.parent / "shared" / "data" / "real-music"


def make_long_file(path: Path, seconds: float, music: Path = REAL_MUSIC) -> str:
    """Write ``seconds`` of audio (44.1 kHz stereo): real clips of ``music`` back to back if available."""
    clips = sorted(music.glob("*.mp3")) if music.is_dir() else []
    if clips:
        parts, total = [], 0
        while total < seconds * 44100:
            for c in clips:
                x, sr = sf.read(c, dtype="float32", always_2d=True)
                x = soxr.resample(x, sr, 44100) if sr != 44100 else x
                parts.append(x[:, :2] if x.shape[1] > 1 else np.repeat(x, 2, axis=1))
                total += len(parts[-1])
                if total >= seconds * 44100:
                    break
        audio, sr, what = np.concatenate(parts)[: int(seconds * 44100)], 44100, f"real music: {len(clips)} clips of {music} back to back"
    else:
        audio, sr, what = render(seconds), DEMO_SR, "generated demo song (tools/make_demo.py)"
    sf.write(path, audio, sr, subtype="PCM_16")
    return what


def bench_inference(card, threads: int, n: int = 50) -> dict:
    engine = OnnxRuntimeEngine(card, threads=threads, stream=False)
    x = np.random.default_rng(0).standard_normal((1, card.window_frames, card.frontend.n_mels)).astype(np.float32) + 2.0
    times = timed_ms(lambda: engine.run(x), n)
    return {"threads": threads, "ms_per_window_median": float(np.median(times)), "ms_per_window_p90": float(np.percentile(times, 90)), "runs": n}


def bench_listen(path: Path, threads: int, extra: list[str] | tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, "-m", "rtgenre", "listen", "--input", str(path), "--realtime", "--json", "--threads", str(threads), *extra]
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        peak_kb = 0
        while proc.poll() is None:  # the child's own high-water mark (ru_maxrss would count the fork of this process)
            peak_kb = max(peak_kb, status_kb(proc.pid, "VmHWM"))
            time.sleep(0.5)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"listen failed ({proc.returncode}): {stderr.strip()}")
    events = [json.loads(line) for line in stdout.splitlines()]
    lat = np.array([e["latency_ms"] for e in events if e["event"] == "prediction"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stop = next(e for e in events if e["event"] == "stop")
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": round(wall, 2),
        "predictions": int(lat.size),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "latency_ms_max": float(lat.max()),
        "cpu_share_of_one_core": round(cpu / wall, 4),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "stop_counts": stop["counts"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="Benchmark the listening pipeline (JSON output).")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--seconds", type=float, default=300.0, help="length of the realtime run (default 300)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    args = ap.parse_args()
    card = load_card()
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "command": "python tools/bench_pipeline.py " + " ".join(sys.argv[1:]),
        "model": card.name,
        "mel": bench_mel(),
        "inference": bench_inference(card, args.threads),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        result["listen_input"] = make_long_file(path, args.seconds)
        result["listen"] = bench_listen(path, args.threads)
    emit(result, args.out)


if __name__ == "__main__":
    main()
