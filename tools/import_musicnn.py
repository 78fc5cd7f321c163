"""Convert the musicnn TF1 checkpoints to the npz weights of the torch port.

Reads ``MSD_musicnn`` and ``MTT_musicnn`` and the two VGG taggers ``MSD_vgg``
and ``MTT_vgg`` from the ``musicnn`` 0.1.0 wheel (or an unpacked copy of it)
and writes, for :mod:`rtgenre.training.musicnn`:

* ``rtgenre/models/musicnn/MSD_musicnn.npz``, ``rtgenre/models/musicnn/MTT_musicnn.npz``:
  float32 arrays named by the torch parameter / buffer names of
  :class:`~rtgenre.training.musicnn.Musicnn` (``frontend.0.conv.weight``,
  ``pool_bn.running_var``, ...), kernels already in torch layout;
* ``rtgenre/models/musicnn/MSD_vgg.npz``, ``rtgenre/models/musicnn/MTT_vgg.npz``:
  the same for :class:`~rtgenre.training.musicnn.Vgg` (``blocks.0.conv.weight``, ...);
* ``rtgenre/models/musicnn/tags.json``: ``{"MSD_musicnn": [50 tags], "MTT_musicnn": [...],
  "MSD_vgg": [...], "MTT_vgg": [...]}`` taken from the wheel's
  ``musicnn/configuration.py`` (a checkpoint's list is the one the wheel's
  extractor gives it: ``MSD_LABELS`` for the ``MSD_*`` ones, ``MTT_LABELS`` for
  the ``MTT_*`` ones);
* ``rtgenre/models/musicnn/LICENSE``: the wheel's ISC licence.

It needs TensorFlow to read the checkpoints, in a throw-away venv outside the
repository (Python 3.11)::

    python3.11 -m venv /work/tfvenv
    /work/tfvenv/bin/pip install "tensorflow-cpu==2.15.1" "librosa<0.11"
    pip download --no-deps musicnn==0.1.0 -d /tmp/musicnn
    /work/tfvenv/bin/python tools/import_musicnn.py /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl

(``librosa`` is only needed by ``tools/make_musicnn_reference.py``.)  Running
it again gives identical files.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "rtgenre" / "models" / "musicnn"
CHECKPOINTS = {"MSD_musicnn": "MSD_LABELS", "MTT_musicnn": "MTT_LABELS"}
VGG_CHECKPOINTS = {"MSD_vgg": "MSD_LABELS", "MTT_vgg": "MTT_LABELS"}

# TF layer (name given by tf.compat.v1.layers in creation order, see
# musicnn/models.py) -> torch module of rtgenre.training.musicnn.Musicnn
CONV2D = {"conv2d": "frontend.0", "conv2d_1": "frontend.1", "conv2d_2": "frontend.2",
          "conv2d_3": "frontend.3", "conv2d_4": "frontend.4"}
CONV1D = {"conv2d_5": "midend.0", "conv2d_6": "midend.1", "conv2d_7": "midend.2"}
DENSE = {"dense": "dense", "dense_1": "output"}
BATCH_NORM = {"batch_normalization": "input_bn", "batch_normalization_1": "frontend.0.bn",
              "batch_normalization_2": "frontend.1.bn", "batch_normalization_3": "frontend.2.bn",
              "batch_normalization_4": "frontend.3.bn", "batch_normalization_5": "frontend.4.bn",
              "batch_normalization_6": "midend.0.bn", "batch_normalization_7": "midend.1.bn",
              "batch_normalization_8": "midend.2.bn", "batch_normalization_9": "pool_bn",
              "batch_normalization_10": "dense_bn"}
BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

# TF layer of musicnn.models.vgg -> torch module of rtgenre.training.musicnn.Vgg
VGG_CONV2D = {f"{i + 1}CNN": f"blocks.{i}" for i in range(5)}
VGG_DENSE = {"dense": "dense"}
VGG_BATCH_NORM = {"batch_normalization": "input_bn", **{f"batch_normalization_{i + 1}": f"blocks.{i}.bn" for i in range(5)}}
VGG_TABLES = {"conv2d": VGG_CONV2D, "conv1d": {}, "dense": VGG_DENSE, "batch_norm": VGG_BATCH_NORM}


def convert(get, conv2d: dict[str, str] = CONV2D, conv1d: dict[str, str] = CONV1D, dense: dict[str, str] = DENSE,
            batch_norm: dict[str, str] = BATCH_NORM) -> dict[str, np.ndarray]:
    """Map checkpoint variables to torch names and layouts.

    Parameters
    ----------
    get : callable
        ``get(tf_variable_name) -> ndarray``.
    conv2d, conv1d, dense, batch_norm : dict of str to str
        TF layer → torch module, per kind of layer (a 2-D convolution's
        module holds ``conv``); the defaults are musicnn's, :data:`VGG_TABLES`
        the VGG tagger's.

    Returns
    -------
    dict of str to ndarray
        Torch ``state_dict`` name → float32 array.
    """
    out: dict[str, np.ndarray] = {}
    for tf_name, torch_name in conv2d.items():
        # TF (kh, kw, in, out) -> torch Conv2d (out, in, kh, kw)
        out[f"{torch_name}.conv.weight"] = get(f"{tf_name}/kernel").transpose(3, 2, 0, 1)
        out[f"{torch_name}.conv.bias"] = get(f"{tf_name}/bias")
    for tf_name, torch_name in conv1d.items():
        # TF (7, channels, 1, out) over a (time, channels, 1) image -> Conv1d (out, channels, 7)
        out[f"{torch_name}.conv.weight"] = get(f"{tf_name}/kernel")[:, :, 0, :].transpose(2, 1, 0)
        out[f"{torch_name}.conv.bias"] = get(f"{tf_name}/bias")
    for tf_name, torch_name in dense.items():
        out[f"{torch_name}.weight"] = get(f"{tf_name}/kernel").T
        out[f"{torch_name}.bias"] = get(f"{tf_name}/bias")
    for tf_name, torch_name in batch_norm.items():
        for tf_field, torch_field in BN_FIELDS.items():
            out[f"{torch_name}.{torch_field}"] = get(f"{tf_name}/{tf_field}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def read_labels(configuration: Path) -> dict[str, list[str]]:
    """Tag lists from ``musicnn/configuration.py`` without importing it."""
    wanted = {**CHECKPOINTS, **VGG_CHECKPOINTS}
    consts = {}
    for node in ast.parse(configuration.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in wanted.values():
                consts[name] = ast.literal_eval(node.value)
    return {ckpt: consts[var] for ckpt, var in wanted.items()}


def unpacked(source: Path, tmp: Path) -> Path:
    """The ``musicnn`` package folder of a wheel or of an unpacked copy."""
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            zf.extractall(tmp)
        source = tmp
    pkg = source / "musicnn" if (source / "musicnn").is_dir() else source
    if not (pkg / "configuration.py").is_file():
        sys.exit(f"import_musicnn: {source} is neither the musicnn wheel nor an unpacked copy of it")
    return pkg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="musicnn-0.1.0-py3-none-any.whl or its unpacked folder")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: rtgenre/models/musicnn)")
    args = parser.parse_args(argv)

    import tensorflow as tf  # only in the throw-away TF venv

    with tempfile.TemporaryDirectory() as tmp:
        pkg = unpacked(args.source, Path(tmp))
        args.out.mkdir(parents=True, exist_ok=True)
        for ckpt in [*CHECKPOINTS, *VGG_CHECKPOINTS]:
            reader = tf.compat.v1.train.NewCheckpointReader(str(pkg / ckpt) + "/")
            arrays = convert(reader.get_tensor, **(VGG_TABLES if ckpt in VGG_CHECKPOINTS else {}))
            np.savez(args.out / f"{ckpt}.npz", **arrays)
            n = sum(a.size for a in arrays.values())
            print(f"{ckpt}: {len(arrays)} arrays, {n} values -> {args.out / (ckpt + '.npz')}")
        labels = read_labels(pkg / "configuration.py")
        (args.out / "tags.json").write_text(json.dumps(labels, indent=1) + "\n")
        licence = pkg.parent / "musicnn-0.1.0.dist-info" / "LICENSE.md"
        if licence.is_file():
            shutil.copyfile(licence, args.out / "LICENSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
