"""``rtgenre train`` and ``rtgenre eval``: options and entry points.

``train`` has two modes:

* on corpora (default ``corpora/*``): cache features and teacher tags
  (:mod:`rtgenre.training.features`), distil the back end and heads, measure
  agreement with the teachers on held-out tracks and export the model;
* on your own data (``--data DIR`` in GTZAN layout ``DIR/<label>/*``, or
  ``--data LABELS.csv`` with a ``file`` column and ``--column``): train a
  fresh window back end (:class:`rtgenre.training.real.WindowBackend`, the
  shipped model's kind) with one head (``--head``; label set = the labels
  found) on the frozen musicnn encoder, with optional k-fold
  cross-validation whose folds keep the values of ``--group-by`` (e.g. the
  artist) apart, and export the result as a new model.  The back end starts
  from scratch, so the folds' figures never see their test clips.

``eval`` lives in :mod:`rtgenre.evaluate` (torch-free) and is re-exported here.
Torch is imported only when ``train`` runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from rtgenre.card import ENGINES_DIR
from rtgenre.errors import DataInvalidError, UsageError
from rtgenre.evaluate import add_eval_arguments, labelled_files, run_eval

__all__ = ["add_eval_arguments", "add_train_arguments", "run_eval", "run_train"]

WINDOW_HOP = 94  # frames between the fixed evaluation windows (1.5 s)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtgenre train``."""
    parser.add_argument("--corpus", type=Path, nargs="+", default=None, help="corpus folders with manifest.jsonl (default: every folder in corpora/)")
    parser.add_argument("--data", type=Path, default=None,
                        help="your own labelled audio: DIR/<label>/*.wav|ogg|mp3, or a labels CSV (a 'file' column relative to the CSV's folder, and --column): train a new model on it")
    parser.add_argument("--column", default=None, help="with --data CSV: the label column (default: the CSV's first column after 'file')")
    parser.add_argument("--head", default=None, help="with --data: name of the head the labels train (default: the --column name, or genre)")
    parser.add_argument("--group-by", default=None, metavar="COLUMN", help="with --data CSV: folds keep clips with the same value of this column together (e.g. artist)")
    parser.add_argument("--folds", type=int, default=1, help="with --data: k-fold cross-validation by clip (grouped with --group-by) before the final fit (default: 1 = none)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 12 on corpora, 20 with --data)")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: 150 on corpora, 20 with --data)")
    parser.add_argument("--batch", type=int, default=32, help="windows per step (default: 32)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-3 on corpora, 5e-3 with --data)")
    parser.add_argument("--out", type=Path, default=ENGINES_DIR, help="folder for <name>.onnx/.json (default: the package's model folder rtgenre/models/, where --model NAME looks)")
    parser.add_argument("--name", default=None, help="model name (default: rtgenre-distilled on corpora, <data folder>-<head> with --data)")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="feature cache folder for corpora (default: cache/)")
    parser.add_argument("--renditions", type=int, default=0, help="augmented renditions per corpus track to cache (default: 0)")
    parser.add_argument("--max-seconds", type=float, default=None, help="use at most the middle S seconds of each corpus track")
    parser.add_argument("--teacher-prior", action="store_true",
                        help="on corpora: add the frozen MSD_musicnn tagger's mapped tags as a learnable log-prior to each head's logits (see rtgenre/models/README.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


def _command() -> str:
    return "rtgenre " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(args: argparse.Namespace) -> int:
    """Run ``rtgenre train``; returns the exit status."""
    for opt in ("epochs", "steps", "folds", "batch"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise UsageError(f"--{opt} must be at least 1, got {v}", f"Pass a positive --{opt}")
    if args.data is None and (args.folds > 1 or args.column or args.group_by or args.head):
        raise UsageError("--folds, --column, --group-by and --head only apply to --data", "Add --data DIR|CSV or drop those options")
    if args.data is not None and args.teacher_prior:
        raise UsageError("--teacher-prior only applies to training on corpora", "Drop --teacher-prior: with --data the back end reads the musicnn tagger's own layers anyway")
    from rtgenre.errors import DependencyMissingError

    try:
        import torch
    except ImportError:
        raise DependencyMissingError("Training needs torch", "pip install 'rtgenre[train]'") from None
    torch.set_num_threads(args.threads)
    return _train_own_data(args) if args.data is not None else _train_corpora(args)


def _heads():
    from rtgenre.training.labels import HEADS
    from rtgenre.training.model import HeadSpec

    return tuple(HeadSpec(n, k, labels) for n, (k, labels) in HEADS.items())


def _train_corpora(args: argparse.Namespace) -> int:
    from rtgenre.card import load_card
    from rtgenre.training.corpus import corpus_hours
    from rtgenre.training.data import CropSampler, load_cache
    from rtgenre.training.distill import agreement, agreement_runtime, train_backend
    from rtgenre.training.export import export_model, save_card
    from rtgenre.training.features import FRONTEND, build_cache, read_index
    from rtgenre.training.labels import (
        BROAD_MAP,
        GTZAN_MAP,
        HEADS,
        MULTILABEL_GAIN,
        SHARPEN,
        TAG_MAP,
        TagMapper,
    )
    from rtgenre.training.model import CRNN, Backend, BackendConfig
    from rtgenre.training.musicnn import TEACHERS, load_teacher, teacher_tags

    corpora = args.corpus or sorted(p for p in Path("corpora").glob("*") if (p / "manifest.jsonl").is_file())
    if not corpora:
        raise DataInvalidError("No corpora found in corpora/", "Build them with tools/corpus_*.py or pass --corpus DIR...")
    train, held, stats, share = [], {}, {}, []
    for c in corpora:
        build_cache(c, args.cache / c.name, args.renditions, args.max_seconds, seed=args.seed)
        tr, ho = load_cache(args.cache / c.name, c)
        index = read_index(args.cache / c.name)
        stats[c.name] = {
            "hours": round(corpus_hours(c), 3),
            "hours_cached": round(sum(r["frames"] for r in index if r["rendition"] == "original") * FRONTEND.hop_length / FRONTEND.sample_rate / 3600, 3),
            "augmented_renditions": sum(r["rendition"] != "original" for r in index),
            "training_items": len(tr), "held_out_tracks": len(ho),
        }
        train += tr
        if ho:
            held[c.name] = ho
        share += [np.sqrt(len(tr)) / max(1, len(tr))] * len(tr)  # corpus share ∝ sqrt(its items)
        print(f"{c.name}: " + ", ".join(f"{k} {v}" for k, v in stats[c.name].items()), flush=True)
    if not train:
        raise DataInvalidError("The corpora hold no track of at least one window", "Add longer tracks to the corpora")
    mapper = TagMapper({t: teacher_tags(t) for t in TEACHERS})
    sampler = CropSampler(HEADS, mapper)
    teacher = load_teacher(TEACHERS[0])
    backend = Backend(BackendConfig(heads=_heads(), teacher_prior=args.teacher_prior), teacher)
    epochs, steps, lr = args.epochs or 12, args.steps or 150, args.lr or 2e-3
    weights = np.array(share) / np.sum(share)
    history = train_backend(backend, train, sampler, epochs, steps, args.batch, lr, seed=args.seed, weights=weights)
    # per corpus: targets are the teachers' where a corpus has no exact labels, the exact labels where it has them
    held_metrics = {name: agreement(backend, ho, sampler, WINDOW_HOP) for name, ho in held.items()}
    for name, m in held_metrics.items():
        print(f"held-out {name}, cached features: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    name = args.name or "rtgenre-distilled"
    extra = {
        "license": "MIT (model); musicnn front end ISC, see rtgenre/models/musicnn/LICENSE",
        "teacher": {"models": list(TEACHERS), "student_frontend": TEACHERS[0], "tag_map": TAG_MAP, "sharpen": SHARPEN, "multilabel_gain": MULTILABEL_GAIN,
                    "rule": "label score = max of its tags over both teachers; multiclass targets = score^sharpen normalised; "
                            "multilabel targets = min(1, multilabel_gain * score); exact labels (rendered MIDI) replace teacher targets"},
        "training": {
            "command": _command(), "corpora": stats,
            "epochs": epochs, "steps_per_epoch": steps, "batch": args.batch, "lr": lr, "seed": args.seed,
            "items": len(train),
            "cache_options": {"renditions": args.renditions, "max_seconds": args.max_seconds,
                              "note": "apply only to tracks not cached yet; 'corpora' says what the caches hold"},
            "augmentation": "cached audio renditions per track (gain ±6 dB, ±1.5 semitones pitch+tempo by resampling, noise at 10-30 dB SNR half the time), "
                            "see renditions per corpus; pairs of crops mixed in feature space with p=0.3",
            "sampling": "each corpus drawn in proportion to the square root of its item count, items uniformly within it",
            "loss": history[-1],
        },
        "evaluation": {"held_out_agreement": {"windows_hop_frames": WINDOW_HOP, **held_metrics}},
    }
    model = CRNN(teacher, backend)  # one MSD_musicnn: front/mid end and the prior's back end
    card = export_model(model, args.out, name, {"gtzan": GTZAN_MAP, "broad": BROAD_MAP}, extra)
    runtime = {}
    for name, ho in held.items():
        with_audio = [h for h in ho if h.audio is not None]
        if not with_audio:
            continue
        runtime[name] = agreement_runtime(load_card(card), with_audio, sampler, WINDOW_HOP)
        print(f"held-out {name}, exported model at run time: " + ", ".join(f"{k} {v:.3f}" for k, v in runtime[name].items()), flush=True)
    raw = json.loads(card.read_text())
    raw["evaluation"]["held_out_agreement_runtime"] = {"windows_hop_frames": WINDOW_HOP, **runtime}
    save_card(card, raw)
    print(f"wrote {card} and {card.with_suffix('.onnx')}")
    return 0


def _train_own_data(args: argparse.Namespace) -> int:
    import subprocess

    import soundfile as sf

    from rtgenre.evaluate import Scores, file_groups
    from rtgenre.progress import WorkProgress, audio_seconds
    from rtgenre.training import real
    from rtgenre.training.export import export_model
    from rtgenre.training.labels import GTZAN
    from rtgenre.training.model import CRNN, HeadSpec
    from rtgenre.training.musicnn import TEACHERS, load_teacher
    from rtgenre.training.realdata import Clip, Encoders, fit_length, read_audio

    data, csv_path = (args.data.parent, args.data) if args.data.suffix.lower() == ".csv" else (args.data, None)
    files = labelled_files(data, csv_path, args.column)
    groups = file_groups(data, csv_path, args.group_by) if args.group_by else {p: str(p) for p, _ in files}
    classes = sorted({lab for _, lab in files})
    if len(classes) < 2:
        raise DataInvalidError(f"{args.data} has {len(classes)} class(es)", "Give at least two labels (DIR/<label>/*.wav, or two values in the CSV column)")
    head_name = args.head or (args.column if csv_path is not None and args.column else "genre")
    head = HeadSpec(head_name, "multiclass", tuple(classes))
    enc = Encoders(workdir=args.cache)
    examples = []
    with WorkProgress("features", len(files), seconds=(audio_seconds(p) for p, _ in files)) as bar:
        for path, label in bar.track(files):
            try:
                audio = read_audio(path)
            except (sf.LibsndfileError, RuntimeError, OSError, subprocess.CalledProcessError) as e:
                raise DataInvalidError(f"{path} cannot be read as audio ({e})", "Remove or re-encode the file") from None
            maxp, meanp = real.pool_frames(enc.process(fit_length(audio))[""])
            target = np.eye(len(classes), dtype=np.float32)[classes.index(label)]
            clip = Clip(path.stem, "user", str(path), groups.get(path, str(path)), {head_name: label})
            examples.append(real.Example(clip, maxp, meanp, {head_name: target}, {head_name: np.ones(len(classes), np.float32)}))
    config = real.WindowConfig(heads=(head,))
    tc = real.TrainConfig(epochs=args.epochs or 20, batch=args.batch, lr=args.lr or real.TrainConfig.lr, seed=args.seed)

    def clip_votes(model, test):
        return [classes[int(np.bincount(real.window_probs(model, e)[head_name].argmax(axis=1), minlength=len(classes)).argmax())] for e in test]

    cv = None
    if args.folds > 1:
        truth, pred, per_fold = [], [], []
        for k, test_idx in enumerate(real.grouped_folds(examples, args.folds, args.seed)):
            test_set = set(test_idx.tolist())
            test = [examples[i] for i in test_idx]
            votes = clip_votes(real.train_backend([e for i, e in enumerate(examples) if i not in test_set], config, tc), test)
            t = [e.clip.labels[head_name] for e in test]
            fold = Scores.of(t, votes)
            per_fold.append({"clip_accuracy": fold.accuracy, "clip_macro_f1": real.macro_f1(fold, classes), "clips": fold.n})
            print(f"fold {k + 1}/{args.folds}: clip accuracy {fold.accuracy:.1%}, macro-F1 {per_fold[-1]['clip_macro_f1']:.3f} ({fold.n} clips)", flush=True)
            truth += t
            pred += votes
        s = Scores.of(truth, pred)
        cv = {"folds": args.folds, "group_by": args.group_by, "clip_accuracy": s.accuracy, "clip_macro_f1": real.macro_f1(s, classes),
              "per_class": s.per_class, "per_fold": per_fold}
        print(f"{args.folds}-fold cross-validation{f' grouped by {args.group_by}' if args.group_by else ''}: "
              f"clip accuracy {s.accuracy:.1%}, macro-F1 {cv['clip_macro_f1']:.3f} ({s.n} clips)")
    final = real.train_backend(examples, config, tc)
    name = args.name or f"{(args.data.parent if csv_path else args.data).resolve().name}-{head_name}"
    extra = {
        "license": "as your data; musicnn encoder ISC",
        "training": {"command": _command(), "data": str(args.data), "head": head_name, "classes": {c: sum(1 for _, lab in files if lab == c) for c in classes},
                     "epochs": tc.epochs, "lr": tc.lr, "seed": args.seed, "backend": config.to_json()},
        "evaluation": {"cross_validation": cv} if cv else {},
    }
    gtzan = {c: c if c in GTZAN else None for c in classes}
    card = export_model(CRNN(load_teacher(TEACHERS[0]), final), args.out, name, {"gtzan": gtzan}, extra)
    print(f"wrote {card} and {card.with_suffix('.onnx')}")
    return 0
