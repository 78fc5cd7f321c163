"""Would blending in the zero-shot mapping help?  A variant's held-out predictions averaged with ``rtgenre-zeroshot``'s.

Usage::

    python tools/blend_zeroshot.py --held runs/cv.shipped.pkl --zeroshot runs/cv.zeroshot.pkl --cache cache/real

``--held`` and ``--zeroshot`` are held-out window probabilities as ``python -m
rtgenre.training.real --out runs/cv.json`` keeps them (``runs/cv.<variant>.pkl``;
the zero-shot mapping is not trained, so its predictions are the same whatever
the folds); ``--cache`` the real-data feature cache they came from.  For each
weight ``w`` the genre and mood probabilities become ``(1 - w) p + w p_zeroshot``
and the CV's clip figures (:func:`rtgenre.training.real.clip_metrics`) are
printed as JSON lines: the headline figures and GTZAN-10 genre accuracy per
data set.  With the predictions of ``--group-by dataset`` folds this asks
whether the mapping helps a model on recordings of a source it never heard.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

from rtgenre.training import real

BLENDED = ("genre", "mood")


def main() -> None:
    ap = argparse.ArgumentParser(description="A variant's held-out predictions blended with the zero-shot mapping's (JSON lines).")
    ap.add_argument("--held", type=Path, required=True, help="the variant's held-out predictions (runs/cv.<variant>.pkl)")
    ap.add_argument("--zeroshot", type=Path, required=True, help="the zero-shot mapping's (runs/cv.zeroshot.pkl)")
    ap.add_argument("--cache", type=Path, default=Path("cache/real"), help="the real-data feature cache of the CV")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.5", help="weights w of the zero-shot probabilities (default 0,0.1,0.2,0.3,0.5)")
    args = ap.parse_args()
    examples = {e.clip.id: e for e in real.load_examples(args.cache, log=None)}
    held, zeroshot = dict(pickle.loads(args.held.read_bytes())), dict(pickle.loads(args.zeroshot.read_bytes()))
    ids = [i for i in held if i in zeroshot]
    for w in (float(x) for x in args.weights.split(",")):
        probs = [{h: (1 - w) * p + w * zeroshot[i][h] if h in BLENDED and h in zeroshot[i] else p for h, p in held[i].items()} for i in ids]
        m = real.clip_metrics([examples[i] for i in ids], probs)
        print(json.dumps({"w": w, **real.headline(m), "genre_gtzan_by_dataset": m.get("genre_gtzan", {}).get("clip_accuracy_by_dataset")}), flush=True)


if __name__ == "__main__":
    main()
