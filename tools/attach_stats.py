"""Add the back end on window statistics (card ``split.stats``) to an exported streaming model, leaving every other file as it is.

    python tools/attach_stats.py [--model CARD]

writes ``<name>.stats.onnx`` beside the card (from its ``<name>.backend.npz`` and, for a hashed model,
``<name>.hash.npz``: :func:`rtgenre.training.export.export_stats_backend`), adds ``split.stats`` to the
card, and checks the new graph against the card's back-end graph with ONNX Runtime on windows of
random features (and, for a model with a patch encoder, random patch statistics beside them): the
largest difference of any output is printed, and above ``--atol`` nothing is written.
New exports (:func:`rtgenre.training.export.export_split_model`) write the graph themselves.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> int:
    from rtgenre.card import load_card, resolve_model
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.training.export import export_stats_backend, load_backend, reads_window_stats, save_card
    from rtgenre.training.hashing import load_hash_layer
    from rtgenre.training.real import window_stats

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="card of the exported streaming model (default: the shipped one)")
    p.add_argument("--atol", type=float, default=1e-5, help="largest difference of any output allowed against the back-end graph")
    args = p.parse_args()
    card_path = resolve_model(args.model)
    card = load_card(card_path)
    if card.split is None:
        sys.exit(f"{card.name} is not a streaming model")
    folder = card_path.parent
    backend = load_backend(folder / f"{card.name}.backend.npz")
    if not reads_window_stats(backend):
        sys.exit(f"the back end of {card.name} reads more of a window than its statistics")
    layer = load_hash_layer(folder / f"{card.name}.hash.npz")[0] if card.hash else None
    path = folder / f"{card.name}.stats.onnx"
    patch_dim = card.split.patch.dim if card.split.patch is not None else 0
    entry = export_stats_backend(backend, path, layer, patch_dim)

    import torch

    raw = json.loads(card_path.read_text())
    raw["split"]["stats"] = entry
    trial = folder / f".{card.name}.stats-check.json"
    save_card(trial, raw)
    try:
        feats = np.random.default_rng(0).standard_normal((8, card.window_frames, card.split.encoder.feature_dim)).astype(np.float32)
        feats *= np.linspace(0.2, 3.0, card.window_frames, dtype=np.float32)[None, :, None]
        patches = np.random.default_rng(1).standard_normal((8, 2 * patch_dim)).astype(np.float32) if patch_dim else None
        mx, mean, _ = window_stats(torch.from_numpy(feats), entry["pool"])
        on_stats = OnnxRuntimeEngine(load_card(trial)).head(np.stack([mx.numpy(), mean.numpy()], axis=1), patches)
        on_window = OnnxRuntimeEngine(card, stats=False).head(feats, patches)
    finally:
        trial.unlink()
    worst = max(float(np.abs(on_stats[k] - on_window[k]).max()) for k in on_window)
    print(f"{path.name}: largest difference from the back-end graph on 8 windows: {worst:.2e}")
    if worst > args.atol:
        path.unlink()
        sys.exit(f"above --atol {args.atol}: nothing written")
    save_card(card_path, raw)
    print(f"wrote {path} and split.stats in {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
