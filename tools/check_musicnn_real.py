"""Check the torch musicnn port against the original on real music files.

Complements ``tests/test_musicnn_parity.py`` (synthetic inputs, runs in CI)
with music the caller provides (default ``../shared/data/real-music``; nothing
of it is stored).  In the TF venv, a subprocess cuts every file exactly as
musicnn's own ``extractor.batch_data`` does (librosa load at 16 kHz, 187-frame
patches without overlap) and runs the original graph of both checkpoints; this
process runs the torch port on the same patches.  Prints JSON: files, patches,
the largest absolute difference of the tag probabilities per checkpoint, and
the top 3 ``MSD_musicnn`` tags per file.

Usage (TF venv: see ``tools/import_musicnn.py``)::

    nice python tools/check_musicnn_real.py --tf-python /work/tfvenv/bin/python \\
        --musicnn /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl [--dir DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

AUDIO = (".mp3", ".wav", ".flac", ".ogg")


def tf_worker(source: Path, folder: Path, out: Path) -> None:
    """Original patches and tag probabilities of every file (runs in the TF venv)."""
    from import_musicnn import CHECKPOINTS, unpacked
    from make_musicnn_reference import tf_session

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO)
    data = {}
    with tempfile.TemporaryDirectory() as tmp:
        pkg = unpacked(source, Path(tmp))
        sys.path.insert(0, str(pkg.parent))
        from musicnn.extractor import batch_data

        for f in files:
            data[f"{f.stem}/patches"] = batch_data(str(f), 187, 187)[0].astype(np.float32)
        for ckpt in CHECKPOINTS:
            sess, x, is_training, probs, _ = tf_session(pkg, ckpt)
            with sess:
                for f in files:
                    patches = data[f"{f.stem}/patches"]
                    data[f"{f.stem}/{ckpt}"] = np.concatenate([sess.run(probs, {x: p[None], is_training: False}) for p in patches])
    np.savez(out, **data)


def compare(ref: Path) -> dict:
    """Run the torch port on the worker's patches; largest differences and top tags."""
    import torch

    from rtgenre.training.musicnn import TEACHERS, load_teacher, teacher_tags

    with np.load(ref) as npz:
        data = {k: npz[k] for k in npz.files}
    names = sorted({k.split("/")[0] for k in data})
    result: dict = {"files": len(names), "patches": int(sum(len(data[f"{n}/patches"]) for n in names))}
    for ckpt in TEACHERS:
        model, tags, worst = load_teacher(ckpt), teacher_tags(ckpt), 0.0
        for n in names:
            with torch.no_grad():
                got = model(torch.from_numpy(data[f"{n}/patches"])).numpy()
            worst = max(worst, float(np.abs(got - data[f"{n}/{ckpt}"]).max()))
            if ckpt == "MSD_musicnn":
                result.setdefault("top3_MSD_musicnn", {})[n] = [tags[i] for i in np.argsort(-got.mean(0))[:3]]
        result[f"max_abs_diff_{ckpt}"] = worst
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf-python", type=Path, required=True, help="python of the TensorFlow venv")
    parser.add_argument("--musicnn", type=Path, required=True, help="musicnn-0.1.0 wheel or unpacked copy")
    parser.add_argument("--dir", type=Path, default=ROOT.parent / "shared" / "data" / "real-music")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tf-worker", type=Path, help=argparse.SUPPRESS)  # output .npz; internal
    args = parser.parse_args(argv)
    if args.tf_worker:
        tf_worker(args.musicnn, args.dir, args.tf_worker)
        return 0
    if not args.dir.is_dir():
        print(f"check_musicnn_real: error: {args.dir} is not a folder. Pass --dir with music files.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "tf.npz"
        cmd = [str(args.tf_python), __file__, "--tf-worker", str(ref), "--musicnn", str(args.musicnn), "--tf-python", str(args.tf_python), "--dir", str(args.dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
        if proc.returncode:
            print(f"check_musicnn_real: error: the TF side failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = compare(ref)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
