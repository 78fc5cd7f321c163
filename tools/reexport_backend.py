"""Export a split model's back-end graph again from its saved weights, after a change to how it is exported.

Rebuilds the card's back end in torch (:func:`rtgenre.training.export.load_torch_model`:
the same weights), exports ``<name>.backend.onnx`` with the current exporter to
a temporary file, checks that every output (heads, ``hash``, embedding) agrees
with the graph it replaces within ``--atol`` on random non-negative frame
features (the encoder's end in a ReLU), and only then replaces the graph and
its checksum in the card.  The parity tests of ``make test`` then check the
streaming path against the whole-window graph on real audio.  The whole-window graph ``<name>.onnx`` is left as it is
(its checksum names the model, e.g. in similarity libraries).

Usage::

    python tools/reexport_backend.py [--model rtgenre] [--atol 1e-4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rtgenre.card import file_sha256, load_card, resolve_model
from rtgenre.training.export import export_backend, load_torch_model, save_card
from rtgenre.training.hashing import HASH_OUTPUT


def _outputs(path: Path, feats: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"feats": feats})))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name or card path (default: the shipped model)")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest difference allowed between the old and new graphs' outputs")
    args = ap.parse_args()
    card_path = resolve_model(args.model)
    card = load_card(card_path)
    if card.split is None:
        raise SystemExit(f"{card.name} has no split back end")
    model = load_torch_model(card)
    old = card.split.backend.onnx_path
    feats = (2.0 * np.random.default_rng(0).random((8, card.window_frames, card.split.encoder.feature_dim))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / old.name
        export_backend(model.backend, new, extra_outputs=(HASH_OUTPUT,) if card.raw.get("hash") else ())
        a, b = _outputs(old, feats), _outputs(new, feats)
        if a.keys() != b.keys():
            raise SystemExit(f"outputs differ: {sorted(a)} vs {sorted(b)}")
        worst = {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a}
        print(json.dumps({"largest_difference": worst}))
        if max(worst.values()) > args.atol:
            raise SystemExit(f"the new graph differs by more than {args.atol:g}: not replaced")
        old.write_bytes(new.read_bytes())
    raw = json.loads(card_path.read_text())
    raw["split"]["backend"]["onnx_sha256"] = file_sha256(old)
    save_card(card_path, raw)
    print(f"replaced {old} ({file_sha256(old)[:12]})", file=sys.stderr)


if __name__ == "__main__":
    main()
