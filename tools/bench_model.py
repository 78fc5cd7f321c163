"""Benchmark one 7.5 s window of the rtgenre model against the original musicnn.

Measures, in one run on this machine, milliseconds per window (469 frames x 96
Mel bands, batch 1, 2 intra-op threads for every framework):

* ``onnx``: the rtgenre model in ONNX Runtime (``--onnx``, default
  ``rtgenre/models/rtgenre.onnx``; input name and window from its card
  ``<name>.json`` when present, else the graph's first input and 469 x 96),
  session options as in :class:`rtgenre.inference.onnxruntime.OnnxRuntimeEngine`;
  ``--onnx-from-musicnn`` benchmarks an ONNX export of the torch musicnn port
  instead (useful before the CRNN exists);
* ``tf_musicnn``: the original musicnn (TensorFlow, ``MSD_musicnn``) on the same
  window, cut as musicnn's extractor does with its defaults (``input_length=3``,
  no overlap): 187-frame patches at frames 0 and 187 (frames 374..468 are
  dropped), one ``session.run`` per patch with batch 1 (``BATCH_SIZE = 1``);
  runs in the TensorFlow venv (``--tf-python``) in a subprocess;
* ``torch_port``: the torch port (:mod:`rtgenre.training.musicnn`) on the whole
  469-frame window, for reference.

The audio is the synthetic pop excerpt of ``tools/make_musicnn_reference.py``
turned into musicnn's log-Mel input. Output: JSON with median and p90 per
stage, the ratio ``tf_musicnn / onnx`` of the medians, threads, CPU model and
versions.

Usage (TF venv: see ``tools/import_musicnn.py``)::

    nice python tools/bench_model.py --tf-python /work/tfvenv/bin/python \\
        --musicnn /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl \\
        --out benchmarks/results/bench_model.json [--onnx PATH | --onnx-from-musicnn]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from benchutil import cpu_model, emit, timed_ms  # noqa: E402

WINDOW_FRAMES = 469
N_MELS = 96
PATCH = 187


def summary(ms: list[float]) -> dict[str, float]:
    """Median, p90 and count of a list of milliseconds."""
    return {"ms_median": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "n": len(ms)}


def extractor_patches(window: np.ndarray) -> np.ndarray:
    """The patches musicnn's ``batch_data`` cuts with ``n_frames = overlap = 187``."""
    starts = range(0, len(window) - PATCH + 1, PATCH)
    return np.stack([window[s : s + PATCH] for s in starts])


def tf_worker(source: Path, mel: Path, repeats: int, threads: int) -> dict:
    """Time the original musicnn (runs inside the TF venv)."""
    import tensorflow as tf
    from import_musicnn import unpacked
    from make_musicnn_reference import tf_session

    with tempfile.TemporaryDirectory() as tmp:
        pkg = unpacked(source, Path(tmp))
        sess, x, is_training, probs, _ = tf_session(pkg, "MSD_musicnn", threads)
    patches = extractor_patches(np.load(mel))

    def window() -> None:
        for p in patches:
            sess.run(probs, {x: p[None], is_training: False})

    ms = timed_ms(window, repeats)
    return {"ms": ms, "patches": len(patches), "tensorflow": tf.__version__, "numpy": np.__version__}


def onnx_input(path: Path, session) -> tuple[str, int, int]:
    """Input name, window frames and Mel bands: from the card beside ``path`` if any."""
    card = path.with_suffix(".json")
    if card.is_file():
        raw = json.loads(card.read_text())
        return raw["input"]["name"], int(raw["window_frames"]), int(raw["frontend"]["n_mels"])
    return session.get_inputs()[0].name, WINDOW_FRAMES, N_MELS


def bench_onnx(path: Path, window: np.ndarray, repeats: int, threads: int) -> dict:
    """ONNX Runtime ms/window (CPU provider, options as the rtgenre engine)."""
    import onnxruntime as ort

    from rtgenre.errors import ModelCorruptError
    from rtgenre.inference.onnxruntime import session_options

    sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    name, frames, mels = onnx_input(path, sess)
    if (frames, mels) != window.shape:
        raise ModelCorruptError(f"{path} takes windows of {frames} x {mels}, not {window.shape}", "benchmark a model with 469 x 96 windows")
    x = window[None].astype(np.float32)
    return {"path": str(path), "input": name, **summary(timed_ms(lambda: sess.run(None, {name: x}), repeats)), "onnxruntime": ort.__version__}


def bench_torch(window: np.ndarray, repeats: int, threads: int) -> dict:
    """Torch port ms/window (MSD_musicnn forward on the whole window)."""
    import torch

    from rtgenre.training.musicnn import load_teacher

    torch.set_num_threads(threads)
    model = load_teacher("MSD_musicnn")
    x = torch.from_numpy(window[None].astype(np.float32))

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return {"what": "MSD_musicnn forward on 469 frames, batch 1", **summary(timed_ms(run, repeats)), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, default=ROOT / "rtgenre" / "models" / "rtgenre.onnx")
    parser.add_argument("--onnx-from-musicnn", action="store_true", help="benchmark an ONNX export of the torch musicnn port")
    parser.add_argument("--tf-python", type=Path, help="python of the TensorFlow venv (omit to skip the TF timing)")
    parser.add_argument("--musicnn", type=Path, help="musicnn-0.1.0 wheel or unpacked copy (with --tf-python)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tf-worker", type=Path, help=argparse.SUPPRESS)  # mel .npy; internal
    args = parser.parse_args(argv)

    if args.tf_worker:
        print(json.dumps(tf_worker(args.musicnn, args.tf_worker, args.repeats, args.threads)))
        return 0

    from make_musicnn_reference import SR, log_mel, music

    from rtgenre.errors import DependencyMissingError, ModelMissingError, RtgenreError, UsageError

    try:
        if args.tf_python and not (args.musicnn and args.musicnn.exists()):
            raise UsageError("--tf-python needs --musicnn PATH (the musicnn-0.1.0 wheel or its unpacked copy)", "pip download --no-deps musicnn==0.1.0")
        if args.tf_python and not args.tf_python.is_file():
            raise DependencyMissingError(f"{args.tf_python} not found", "create the TF venv as described in tools/import_musicnn.py")
        window = log_mel(music((WINDOW_FRAMES + 1) * 256 / SR, np.random.default_rng(0)))[:WINDOW_FRAMES]
        result: dict = {
            "window": {"frames": WINDOW_FRAMES, "mels": N_MELS, "seconds": 7.5, "batch": 1},
            "threads": args.threads,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "loadavg_1min_at_start": os.getloadavg()[0],
            "versions": {"python": platform.python_version(), "numpy": np.__version__},
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = args.onnx
            if args.onnx_from_musicnn:
                from rtgenre.training.musicnn import export_onnx, load_teacher

                onnx_path = export_onnx(load_teacher("MSD_musicnn"), Path(tmp) / "musicnn-port.onnx")
            elif not onnx_path.is_file():
                raise ModelMissingError(f"{onnx_path} not found", "train the model first, or pass --onnx PATH or --onnx-from-musicnn")
            result["onnx"] = bench_onnx(onnx_path, window, args.repeats, args.threads)
            if args.onnx_from_musicnn:
                result["onnx"]["path"] = "torch musicnn port (MSD_musicnn) exported with rtgenre.training.musicnn.export_onnx"
            result["torch_port"] = bench_torch(window, args.repeats, args.threads)
            if args.tf_python:
                mel = Path(tmp) / "window.npy"
                np.save(mel, window)
                cmd = [str(args.tf_python), __file__, "--tf-worker", str(mel), "--musicnn", str(args.musicnn),
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode:
                    raise DependencyMissingError(f"the TF benchmark failed: {proc.stderr.strip().splitlines()[-1:]}", "check the TF venv (tools/import_musicnn.py)")
                tf_out = json.loads(proc.stdout.strip().splitlines()[-1])
                result["tf_musicnn"] = {
                    "what": f"original MSD_musicnn, {tf_out['patches']} patches of 187 frames (frames 0-373; the extractor's default cut), one session.run each, batch 1",
                    **summary(tf_out["ms"]),
                }
                result["versions"]["tensorflow"] = tf_out["tensorflow"]
                result["ratio_tf_over_onnx"] = result["tf_musicnn"]["ms_median"] / result["onnx"]["ms_median"]
                # the extractor's 2 patches cover 374 of the window's 469 frames: the same audio costs 469/374 as much
                covered = tf_out["patches"] * PATCH
                result["tf_musicnn"]["ms_median_per_window_audio"] = result["tf_musicnn"]["ms_median"] * WINDOW_FRAMES / covered
                result["ratio_tf_over_onnx_same_audio"] = result["tf_musicnn"]["ms_median_per_window_audio"] / result["onnx"]["ms_median"]
        result["versions"].update(onnxruntime=result["onnx"]["onnxruntime"], torch=result["torch_port"]["torch"])
    except RtgenreError as e:
        print(f"bench_model: error: {e}", file=sys.stderr)
        return int(e.code)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
