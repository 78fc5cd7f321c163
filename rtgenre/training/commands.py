"""``rtgenre train`` and ``rtgenre eval``: options and entry points.

``train`` has two modes:

* on corpora (default ``corpora/*``): cache features and teacher tags
  (:mod:`rtgenre.training.features`), distil the back end and heads, measure
  agreement with the teachers on held-out tracks and export the model;
* on your own data (``--data DIR``, GTZAN layout ``DIR/<label>/*``): fit a new
  genre head (label set = folder names) on top of a trained model's front end
  and back end (``--base``; ``--finetune-backend`` also trains the back end),
  with optional stratified k-fold cross-validation by clip (``--folds``), and
  export the result as a new model.

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
    parser.add_argument("--data", type=Path, default=None, help="your own labelled audio, DIR/<label>/*.wav|au|mp3: fit a new genre head on it")
    parser.add_argument("--base", default=None, help="with --data: the model to start from (default: the shipped rtgenre-crnn)")
    parser.add_argument("--finetune-backend", action="store_true", help="with --data: also train the LSTM back end (the new model then has only the genre head)")
    parser.add_argument("--folds", type=int, default=1, help="with --data: stratified k-fold cross-validation by clip before the final fit (default: 1 = none)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 12 on corpora, 20 with --data)")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: 150 on corpora, 20 with --data)")
    parser.add_argument("--batch", type=int, default=32, help="windows per step (default: 32)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-3 on corpora, 5e-3 with --data)")
    parser.add_argument("--out", type=Path, default=ENGINES_DIR, help="folder for <name>.onnx/.json (default: the package's model folder rtgenre/models/, where --model NAME looks)")
    parser.add_argument("--name", default=None, help="model name (default: rtgenre-crnn on corpora, <data folder>-crnn with --data)")
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
    if args.data is None and (args.folds > 1 or args.finetune_backend or args.base):
        raise UsageError("--folds, --finetune-backend and --base only apply to --data", "Add --data DIR or drop those options")
    if args.data is not None and args.teacher_prior:
        raise UsageError("--teacher-prior only applies to training on corpora", "Drop --teacher-prior: with --data the new model keeps the base model's back end, prior included")
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
    from rtgenre.training.export import export_model
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
    name = args.name or "rtgenre-crnn"
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
    card.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {card} and {card.with_suffix('.onnx')}")
    return 0


def _clip_items(files: list[tuple[Path, str]], labels: list[str]):
    """Frame features of every clip, one :class:`Item` per clip."""
    from rtgenre.progress import WorkProgress, audio_seconds
    from rtgenre.training.features import ChunkedFeatures
    from rtgenre.training.musicnn import TEACHERS, load_teacher

    features = ChunkedFeatures(load_teacher(TEACHERS[0]))
    with WorkProgress("features", len(files), seconds=(audio_seconds(p) for p, _ in files)) as bar:
        return [_clip_item(path, labels.index(label), features) for path, label in bar.track(files)]


def _clip_item(path: Path, label: int, features):
    """One clip's frame features as a training :class:`Item` with genre index ``label``."""
    import soundfile as sf
    import soxr

    from rtgenre.dsp.mel import log_mel
    from rtgenre.training.data import WINDOW_FRAMES, Item
    from rtgenre.training.features import FRONTEND

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataInvalidError(f"{path} cannot be read as audio ({e})", "Remove or re-encode the file") from None
    x = audio.mean(axis=1)
    if rate != FRONTEND.sample_rate:
        x = soxr.resample(x, rate, FRONTEND.sample_rate).astype(np.float32)
    mel = log_mel(x, FRONTEND)
    if len(mel) < WINDOW_FRAMES:
        raise DataInvalidError(f"{path} is shorter than one 7.5 s window", "Remove clips shorter than 7.5 s from the data folder")
    return Item(features.process(mel), None, {"genre": label}, str(path))


def stratified_folds(labels: list[int], k: int, seed: int) -> list[np.ndarray]:
    """Clip indices of ``k`` folds with every class spread evenly (by clip, so no window leaks)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in sorted(set(labels)):
        idx = rng.permutation([i for i, y in enumerate(labels) if y == c])
        for j, i in enumerate(idx):
            folds[(offset + j) % k].append(int(i))
        offset += len(idx)
    return [np.array(sorted(f)) for f in folds]


def _train_own_data(args: argparse.Namespace) -> int:
    import copy

    from rtgenre.card import load_card
    from rtgenre.training.data import CropSampler
    from rtgenre.training.distill import predict_items, train_backend
    from rtgenre.training.export import export_model, load_backend
    from rtgenre.training.labels import GTZAN
    from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec
    from rtgenre.training.musicnn import TEACHERS, load_teacher

    files = labelled_files(args.data)
    classes = sorted({lab for _, lab in files})
    if len(classes) < 2:
        raise DataInvalidError(f"{args.data} has {len(classes)} class folder(s)", "Give at least two label folders, DIR/<label>/*.wav")
    counts = {c: sum(1 for _, lab in files if lab == c) for c in classes}
    if args.folds > 1 and min(counts.values()) < args.folds:
        raise DataInvalidError(f"Class '{min(counts, key=counts.get)}' has {min(counts.values())} clip(s), fewer than --folds {args.folds}", "Add clips or lower --folds")
    base_card = load_card(args.base)
    base = load_backend(base_card.onnx_path.with_name(base_card.raw.get("backend_weights", f"{base_card.name}.backend.npz")))
    genre = HeadSpec("genre", "multiclass", tuple(classes))
    kept = () if args.finetune_backend else tuple(h for h in base.config.heads if h.name != "genre")
    cfg = BackendConfig(**{**{k: v for k, v in base.config.__dict__.items() if k != "heads"}, "heads": (genre, *kept)})
    start = Backend(cfg)
    reused = tuple(f"{part}.{h.name}." for h in kept for part in ("heads", "priors"))
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(("heads.", "priors.")) or k.startswith(reused)}
    start.load_state_dict(state, strict=False)
    items = _clip_items(files, classes)
    y = [it.labels["genre"] for it in items]
    sampler = CropSampler({h.name: (h.kind, h.labels) for h in cfg.heads}, None)
    epochs, steps, lr = args.epochs or 20, args.steps or 20, args.lr or 5e-3

    def fit(train_items):
        b = copy.deepcopy(start)
        train_backend(b, train_items, sampler, epochs, steps, args.batch, lr, mix_prob=0.0, seed=args.seed, trainable=["genre"], finetune_backend=args.finetune_backend, log=None)
        return b

    def accuracy(b, test_items):
        probs, targets, _, groups = predict_items(b, test_items, sampler, WINDOW_HOP)
        pred, true = probs["genre"].argmax(1), targets["genre"].argmax(1)
        clip = [np.bincount(pred[groups == g], minlength=len(classes)).argmax() == test_items[g].labels["genre"] for g in range(len(test_items))]
        return float((pred == true).mean()), float(np.mean(clip))

    cv = None
    if args.folds > 1:
        win, clip = [], []
        for k, test in enumerate(stratified_folds(y, args.folds, args.seed)):
            test_set = set(test.tolist())
            w, c = accuracy(fit([it for i, it in enumerate(items) if i not in test_set]), [items[i] for i in test])
            win.append(w)
            clip.append(c)
            print(f"fold {k + 1}/{args.folds}: clip accuracy {c:.1%}, window accuracy {w:.1%}", flush=True)
        cv = {"folds": args.folds, "clip_accuracy_mean": float(np.mean(clip)), "clip_accuracy_std": float(np.std(clip)),
              "window_accuracy_mean": float(np.mean(win)), "window_accuracy_std": float(np.std(win)), "clip_accuracy_per_fold": clip}
        print(f"{args.folds}-fold cross-validation: clip accuracy {np.mean(clip):.1%} ± {np.std(clip):.1%}, window accuracy {np.mean(win):.1%} ± {np.std(win):.1%}")
    final = fit(items)
    name = args.name or f"{args.data.resolve().name}-crnn"
    extra = {
        "license": "as your data; musicnn front end ISC",
        "base_model": {"name": base_card.name, "onnx_sha256": base_card.onnx_sha256},
        "training": {"command": _command(), "data": str(args.data), "classes": counts, "epochs": epochs, "steps_per_epoch": steps,
                     "lr": lr, "seed": args.seed, "finetune_backend": bool(args.finetune_backend)},
        "evaluation": {"cross_validation": cv} if cv else {},
    }
    gtzan = {c: c if c in GTZAN else None for c in classes}
    card = export_model(CRNN(load_teacher(TEACHERS[0]), final), args.out, name, {"gtzan": gtzan}, extra)
    print(f"wrote {card} and {card.with_suffix('.onnx')}")
    return 0
