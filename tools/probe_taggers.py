"""Clip-level probe: what the musicnn wheel's taggers add to ``MSD_musicnn`` for genre and mood.

For every clip of the logistic baseline's set (:func:`rtgenre.training.real.logistic_baseline`:
the 4q and GTZAN excerpts of a real-data feature cache) the tool makes one
embedding per tagger:

* ``MSD_musicnn``, ``MTT_musicnn``: :func:`rtgenre.training.real.clip_embedding`
  of the cached frame features (mean over 187-frame patches of the penultimate
  layer and tags, 250 values);
* ``MSD_vgg``, ``MTT_vgg``: mean over the non-overlapping 187-frame patches of
  :meth:`rtgenre.training.musicnn.Vgg.embed` (pool5 and tags, 306 values), on
  the project's own log-Mel front end of the audio the cache was made from
  (``log_mel(fit_length(read_audio(file)), FRONTEND)``).

Then, for fold seeds ``0 .. --fold-seeds - 1``, standardisation and logistic
regression (C = 0.1) exactly as ``logistic_baseline`` does it: the folds are
:func:`~rtgenre.training.real.grouped_folds` over every trainable clip of the
cache, restricted to 4q and GTZAN; genre is the accuracy on the GTZAN-10
evaluation set, mood the quadrant macro-F1 of the 4q clips, both over the
held-out predictions of all folds pooled.  Feature sets: (a) ``MSD_musicnn``
(the baseline), (b) both musicnn, (c) each VGG alone and both, (d)
``MSD_musicnn`` and each VGG, (d') both musicnn and each VGG, (e) all four.
Each set's score per seed and its delta against (a) per seed go to ``--out``
(JSON); a Markdown table of the means goes to stdout.

The embeddings are kept in ``--work`` (one ``.npz`` per tagger, with the clip
ids; the VGG pass, about 1 s per clip on one core, saves its progress and
resumes), so a rerun only fits the regressions; delete the folder after the
cache changes.  Needs the ``train`` extra (torch, scikit-learn).

Usage::

    OMP_NUM_THREADS=1 python tools/probe_taggers.py --cache /work/cache/real --work /work/cache/probe \\
        --out benchmarks/results/probe_taggers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rtgenre.dsp.mel import log_mel
from rtgenre.evaluate import Scores
from rtgenre.training import real
from rtgenre.training.features import FRONTEND
from rtgenre.training.labels import MSD, MTT
from rtgenre.training.musicnn import MSD_VGG, MTT_VGG, VGGS, load_teacher
from rtgenre.training.realdata import PatchEncoder, fit_length, read_audio

TAGGERS = (MSD, MTT, MSD_VGG, MTT_VGG)
"""The embeddings, in the order they are concatenated."""
SETS = {
    "(a) MSD_musicnn": (MSD,),
    "(b) MSD+MTT musicnn": (MSD, MTT),
    "(c) MSD_vgg": (MSD_VGG,),
    "(c) MTT_vgg": (MTT_VGG,),
    "(c) MSD_vgg+MTT_vgg": (MSD_VGG, MTT_VGG),
    "(d) MSD_musicnn+MSD_vgg": (MSD, MSD_VGG),
    "(d) MSD_musicnn+MTT_vgg": (MSD, MTT_VGG),
    "(d') MSD+MTT musicnn+MSD_vgg": (MSD, MTT, MSD_VGG),
    "(d') MSD+MTT musicnn+MTT_vgg": (MSD, MTT, MTT_VGG),
    "(e) everything": TAGGERS,
}
"""Feature sets: name → taggers whose clip embeddings lie side by side; the first is the baseline."""
TASKS = {"genre": "GTZAN-10 accuracy", "mood": "quadrant macro-F1"}
K = 5
"""Folds, as the logistic baseline."""
C = 0.1
"""Inverse regularisation strength, as the logistic baseline."""
SAVE_EVERY = 100
"""Clips between two saves of the VGG pass's progress."""

Log = Callable[[str], None]


def clip_set(cache: Path, n_seeds: int, log: Log) -> tuple[list[real.Example], dict[str, np.ndarray]]:
    """The 4q and GTZAN examples (MSD features) and their labels and folds.

    Parameters
    ----------
    cache : Path
        Real-data feature cache.
    n_seeds : int
        Fold seeds ``0 .. n_seeds - 1``.
    log : callable
        Progress messages.

    Returns
    -------
    examples : list of Example
        The clips of the baseline's set, in cache order.
    meta : dict of str to ndarray
        ``ids``, ``genre`` (GTZAN-10 truth or ``""``), ``quadrant`` (``""`` for
        GTZAN), ``path`` (audio file), ``folds`` ``(n_seeds, n)``: each clip's
        fold under :func:`~rtgenre.training.real.grouped_folds` of every
        trainable clip at that seed, as ``logistic_baseline`` deals them.
    """
    everything = [e for e in real.load_examples(cache, log=None) if e.clip.dataset != "realmusic"]
    sel = [e for e in everything if e.clip.dataset in ("4q", "gtzan")]
    log(f"{len(everything)} trainable clips, {len(sel)} of 4q and GTZAN")
    folds = np.zeros((n_seeds, len(sel)), np.int64)
    for seed in range(n_seeds):
        fold_of = {id(everything[i]): f for f, idx in enumerate(real.grouped_folds(everything, K, seed)) for i in idx}
        folds[seed] = [fold_of[id(e)] for e in sel]
    meta = {
        "ids": np.array([e.clip.id for e in sel]),
        "genre": np.array([real.genre_truth(e) or "" for e in sel]),
        "quadrant": np.array([e.clip.labels.get("quadrant") or "" for e in sel]),
        "path": np.array([str(e.clip.file) for e in sel]),
        "folds": folds,
    }
    return sel, meta


def vgg_clip_embedding(encoders: dict[str, PatchEncoder], mel: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each tagger's outputs over a clip's non-overlapping 187-frame patches (:meth:`PatchEncoder.embed`).

    Parameters
    ----------
    encoders : dict of str to PatchEncoder
        Taggers by name.
    mel : ndarray, shape (frames, 96)
        The clip's log-Mel frames, at least :data:`~rtgenre.training.musicnn.PATCH_FRAMES`
        (a trailing part patch is left out).

    Returns
    -------
    dict of str to ndarray
        Name → ``(306,)`` float32.
    """
    return {name: torch.from_numpy(enc.embed(mel)).mean(dim=0).numpy() for name, enc in encoders.items()}


def _cached(path: Path, ids: np.ndarray) -> np.ndarray | None:
    """The embeddings saved at ``path`` if they are of exactly the clips ``ids``."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["emb"] if np.array_equal(z["ids"], ids) else None


def musicnn_embeddings(cache: Path, work: Path, sel: list[real.Example], log: Log) -> dict[str, np.ndarray]:
    """``MSD_musicnn`` and ``MTT_musicnn`` clip embeddings ``(n, 250)`` from the cache (or ``work``)."""
    ids = np.array([e.clip.id for e in sel])
    out = {}
    for name in (MSD, MTT):
        path = work / f"{name}.npz"
        emb = _cached(path, ids)
        if emb is None:
            net = load_teacher(name)
            if name == MSD:
                examples = sel
            else:
                by_id = {e.clip.id: e for e in real.load_examples(cache, datasets=("4q", "gtzan"), encoders=(name,), log=None)}
                examples = [by_id[i] for i in ids]
            emb = np.stack([real.clip_embedding(net, e) for e in examples]).astype(np.float32)
            np.savez(path, ids=ids, emb=emb)
            log(f"{name}: {emb.shape} clip embeddings -> {path}")
        out[name] = emb
    return out


def vgg_embeddings(work: Path, ids: np.ndarray, files: np.ndarray, log: Log) -> dict[str, np.ndarray]:
    """``MSD_vgg`` and ``MTT_vgg`` clip embeddings ``(n, 306)`` from the audio (or ``work``).

    Both taggers run on each clip's log-Mel in one pass; the pass saves its
    progress to ``work/vgg_partial.npz`` every :data:`SAVE_EVERY` clips and
    resumes from it.
    """
    paths = {name: work / f"{name}.npz" for name in VGGS}
    done = {name: _cached(p, ids) for name, p in paths.items()}
    if all(v is not None for v in done.values()):
        return done
    partial = work / "vgg_partial.npz"
    emb = {name: np.zeros((len(ids), 306), np.float32) for name in VGGS}
    start = 0
    if partial.is_file():
        with np.load(partial) as z:
            if np.array_equal(z["ids"], ids):
                start = int(z["done"])
                emb = {name: z[name].copy() for name in VGGS}
                log(f"vgg: resuming at clip {start}")
    encoders = {name: PatchEncoder(name) for name in VGGS}
    t0 = time.time()
    for k in range(start, len(ids)):
        mel = log_mel(fit_length(read_audio(files[k])), FRONTEND)
        for name, v in vgg_clip_embedding(encoders, mel).items():
            emb[name][k] = v
        if (k + 1) % SAVE_EVERY == 0 or k + 1 == len(ids):
            np.savez(partial, ids=ids, done=k + 1, **emb)
            log(f"vgg: {k + 1}/{len(ids)} clips ({time.time() - t0:.0f} s)")
    for name in VGGS:
        np.savez(paths[name], ids=ids, emb=emb[name])
    partial.unlink()
    return emb


def cross_validated_score(X: np.ndarray, truth: np.ndarray, folds: np.ndarray, task: str) -> float:
    """Pooled held-out score of standardisation + logistic regression, as ``logistic_baseline``.

    Parameters
    ----------
    X : ndarray, shape (n, d)
        Clip embeddings (float32).
    truth : ndarray of str, shape (n,)
        Label per clip, ``""`` where the clip is not in the task's set.
    folds : ndarray of int, shape (n,)
        Fold per clip.
    task : {"genre", "mood"}
        ``genre``: accuracy; ``mood``: macro-F1 over the labels present.

    Returns
    -------
    float
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t, p = [], []
    for f in range(K):
        tr = np.where((folds != f) & (truth != ""))[0]
        te = np.where((folds == f) & (truth != ""))[0]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        clf.fit(X[tr], truth[tr])
        p += list(clf.predict(X[te]))
        t += list(truth[te])
    s = Scores.of(t, p)
    return s.accuracy if task == "genre" else real.macro_f1(s, sorted(set(t)))


def probe(emb: dict[str, np.ndarray], meta: dict[str, np.ndarray], n_seeds: int, log: Log) -> dict:
    """Scores of every feature set and task at every fold seed, and deltas against the baseline."""
    truth = {"genre": meta["genre"], "mood": meta["quadrant"]}
    base = next(iter(SETS))
    scores: dict[str, dict[str, list[float]]] = {task: {} for task in TASKS}
    for name, taggers in SETS.items():
        X = np.hstack([emb[t] for t in taggers]).astype(np.float32)
        for task in TASKS:
            scores[task][name] = [cross_validated_score(X, truth[task], meta["folds"][s], task) for s in range(n_seeds)]
        log(f"{name}: genre {np.mean(scores['genre'][name]):.4f}, mood {np.mean(scores['mood'][name]):.4f}")
    out = {task: {} for task in TASKS}
    for task in TASKS:
        for name, taggers in SETS.items():
            v = np.array(scores[task][name])
            d = v - np.array(scores[task][base])
            out[task][name] = {
                "features": list(taggers),
                "dims": int(sum(emb[t].shape[1] for t in taggers)),
                "per_seed": [round(float(x), 6) for x in v],
                "mean": round(float(v.mean()), 6),
                "sd": round(float(v.std(ddof=1)), 6) if len(v) > 1 else 0.0,
                "delta_per_seed": [round(float(x), 6) for x in d],
                "delta_mean": round(float(d.mean()), 6),
                "delta_min": round(float(d.min()), 6),
                "delta_max": round(float(d.max()), 6),
                "seeds_better": int((d > 0).sum()),
            }
    return out


def table(results: dict, n_seeds: int) -> str:
    """Markdown table of :func:`probe`'s results."""
    head = ["features", "dims"]
    for task, what in TASKS.items():
        head += [f"{task}: {what}, mean ± sd", f"Δ {task} vs (a): mean [min, max], seeds > 0"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in SETS:
        cells = [name, str(results["genre"][name]["dims"])]
        for task in TASKS:
            r = results[task][name]
            cells += [f"{r['mean']:.4f} ± {r['sd']:.4f}",
                      f"{r['delta_mean']:+.4f} [{r['delta_min']:+.3f}, {r['delta_max']:+.3f}], {r['seeds_better']}/{n_seeds}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="real-data feature cache (rtgenre.training.realdata)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the clip embeddings (made if missing)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    ap.add_argument("--fold-seeds", type=int, default=11, help="fold seeds 0 .. N-1 (default 11)")
    args = ap.parse_args(argv)
    if args.fold_seeds < 1:
        ap.error("--fold-seeds must be at least 1")
    warnings.filterwarnings("ignore", module="sklearn")
    torch.set_num_threads(1)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    sel, meta = clip_set(args.cache, args.fold_seeds, log)
    emb = musicnn_embeddings(args.cache, args.work, sel, log)
    del sel
    emb.update(vgg_embeddings(args.work, meta["ids"], meta["path"], log))
    results = probe(emb, meta, args.fold_seeds, log)
    record = {
        "command": "python tools/probe_taggers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "method": "StandardScaler + LogisticRegression(C=0.1, max_iter=2000) on clip embeddings; grouped 5-fold CV with "
                  "the folds of rtgenre.training.real.logistic_baseline; pooled held-out scores",
        "n": {"clips": len(meta["ids"]), "genre": int((meta["genre"] != "").sum()), "mood": int((meta["quadrant"] != "").sum())},
        "dims": {t: int(emb[t].shape[1]) for t in TAGGERS},
        "fold_seeds": list(range(args.fold_seeds)),
        "baseline": next(iter(SETS)),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(results, args.fold_seeds))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
