"""Regenerate ``tests/data/musicnn_reference.npz`` with the original TF musicnn.

The reference inputs are log-Mel spectrograms computed exactly as musicnn's
``extractor.batch_data`` does (librosa melspectrogram at 16 kHz, n_fft 512,
hop 256, 96 bands, float16 rounding, ``log10(10000 x + 1)``) from signals
synthesised here (seeded, no external audio):

* ``patches`` (5, 187, 96): white noise, a logarithmic sine sweep, a vibrato
  organ chord, silence followed by a quiet tone, and 187 frames of the music
  excerpt;
* ``window`` (469, 96): a 7.5 s synthetic pop excerpt (drums, bass, chords,
  melody), the rtgenre window length.

For each checkpoint ``<ckpt>`` in (``MSD_musicnn``, ``MTT_musicnn``) the file
holds the original network's outputs (``is_training=False``, the graph of
``musicnn.models.define_model`` restored from the wheel's checkpoint, input
length left open so that 187 and 469 frames run through the same graph):

* ``<ckpt>/patch_probs`` (5, 50), ``<ckpt>/window_probs`` (1, 50): sigmoid tag
  probabilities;
* ``<ckpt>/window_features`` (len(frames), 753) and ``<ckpt>/patch0_features``:
  the per-frame back-end input (concatenation of front end and mid end) of the
  window and of the noise patch at the frame indices ``window_frames`` /
  ``patch_frames`` (edges, where the zero padding matters, and inner frames).

For each VGG checkpoint ``<ckpt>`` in (``MSD_vgg``, ``MTT_vgg``), which only
takes 187-frame patches, it holds the outputs of the graph of
``musicnn.models.vgg`` (``is_training=False``) on the ``patches``:

* ``<ckpt>/patch_probs`` (5, 50): sigmoid tag probabilities;
* ``<ckpt>/patch_pool5`` (5, 256): the last pooling flattened as the
  original's ``tf.layers.flatten`` (the dense layer's input).

Run in the TF venv of ``tools/import_musicnn.py`` (see its docstring)::

    /work/tfvenv/bin/python tools/make_musicnn_reference.py /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl

A full regeneration reproduces the inputs and the musicnn features exactly,
but the musicnn tag probabilities only to within 1.2e-7 (TensorFlow's
reductions do not sum in a fixed order).  The VGG arrays were therefore added
to the committed file with ``--add``, which keeps every array already in
``--out`` as it is and computes, on its inputs, only the checkpoints whose
arrays are missing::

    /work/tfvenv/bin/python tools/make_musicnn_reference.py --add /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_musicnn import CHECKPOINTS, VGG_CHECKPOINTS, unpacked  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "musicnn_reference.npz"
SR = 16000
PATCH = 187
WINDOW = 469
PATCH_FRAMES = np.array([0, 1, 2, 3, 40, 63, 64, 72, 73, 93, 113, 114, 123, 124, 183, 184, 185, 186])
WINDOW_FRAMES = np.array([0, 1, 5, 63, 64, 72, 73, 100, 234, 300, 395, 396, 404, 405, 466, 467, 468])


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Musicnn's input representation, as in ``musicnn.extractor.batch_data``."""
    import librosa

    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=SR, hop_length=256, n_fft=512, n_mels=96).T
    # float16 rounding as in musicnn; the product in float32 as numpy 1 promotes
    # it (numpy 2 would keep float16 and overflow to inf above a power of 6.55)
    return np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)


def tone(freq: np.ndarray | float, seconds: float, harmonics: int = 1, decay: float = 0.0) -> np.ndarray:
    """Sum of ``harmonics`` partials (1/k amplitudes) with an optional exponential decay."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, t.shape)) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    return y * np.exp(-decay * t)


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic pop excerpt at 120 bpm: kick, snare, hi-hat, bass, chords, melody."""
    n = int(seconds * SR)
    out = np.zeros(n + SR)
    beat = SR // 2
    chords = [[60, 64, 67], [67, 71, 74], [69, 72, 76], [65, 69, 72]]  # C G Am F

    def midi(m: float) -> float:
        return 440.0 * 2 ** ((m - 69) / 12)

    def add(start: int, sig: np.ndarray) -> None:
        out[start : start + len(sig)] += sig

    for b in range(int(seconds * 2) + 1):
        s = b * beat
        chord = chords[(b // 4) % 4]
        sweep = 50 + 100 * np.exp(-np.arange(int(0.25 * SR)) / (0.03 * SR))
        if b % 2 == 0:
            add(s, 0.8 * tone(sweep, 0.25, decay=12))
        else:
            add(s, 0.4 * rng.standard_normal(int(0.2 * SR)) * np.exp(-np.arange(int(0.2 * SR)) / (0.04 * SR)))
            add(s, 0.3 * tone(180.0, 0.2, decay=20))
        for half in (0, beat // 2):
            hat = np.diff(rng.standard_normal(int(0.05 * SR) + 1)) * np.exp(-np.arange(int(0.05 * SR)) / (0.008 * SR))
            add(s + half, 0.15 * hat)
        add(s, 0.35 * tone(midi(chord[0] - 24), 0.45, harmonics=6, decay=3))
        if b % 4 == 0:
            for m in chord:
                add(s, 0.12 * tone(midi(m), 2.0, harmonics=4, decay=0.8))
        mel_note = chord[b % 3] + 12
        vib = midi(mel_note) * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * np.arange(int(0.4 * SR)) / SR))
        add(s, 0.2 * tone(vib, 0.4, harmonics=3, decay=2))
    y = out[:n]
    return 0.5 * y / np.abs(y).max()


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """The reference patches (5, 187, 96) and window (469, 96)."""
    rng = np.random.default_rng(20191105)
    secs = (PATCH + 2) * 256 / SR
    t = np.arange(int(secs * SR)) / SR
    noise = 0.1 * rng.standard_normal(len(t))
    f0, f1 = 50.0, 7000.0
    sweep = 0.3 * np.sin(2 * np.pi * f0 * secs / np.log(f1 / f0) * ((f1 / f0) ** (t / secs) - 1))
    vib = 220 * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))
    organ = 0.1 * sum(tone(vib * r, secs, harmonics=8) for r in (1.0, 1.25, 1.5))
    quiet = np.where(t < secs / 2, 0.0, 0.01 * np.sin(2 * np.pi * 440 * t))
    window = log_mel(music(WINDOW * 256 / SR, rng))[:WINDOW]
    patches = [log_mel(s)[:PATCH] for s in (noise, sweep, organ, quiet)] + [window[150 : 150 + PATCH]]
    return np.stack(patches), window


def tf_session(pkg: Path, ckpt: str, threads: int = 0):
    """The original graph (``musicnn.models.define_model``), restored from the checkpoint.

    Parameters
    ----------
    pkg : Path
        The unpacked ``musicnn`` package folder.
    ckpt : str
        ``MSD_musicnn`` or ``MTT_musicnn``.
    threads : int
        Intra-op threads (0: TensorFlow's default); one inter-op thread.

    Returns
    -------
    tuple
        ``(session, x, is_training, probs, feats)``: ``x`` is the
        ``(batch, frames, 96)`` placeholder with open input length, ``probs``
        the sigmoid tags, ``feats`` the per-frame back-end input (batch, frames, 753).
    """
    tf, models = _new_graph(pkg)
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, None, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, timbral, temporal, cnn1, cnn2, cnn3, *_ = models.define_model(x, is_training, ckpt, 50)
        probs = tf.nn.sigmoid(y)
        feats = tf.concat([timbral, temporal] + [tf.squeeze(c, [3]) for c in (cnn1, cnn2, cnn3)], 2)
    return _restored(tf, pkg, ckpt, threads), x, is_training, probs, feats


def vgg_tf_session(pkg: Path, ckpt: str, threads: int = 0):
    """The original VGG graph (``musicnn.models.vgg``), restored from the checkpoint.

    Parameters
    ----------
    pkg : Path
        The unpacked ``musicnn`` package folder.
    ckpt : str
        ``MSD_vgg`` or ``MTT_vgg``.
    threads : int
        As :func:`tf_session`.

    Returns
    -------
    tuple
        ``(session, x, is_training, probs, pool5)``: ``x`` is the
        ``(batch, 187, 96)`` placeholder (the VGG needs that length),
        ``probs`` the sigmoid tags, ``pool5`` the flattened last pooling (batch, 256).
    """
    tf, models = _new_graph(pkg)
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, PATCH, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, *_, pool5 = models.define_model(x, is_training, ckpt, 50)
        probs = tf.nn.sigmoid(y)
        flat = tf.compat.v1.layers.flatten(pool5)
    return _restored(tf, pkg, ckpt, threads), x, is_training, probs, flat


def _new_graph(pkg: Path):
    """TensorFlow in graph mode with a fresh default graph, and the wheel's ``musicnn.models``."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    sys.path.insert(0, str(pkg.parent))
    from musicnn import models

    tf.compat.v1.reset_default_graph()
    return tf, models


def _restored(tf, pkg: Path, ckpt: str, threads: int):
    """A session of the default graph with the checkpoint's variables restored."""
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1 if threads else 0)
    sess = tf.compat.v1.Session(config=config)
    tf.compat.v1.train.Saver().restore(sess, str(pkg / ckpt) + "/")
    return sess


def run_tf(pkg: Path, ckpt: str, patches: np.ndarray, window: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the original TF graph for one checkpoint."""
    sess, x, is_training, probs, feats = tf_session(pkg, ckpt)
    with sess:
        p_probs, p_feats = sess.run([probs, feats], {x: patches, is_training: False})
        w_probs, w_feats = sess.run([probs, feats], {x: window[None], is_training: False})
    return {
        f"{ckpt}/patch_probs": p_probs,
        f"{ckpt}/window_probs": w_probs,
        f"{ckpt}/patch0_features": p_feats[0, PATCH_FRAMES],
        f"{ckpt}/window_features": w_feats[0, WINDOW_FRAMES],
    }


def run_tf_vgg(pkg: Path, ckpt: str, patches: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the original TF VGG graph for one checkpoint."""
    sess, x, is_training, probs, pool5 = vgg_tf_session(pkg, ckpt)
    with sess:
        p_probs, p_pool5 = sess.run([probs, pool5], {x: patches, is_training: False})
    return {f"{ckpt}/patch_probs": p_probs, f"{ckpt}/patch_pool5": p_pool5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="musicnn-0.1.0-py3-none-any.whl or its unpacked folder")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--add", action="store_true",
                        help="keep the arrays already in --out and compute only the missing checkpoints' on its inputs")
    args = parser.parse_args(argv)
    if args.add:
        with np.load(args.out) as npz:
            data = {k: npz[k] for k in npz.files}
        patches, window = data["patches"], data["window"]
    else:
        patches, window = inputs()
        data = {"patches": patches, "window": window, "patch_frames": PATCH_FRAMES, "window_frames": WINDOW_FRAMES}
    with tempfile.TemporaryDirectory() as tmp:
        pkg = unpacked(args.source, Path(tmp))
        for ckpt in CHECKPOINTS:
            if f"{ckpt}/patch_probs" not in data:
                data.update(run_tf(pkg, ckpt, patches, window))
        for ckpt in VGG_CHECKPOINTS:
            if f"{ckpt}/patch_probs" not in data:
                data.update(run_tf_vgg(pkg, ckpt, patches))
    np.savez_compressed(args.out, **{k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in data.items()})
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
