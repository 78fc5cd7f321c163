"""Re-export an exported rtgenre model with a similarity hash layer trained on the real-data feature cache.

    python tools/attach_hash.py [--model CARD] --cache /work/cache/real --bits 128 --out DIR --name rtgenre-crnn

writes DIR/<name>.onnx (heads + ``hash``), <name>.backend.npz, <name>.hash.npz and <name>.json (with ``"hash": {"output": "hash", "bits": K}``
and ``hash_training``: the settings chosen on a grouped validation split, :func:`rtgenre.training.hashing.select_and_fit`); a streaming
model (the shipped one) also gets its encoder, step and back-end graphs again.  To replace the shipped layer:
``python tools/attach_hash.py --out rtgenre/models --name rtgenre``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtgenre.training.hashing import attach_hash_layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="card of the exported model (default: the shipped one)")
    p.add_argument("--cache", type=Path, default=Path("/work/cache/real"), help="real-data feature cache (index.jsonl + <id>.npy)")
    p.add_argument("--bits", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder (not the shipped models' folder unless you mean to replace the shipped model)")
    p.add_argument("--name", required=True)
    args = p.parse_args()
    print(attach_hash_layer(args.model, args.cache, args.bits, args.out, args.name, seed=args.seed))


if __name__ == "__main__":
    main()
