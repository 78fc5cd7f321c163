"""Would another ``voice`` threshold meet the voice target?  A nested choice on the CV's held-out predictions.

Usage::

    python tools/voice_threshold.py --held runs/cv.shipped.pkl --cache cache/real

``--held`` is a variant's held-out window probabilities as ``python -m
rtgenre.training.real --out runs/cv.json`` keeps them (``runs/cv.<variant>.pkl``);
``--cache`` the real-data feature cache they came from (only its index is read:
the clips and the grouped folds the CV used, :func:`rtgenre.training.real.grouped_folds`).

For each fold, the threshold in 0.05 … 0.95 with the largest detection minus
false-positive rate (Youden's J) on the *other* folds' solo recordings (solo
singers against every solo instrument) is applied to that fold's held-out clips;
a clip has voice when the majority of its windows reach the threshold (as the
card's CV counts it).  It prints the nested figures, and for each threshold the
share of clips with voice per group (4q songs, GTZAN genres, the speech set's
music and speech), which is what a lower threshold costs on music without a
singer.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from rtgenre.training import real, vocab
from rtgenre.training.realdata import read_index

GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)
SHOWN = (0.5, 0.4, 0.3, 0.25)


def has_voice(windows: np.ndarray, threshold: float) -> bool:
    """A clip has voice when the majority of its windows' voice probabilities reach ``threshold``."""
    return bool((windows >= threshold).mean() > 0.5)


def rate(clips: list[np.ndarray], threshold: float) -> float:
    return float(np.mean([has_voice(v, threshold) for v in clips])) if clips else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held", type=Path, required=True, help="held-out window probabilities (runs/cv.<variant>.pkl)")
    ap.add_argument("--cache", type=Path, required=True, help="the real-data feature cache (its index.jsonl)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clips = [c for c in read_index(args.cache) if c.frames >= real.WINDOW_FRAMES]  # load_examples' clips, in its order
    fold_of = {}
    for k, idx in enumerate(real.grouped_folds([SimpleNamespace(clip=c) for c in clips], args.folds, args.seed)):
        fold_of.update((clips[i].id, k) for i in idx)
    by_id = {c.id: c for c in clips}
    vi = vocab.INSTRUMENTS.index("voice")
    solo, groups = [], defaultdict(list)  # solo: (fold, voice?, medley clarinet?, windows)
    for cid, probs in pickle.loads(args.held.read_bytes()):
        clip, v = by_id[cid], probs["instruments"][:, vi]
        if clip.dataset in ("medley", "freesound"):
            family = real.instrument_family(clip.labels["instrument"])
            solo.append((fold_of[cid], family == "voice", clip.dataset == "medley" and family == "winds", v))
        elif clip.dataset == "gtzan":
            groups[f"gtzan/{clip.labels['genre']}"].append(v)
        elif clip.dataset in ("4q", "speech"):
            groups[clip.dataset if clip.dataset == "4q" else f"speech set/{clip.labels['label']}"].append(v)
    chosen, nested = {}, defaultdict(list)
    for k in range(args.folds):
        pos = [s[3] for s in solo if s[0] != k and s[1]]
        neg = [s[3] for s in solo if s[0] != k and not s[1]]
        t = float(GRID[int(np.argmax([rate(pos, t) - rate(neg, t) for t in GRID]))])
        chosen[k] = t
        for _, voice, clarinet, v in (s for s in solo if s[0] == k):
            nested["singers" if voice else "solo instruments"].append(has_voice(v, t))
            if clarinet:
                nested["clarinets"].append(has_voice(v, t))
    out = {
        "command": f"python tools/voice_threshold.py --held {args.held} --cache {args.cache}",
        "threshold_per_fold": chosen,
        "nested_voice_detected": {k: round(float(np.mean(v)), 4) for k, v in nested.items()},
        "share_with_voice": {g: {str(t): round(rate(v, t), 3) for t in SHOWN} for g, v in sorted(groups.items())},
        "solo_at": {str(t): {"singers": round(rate([s[3] for s in solo if s[1]], t), 4),
                             "solo instruments": round(rate([s[3] for s in solo if not s[1]], t), 4)} for t in SHOWN},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
