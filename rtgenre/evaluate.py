"""``rtgenre eval``: accuracy of a model on labelled audio files (torch-free).

Owns reading a labelled data set (a GTZAN-layout folder ``DIR/<label>/*`` or a
folder plus ``--labels CSV``), running the model on every file with the
runtime's own offline path (:func:`rtgenre.pipeline.analyze_file`, ONNX
Runtime), mapping the model's genres onto the data set's vocabulary
(``--map gtzan`` via the card's ``mappings``) and scoring: accuracy,
per-class precision/recall/F1 and the confusion matrix, per window and per
clip (majority vote of the clip's windows).  Results print as a table, as JSON
(``--json``), as a confusion-matrix image (``--plot``) and can be recorded in
the model card (``--record``).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtgenre.card import ModelCard, load_card
from rtgenre.errors import DataInvalidError, DependencyMissingError, UsageError
from rtgenre.inference.streaming import add_streaming_arguments

AUDIO_EXTENSIONS = (".wav", ".au", ".mp3", ".flac", ".ogg", ".aiff", ".aif")
#: Predicted label of a window whose model genres all map to nothing in the target vocabulary.
UNMAPPED = "(unmapped)"


def labelled_files(data: Path, labels_csv: Path | None = None, column: str | None = None) -> list[tuple[Path, str]]:
    """``(file, label)`` pairs of a data set.

    Parameters
    ----------
    data : Path
        A GTZAN-layout folder (``data/<label>/<clip>``) or, with ``labels_csv``,
        the folder the CSV's ``file`` column is relative to.
    labels_csv : Path, optional
        CSV with a ``file`` column and a label column.
    column : str, optional
        Label column of the CSV (default: its second column).

    Raises
    ------
    DataInvalidError
        Missing folder, empty data set, unknown column or missing files.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataInvalidError(f"Data folder {data} does not exist", "Pass --data with a folder of labelled audio (DIR/<label>/*.wav) or a folder and --labels CSV")
    if labels_csv is not None:
        try:
            with open(labels_csv, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise DataInvalidError(f"Labels file {labels_csv} cannot be read ({e.strerror})", "Pass --labels with a CSV that has columns file,<label>") from None
        if not rows or "file" not in rows[0]:
            raise DataInvalidError(f"Labels file {labels_csv} has no 'file' column", "Give the CSV a header row: file,<label column>")
        columns = [c for c in rows[0] if c != "file"]
        column = column or (columns[0] if columns else None)
        if column not in rows[0]:
            raise DataInvalidError(f"Labels file {labels_csv} has no column {column!r}", f"Use --label-column with one of: {', '.join(columns)}")
        pairs = [(data / r["file"], r[column].strip()) for r in rows if r[column].strip()]
        missing = [str(p) for p, _ in pairs if not p.is_file()]
        if missing:
            raise DataInvalidError(f"{len(missing)} file(s) named in {labels_csv} are missing, e.g. {missing[0]}", "Fix the CSV or pass the folder the files are in with --data")
    else:
        if column is not None:
            raise UsageError("--label-column needs --labels", "Pass --labels CSV, or drop --label-column for a DIR/<label>/ folder")
        pairs = [(f, d.name) for d in sorted(data.iterdir()) if d.is_dir() for f in sorted(d.iterdir()) if f.suffix.lower() in AUDIO_EXTENSIONS]
    if not pairs:
        raise DataInvalidError(f"No labelled audio files in {data}", "Use DIR/<label>/*.wav|au|mp3 or pass --labels CSV")
    return pairs


def map_genres(card: ModelCard, probs: np.ndarray, mapping: str | None) -> tuple[list[str], np.ndarray]:
    """Genre probabilities in the target vocabulary.

    Without a mapping the model's own labels are returned.  With one, each
    target label's probability is the sum over the model genres that map to
    it; genres mapped to ``null`` contribute nothing.

    Raises
    ------
    UsageError
        When the card has no such mapping.
    """
    labels = list(card.head("genre").labels)
    if mapping is None:
        return labels, probs
    if mapping not in card.mappings:
        raise UsageError(f"The model card has no '{mapping}' mapping (it has: {', '.join(card.mappings) or 'none'})", "Drop --map or use a model whose card maps its genres to that vocabulary")
    table = card.mappings[mapping]
    targets = sorted({t for t in table.values() if t})
    m = np.zeros((len(labels), len(targets)), np.float32)
    for i, lab in enumerate(labels):
        if table.get(lab):
            m[i, targets.index(table[lab])] = 1.0
    return targets, probs @ m


@dataclass
class Scores:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of one level."""

    accuracy: float
    n: int
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]

    @classmethod
    def of(cls, truth: list[str], pred: list[str]) -> Scores:
        classes = sorted(set(truth) | set(pred))
        idx = {c: i for i, c in enumerate(classes)}
        cm = np.zeros((len(classes), len(classes)), int)
        for t, p in zip(truth, pred):
            cm[idx[t], idx[p]] += 1
        per = {}
        for c, i in idx.items():
            tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            per[c] = {"precision": float(prec), "recall": float(rec), "f1": float(2 * prec * rec / (prec + rec)) if prec + rec else 0.0, "support": int(cm[i, :].sum())}
        acc = float(np.trace(cm) / max(1, cm.sum()))
        return cls(acc, int(cm.sum()), classes, per, cm.tolist())


@dataclass
class Evaluation:
    """Everything ``rtgenre eval`` reports."""

    model: str
    mapping: str | None
    window: Scores
    clip: Scores
    clips: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model, "mapping": self.mapping,
            "window": self.window.__dict__, "clip": self.clip.__dict__, "clips": self.clips,
        }


def evaluate(card: ModelCard, files: list[tuple[Path, str]], mapping: str | None = None, hop_s: float = 1.0, threads: int = 1, stream: bool = True, lookahead: str = "wait", live_block: int | None = None) -> Evaluation:
    """Run the model on every file and score window- and clip-level genre predictions.

    ``stream`` and ``lookahead`` choose the inference path as for ``classify``
    (``--recompute``, ``--lookahead``); ``live_block`` as for :func:`~rtgenre.pipeline.analyze_file`.
    """
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.pipeline import analyze_file

    win_true, win_pred, clip_true, clip_pred, clips = [], [], [], [], []
    with OnnxRuntimeEngine(card, threads, stream=stream) as engine:
        for path, label in files:
            res = analyze_file(path, card, engine, hop_s, lookahead=lookahead, live_block=live_block)
            targets, probs = map_genres(card, res.probs["genre"], mapping)
            pred = [targets[i] if probs[k].sum() > 0 else UNMAPPED for k, i in enumerate(probs.argmax(1))]
            vote = Counter(pred).most_common(1)[0][0]
            win_true += [label] * len(pred)
            win_pred += pred
            clip_true.append(label)
            clip_pred.append(vote)
            mean = {h.name: res.probs[h.name].mean(0) for h in card.heads}
            info = {"file": path.name, "label": label, "prediction": vote, "windows": len(pred), "window_agreement": round(pred.count(vote) / len(pred), 3)}
            for h in card.heads:
                order = np.argsort(-mean[h.name])
                if h.kind == "multiclass":
                    info[h.name] = [[h.labels[i], round(float(mean[h.name][i]), 3)] for i in order[:3]]
                else:
                    info[h.name] = [h.labels[i] for i in order if mean[h.name][i] >= h.threshold]
            clips.append(info)
    return Evaluation(card.name, mapping, Scores.of(win_true, win_pred), Scores.of(clip_true, clip_pred), clips)


def plot_confusion(ev: Evaluation, path: Path) -> None:
    """Clip- and window-level confusion matrices side by side as an image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyMissingError("matplotlib is needed for --plot", "pip install matplotlib") from None
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    for ax, (title, s) in zip(axes, (("clips", ev.clip), ("windows", ev.window))):
        cm = np.array(s.confusion, float)
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(s.classes)), s.classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(s.classes)), s.classes, fontsize=8)
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, int(v), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: accuracy {s.accuracy:.1%} (n={s.n})")
    fig.suptitle(f"{ev.model}" + (f" mapped to {ev.mapping}" if ev.mapping else ""))
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UsageError(f"Cannot write the plot to {path} ({e.strerror})", "Pass --plot with a writable path") from None
    finally:
        plt.close(fig)


def format_report(ev: Evaluation) -> str:
    """Human-readable report: per-clip predictions, per-class scores and accuracies."""
    lines = [f"model {ev.model}" + (f", genres mapped to {ev.mapping}" if ev.mapping else "")]
    lines.append(f"{'file':28} {'label':18} {'prediction':14} {'agree':>5}  top genres | mood | instruments")
    for c in ev.clips:
        top = ", ".join(f"{g} {p:.2f}" for g, p in c["genre"])
        mood = c["mood"][0][0] if "mood" in c else "-"
        inst = ",".join(c.get("instruments", [])) or "-"
        mark = "ok" if c["label"] == c["prediction"] else "--"
        lines.append(f"{c['file'][:28]:28} {c['label'][:18]:18} {c['prediction'][:14]:14} {c['window_agreement']:5.2f}  {top} | {mood} | {inst}  {mark}")
    lines.append("")
    lines.append(f"{'class':18} {'prec':>6} {'rec':>6} {'f1':>6} {'n':>5}   (clip level)")
    for cl, s in ev.clip.per_class.items():
        lines.append(f"{cl[:18]:18} {s['precision']:6.2f} {s['recall']:6.2f} {s['f1']:6.2f} {s['support']:5d}")
    lines.append("")
    lines.append(f"clip accuracy   {ev.clip.accuracy:.1%} ({ev.clip.n} clips)")
    lines.append(f"window accuracy {ev.window.accuracy:.1%} ({ev.window.n} windows)")
    return "\n".join(lines)


def record_in_card(card: ModelCard, key: str, ev: Evaluation, command: str) -> None:
    """Store the evaluation under ``evaluation.<key>`` in the model card (the ONNX file is unchanged)."""
    path = card.onnx_path.with_suffix(".json")
    raw = json.loads(path.read_text())
    raw.setdefault("evaluation", {})[key] = {"command": command, "clip_accuracy": ev.clip.accuracy, "window_accuracy": ev.window.accuracy,
                                            "clips": ev.clips, "per_class": ev.clip.per_class}
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtgenre eval``."""
    parser.add_argument("--data", type=Path, required=True, help="labelled audio: DIR/<label>/*.wav|au|mp3, or the folder of --labels' files")
    parser.add_argument("--labels", type=Path, default=None, help="CSV with columns file,<label> (file relative to --data)")
    parser.add_argument("--label-column", default=None, help="label column of --labels (default: the first after 'file')")
    parser.add_argument("--map", default=None, help="map the model's genres to this vocabulary via the card (e.g. gtzan)")
    parser.add_argument("--model", default=None, help="model name, card or ONNX file (default: the shipped rtgenre-crnn)")
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between windows (default: 1.0)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: 1)")
    add_streaming_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--plot", type=Path, default=None, help="write the confusion matrices to this image (PNG)")
    parser.add_argument("--record", default=None, metavar="KEY", help="store the results under evaluation.KEY in the model card")


def run_eval(args: argparse.Namespace) -> int:
    """Run ``rtgenre eval``; returns the exit status."""
    if args.hop <= 0:
        raise UsageError(f"--hop must be positive, got {args.hop}", "Pass e.g. --hop 1.0")
    card = load_card(args.model)
    files = labelled_files(args.data, args.labels, args.label_column)
    ev = evaluate(card, files, args.map, args.hop, args.threads, stream=not args.recompute, lookahead=args.lookahead)
    print(json.dumps(ev.to_json()) if args.json else format_report(ev))
    if args.plot is not None:
        plot_confusion(ev, args.plot)
    if args.record:
        import shlex
        import sys

        record_in_card(card, args.record, ev, "rtgenre " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    return 0
