"""``rtgenre eval``: accuracy of a model's heads on labelled audio files (torch-free).

Owns reading a labelled data set (a GTZAN-layout folder ``DIR/<label>/*`` or a
folder plus ``--labels CSV``), running the model on every file with the
runtime's own offline path (:func:`rtgenre.pipeline.analyze_file`, ONNX
Runtime) and scoring one head (``--head``) per window and per clip:

- ``genre``, ``mood``, ``content`` (single-label heads): accuracy, macro-F1,
  per-class precision/recall/F1 and the confusion matrix; a clip's label is
  the majority of its windows.  ``--map`` maps the head's labels onto the
  data set's vocabulary through the card's ``mappings`` (``gtzan``/``broad``
  for genres, ``quadrant`` for moods: Q1–Q4).  For ``content`` a window below
  the level gate (``--silence-db``) is ``silence/noise``, as in the live
  pipeline, and data labels such as ``mixed`` read as ``speech over music``.
- ``instruments`` (multi-label): each file's label names one instrument
  family (folder names such as ``female singer`` or ``clarinet`` are mapped by
  :data:`INSTRUMENT_FAMILIES`, or by a card mapping given with ``--map``); per
  family the detection rate (a clip detects a family present, by the head's
  threshold, in the majority of its windows), precision and F1, and the rate
  at which ``voice`` is detected on instrumental clips.

``--group-by COLUMN`` (with ``--labels``) repeats the scores per value of that
column (e.g. the speech ``source``).  Results print as a table, as one JSON
object (``--json``: ``clip.accuracy``, ``clip.macro_f1``, ``window.*``), as a
confusion-matrix image (``--plot``) and can be recorded in the model card
(``--record``).  Files shorter than one window are skipped and listed, or
repeated end to end to fill one (``--loop-short``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from rtgenre.card import ModelCard, load_card
from rtgenre.errors import (
    DataInvalidError,
    DependencyMissingError,
    InputEmptyError,
    UsageError,
)
from rtgenre.gate import CONTENT_HEAD, SILENCE
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
        rows = _csv_rows(labels_csv)
        columns = [c for c in rows[0] if c != "file"]
        column = _csv_column(labels_csv, rows, column or (columns[0] if columns else None), "--label-column")
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


#: Data-set labels that name a content class by another name.
CONTENT_ALIASES = {"mixed": "speech over music", "speech_over_music": "speech over music", "speech-over-music": "speech over music", "talk": "speech"}
#: Instrument names of labelled data sets (Medley-solos-DB, FSDKaggle2018 and the like) → instrument family.
INSTRUMENT_FAMILIES = {
    "female singer": "voice", "male singer": "voice", "singer": "voice", "vocals": "voice", "voice": "voice", "choir": "voice",
    "acoustic guitar": "guitar", "electric guitar": "guitar", "distorted electric guitar": "guitar", "guitar": "guitar",
    "piano": "keys", "electric piano": "keys", "organ": "keys", "harpsichord": "keys", "keyboard": "keys",
    "violin": "strings", "violin or fiddle": "strings", "viola": "strings", "cello": "strings", "harp": "strings", "strings": "strings",
    "clarinet": "winds", "flute": "winds", "saxophone": "winds", "tenor saxophone": "winds", "oboe": "winds", "bassoon": "winds",
    "trumpet": "winds", "trombone": "winds", "french horn": "winds", "horn": "winds", "winds": "winds",
    "bass drum": "drums", "snare drum": "drums", "hi-hat": "drums", "hi hat": "drums", "cymbal": "drums", "drum set": "drums", "drums": "drums",
    "double bass": "bass", "electric bass": "bass", "bass guitar": "bass", "bass": "bass",
    "synthesizer": "synth", "synth": "synth",
}
#: Instrument family whose false detections on instrumental clips are reported.
VOICE = "voice"
#: Heads ``--head`` accepts.
HEAD_CHOICES = ("genre", "mood", "instruments", "content")


def _csv_rows(labels_csv: Path) -> list[dict[str, str]]:
    try:
        with open(labels_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataInvalidError(f"Labels file {labels_csv} cannot be read ({e.strerror})", "Pass --labels with a CSV that has columns file,<label>") from None
    except (UnicodeDecodeError, csv.Error) as e:  # a binary file, or text that is not CSV
        raise DataInvalidError(f"Labels file {labels_csv} is not a UTF-8 CSV ({e})", "Pass --labels with a text CSV that has columns file,<label>") from None
    if not rows or "file" not in rows[0]:
        raise DataInvalidError(f"Labels file {labels_csv} has no 'file' column", "Give the CSV a header row: file,<label column>")
    return rows


def _csv_column(labels_csv: Path, rows: list[dict[str, str]], column: str | None, option: str) -> str:
    if column not in rows[0]:
        raise DataInvalidError(f"Labels file {labels_csv} has no column {column!r}", f"Use {option} with one of: {', '.join(c for c in rows[0] if c != 'file')}")
    return column


def file_groups(data: Path, labels_csv: Path | None, column: str) -> dict[Path, str]:
    """The value of ``column`` of the labels CSV per file (e.g. the speech ``source``), for ``--group-by``.

    Raises
    ------
    UsageError
        Without a labels CSV.
    DataInvalidError
        The CSV has no such column.
    """
    if labels_csv is None:
        raise UsageError("--group-by needs --labels", "Pass --labels CSV with the grouping column")
    rows = _csv_rows(labels_csv)
    column = _csv_column(labels_csv, rows, column, "--group-by")
    return {Path(data) / r["file"]: r[column].strip() or "(none)" for r in rows}


def map_labels(card: ModelCard, head: str, probs: np.ndarray, mapping: str | None) -> tuple[list[str], np.ndarray]:
    """A single-label head's probabilities in the target vocabulary.

    Without a mapping the head's own labels are returned.  With one, each
    target label's probability is the sum over the head's labels that map to
    it; labels mapped to ``null`` contribute nothing.

    Raises
    ------
    UsageError
        When the card has no such mapping, or the mapping is for another head.
    """
    labels = list(card.head(head).labels)
    if mapping is None:
        return labels, probs
    if mapping not in card.mappings:
        raise UsageError(f"The model card has no '{mapping}' mapping (it has: {', '.join(card.mappings) or 'none'})", "Drop --map or use a model whose card maps its labels to that vocabulary")
    table = card.mappings[mapping]
    if not set(table) & set(labels):
        raise UsageError(f"The card's '{mapping}' mapping does not map the {head} head's labels", "Pick the --map that belongs to --head (e.g. --head genre --map gtzan, --head mood --map quadrant)")
    targets = sorted({t for t in table.values() if t})
    m = np.zeros((len(labels), len(targets)), np.float32)
    for i, lab in enumerate(labels):
        if table.get(lab):
            m[i, targets.index(table[lab])] = 1.0
    return targets, probs @ m


def _key(label: str) -> str:
    """A data-set label as the built-in tables spell it (``Acoustic_guitar`` → ``acoustic guitar``)."""
    return label.lower().replace("_", " ")


def instrument_family(label: str) -> str | None:
    """The instrument family a data set's instrument label names (:data:`INSTRUMENT_FAMILIES`), ``None`` if unknown."""
    return INSTRUMENT_FAMILIES.get(_key(label))


def _looped(path: Path, seconds: float, folder: Path) -> Path | None:
    """``path`` repeated end to end to last ``seconds``, as a WAV file in ``folder``; ``None`` if unreadable or empty."""
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        return None
    if not len(x):
        return None
    out = folder / "looped.wav"
    sf.write(str(out), np.tile(x, (math.ceil(seconds * rate / len(x)), 1)), rate, subtype="FLOAT")
    return out


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return float(prec), float(rec), float(2 * prec * rec / (prec + rec)) if prec + rec else 0.0


@dataclass
class Scores:
    """Single-label scores of one level: accuracy, macro-F1, per-class precision/recall/F1, confusion.

    ``macro_f1`` averages the F1 of every class seen in the truth or the predictions.
    """

    accuracy: float
    macro_f1: float
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
            prec, rec, f1 = _prf(cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i])
            per[c] = {"precision": prec, "recall": rec, "f1": f1, "support": int(cm[i, :].sum())}
        acc = float(np.trace(cm) / max(1, cm.sum()))
        macro = float(np.mean([v["f1"] for v in per.values()])) if per else 0.0
        return cls(acc, macro, int(cm.sum()), classes, per, cm.tolist())


@dataclass
class Detection:
    """Instrument-family scores of one level (each item labelled with the one family it holds).

    ``accuracy`` is the share of items whose family was detected; per family,
    ``detection_rate`` (recall), ``precision`` and ``f1`` count a detection of
    the family on an item of another family as a false positive, and
    ``false_positive_rate`` is the share of the other families' items on which
    it was detected.  ``macro_f1`` averages the F1 of the labelled families.
    """

    accuracy: float
    macro_f1: float
    n: int
    per_family: dict[str, dict[str, float]]
    voice_false_positive_rate: float | None
    instrumental: int

    @classmethod
    def of(cls, truth: list[str], pred: list[frozenset[str]]) -> Detection:
        per = {}
        for fam in sorted(set(truth)):
            tp = sum(t == fam and fam in p for t, p in zip(truth, pred))
            fn = sum(t == fam for t in truth) - tp
            fp = sum(t != fam and fam in p for t, p in zip(truth, pred))
            others = len(truth) - tp - fn
            prec, rec, f1 = _prf(tp, fp, fn)
            per[fam] = {"detection_rate": rec, "precision": prec, "f1": f1, "false_positive_rate": fp / others if others else None, "support": tp + fn}
        instrumental = [p for t, p in zip(truth, pred) if t != VOICE]
        voice_fp = sum(VOICE in p for p in instrumental) / len(instrumental) if instrumental else None
        acc = sum(t in p for t, p in zip(truth, pred)) / max(1, len(truth))
        macro = float(np.mean([v["f1"] for v in per.values()])) if per else 0.0
        return cls(float(acc), macro, len(truth), per, voice_fp, len(instrumental))


class _SingleLabel:
    """Scoring of a single-label head: a window's label is its top (mapped) label; a clip's is the majority."""

    def __init__(self, card: ModelCard, head: str, mapping: str | None, silence_db: float | None, aliases: dict[str, str]) -> None:
        map_labels(card, head, np.zeros((0, len(card.head(head).labels)), np.float32), mapping)  # a mapping that does not fit fails here
        self.card, self.head, self.mapping = card, head, mapping
        self.silence_db = silence_db
        self.aliases = aliases

    def truth(self, label: str) -> str:
        return self.aliases.get(_key(label), label)

    def windows(self, res) -> list[str]:
        targets, probs = map_labels(self.card, self.head, res.probs[self.head], self.mapping)
        pred = [targets[i] if probs[k].sum() > 0 else UNMAPPED for k, i in enumerate(probs.argmax(1))]
        if self.silence_db is not None:
            pred = [SILENCE if level < self.silence_db else p for p, level in zip(pred, res.level_dbfs)]
        return pred

    @staticmethod
    def clip(pred: list[str]) -> str:
        return Counter(pred).most_common(1)[0][0]

    @staticmethod
    def agreement(pred: list[str], vote: str, truth: str) -> float:
        return pred.count(vote) / len(pred)

    score = staticmethod(Scores.of)


class _Families:
    """Scoring of the multi-label instruments head against one labelled family per file."""

    def __init__(self, card: ModelCard, head: str, mapping: str | None) -> None:
        self.head = card.head(head)
        if mapping is not None and mapping not in card.mappings:
            raise UsageError(f"The model card has no '{mapping}' mapping (it has: {', '.join(card.mappings) or 'none'})", "Drop --map to use the built-in instrument families, or name a mapping of the card")
        self.table = card.mappings[mapping] if mapping is not None else INSTRUMENT_FAMILIES

    def truth(self, label: str) -> str:
        family = label if label in self.head.labels else self.table.get(_key(label), self.table.get(label))
        if family not in self.head.labels:
            raise DataInvalidError(
                f"Label '{label}' names no instrument family of the model ({', '.join(self.head.labels)})",
                "Label files with a family or a known instrument name, or pass --map with a card mapping from your labels to families",
            )
        return family

    def windows(self, res) -> list[frozenset[str]]:
        on = res.probs[self.head.name] >= self.head.threshold
        return [frozenset(self.head.labels[i] for i in np.flatnonzero(row)) for row in on]

    def clip(self, pred: list[frozenset[str]]) -> frozenset[str]:
        counts = Counter(f for p in pred for f in p)
        return frozenset(f for f, n in counts.items() if n > len(pred) / 2)

    @staticmethod
    def agreement(pred: list[frozenset[str]], vote: frozenset[str], truth: str) -> float:
        return sum(truth in p for p in pred) / len(pred)

    score = staticmethod(Detection.of)


@dataclass
class Evaluation:
    """Everything ``rtgenre eval`` reports."""

    model: str
    head: str
    mapping: str | None
    window: Scores | Detection
    clip: Scores | Detection
    clips: list[dict] = field(default_factory=list)
    groups: dict[str, dict] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model, "head": self.head, "mapping": self.mapping,
            "window": self.window.__dict__, "clip": self.clip.__dict__, "clips": self.clips,
            "groups": {g: {"window": v["window"].__dict__, "clip": v["clip"].__dict__} for g, v in self.groups.items()},
            "skipped": self.skipped,
        }


def evaluate(card: ModelCard, files: list[tuple[Path, str]], mapping: str | None = None, hop_s: float = 1.0, threads: int = 1,
             head: str = "genre", groups: dict[Path, str] | None = None, silence_db: float = -50.0, loop_short: bool = False,
             stream: bool = True, lookahead: str = "wait", live_block: int | None = None) -> Evaluation:
    """Run the model on every file and score one head's window- and clip-level predictions.

    Parameters
    ----------
    card : ModelCard
    files : list of (Path, str)
        Files and their labels (:func:`labelled_files`).
    mapping : str, optional
        A card mapping of the head's labels (single-label heads) or of the
        data's instrument names to families (``instruments``).
    hop_s : float
        Seconds between windows.
    threads : int
        ONNX Runtime threads.
    head : str
        The head to score (:data:`HEAD_CHOICES`).
    groups : dict of Path to str, optional
        A group per file (:func:`file_groups`); the scores are repeated per group.
    silence_db : float
        Level gate of the ``content`` head: quieter windows are ``silence/noise``.
    loop_short : bool
        Repeat a file shorter than one window end to end until it fills one
        (and a hop), instead of skipping it.
    stream, lookahead : bool, str
        The inference path, as for ``classify`` (``--recompute``, ``--lookahead``).
    live_block : int, optional
        As for :func:`~rtgenre.pipeline.analyze_file`.

    Raises
    ------
    UsageError
        The model has no such head, or the mapping does not fit it.
    DataInvalidError
        Unusable labels, or no file as long as one window.
    """
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.pipeline import analyze_file
    from rtgenre.progress import WorkProgress, audio_seconds

    if head not in card.labels():
        raise UsageError(f"The model {card.name} has no '{head}' head (it has: {', '.join(card.labels())})", "Pick --head from the model's heads, or use a model that has that head")
    if card.head(head).kind == "multilabel":
        scorer: _SingleLabel | _Families = _Families(card, head, mapping)
    else:
        scorer = _SingleLabel(card, head, mapping, silence_db if head == CONTENT_HEAD else None, CONTENT_ALIASES if head == CONTENT_HEAD else {})
    truths = [scorer.truth(label) for _, label in files]
    win: dict[str | None, tuple[list, list]] = {}
    clip: dict[str | None, tuple[list, list]] = {}
    clips, skipped = [], []
    with OnnxRuntimeEngine(card, threads, stream=stream) as engine, tempfile.TemporaryDirectory(prefix="rtgenre-eval-") as tmp, \
            WorkProgress("eval", len(files), seconds=(audio_seconds(p) for p, _ in files)) as bar:
        for (path, _), truth in zip(files, truths):
            looped = None
            try:
                res = analyze_file(path, card, engine, hop_s, lookahead=lookahead, live_block=live_block)
            except InputEmptyError:
                looped = _looped(path, card.window_seconds + hop_s, Path(tmp)) if loop_short else None
                if looped is None:
                    skipped.append({"file": str(path), "reason": f"shorter than one {card.window_seconds:.2f} s window"})
                    bar.advance()
                    continue
                res = analyze_file(looped, card, engine, hop_s, lookahead=lookahead, live_block=live_block)
            pred = scorer.windows(res)
            vote = scorer.clip(pred)
            for key in (None, *([groups[path]] if groups else [])):
                win.setdefault(key, ([], []))[0].extend([truth] * len(pred))
                win[key][1].extend(pred)
                clip.setdefault(key, ([], []))[0].append(truth)
                clip[key][1].append(vote)
            info = {"file": path.name, "label": truth, "prediction": vote if isinstance(vote, str) else sorted(vote), "windows": len(pred),
                    "window_agreement": round(scorer.agreement(pred, vote, truth), 3)}
            if groups:
                info["group"] = groups[path]
            if looped is not None:
                info["looped"] = True
            for h in card.heads:
                mean = res.probs[h.name].mean(0)
                order = np.argsort(-mean)
                if h.kind == "multiclass":
                    info[h.name] = [[h.labels[i], round(float(mean[i]), 3)] for i in order[:3]]
                else:
                    info[h.name] = [h.labels[i] for i in order if mean[i] >= h.threshold]
            clips.append(info)
            bar.advance()
    if not clips:
        raise DataInvalidError(f"None of the {len(files)} file(s) is as long as one {card.window_seconds:.2f} s window", "Evaluate on clips of at least one window, or pass --loop-short")
    scored = {key: {"window": scorer.score(*win[key]), "clip": scorer.score(*clip[key])} for key in win}
    top = scored.pop(None)
    return Evaluation(card.name, head, mapping, top["window"], top["clip"], clips, dict(sorted(scored.items())), skipped)


def plot_confusion(ev: Evaluation, path: Path) -> None:
    """Clip- and window-level confusion matrices side by side as an image (single-label heads)."""
    if not isinstance(ev.clip, Scores):
        raise UsageError(f"--plot draws confusion matrices; the {ev.head} head is multi-label and has none", "Drop --plot for --head " + ev.head)
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
    fig.suptitle(f"{ev.model} {ev.head}" + (f" mapped to {ev.mapping}" if ev.mapping else ""))
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UsageError(f"Cannot write the plot to {path} ({e.strerror})", "Pass --plot with a writable path") from None
    finally:
        plt.close(fig)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def format_report(ev: Evaluation) -> str:
    """Human-readable report: per-clip predictions, per-class scores, accuracies, groups and skipped files."""
    lines = [f"model {ev.model}, head {ev.head}" + (f", mapped to {ev.mapping}" if ev.mapping else "")]
    others = [h for h in ev.clips[0] if h not in ("file", "label", "prediction", "windows", "window_agreement", "group", "looped")]
    lines.append(f"{'file':28} {'label':18} {'prediction':18} {'agree':>5}  " + " | ".join(others))
    for c in ev.clips:
        pred = c["prediction"] if isinstance(c["prediction"], str) else ",".join(c["prediction"]) or "-"
        ok = c["label"] == c["prediction"] or (not isinstance(c["prediction"], str) and c["label"] in c["prediction"])
        tops = " | ".join((", ".join(f"{g} {p:.2f}" for g, p in c[h][:2]) if c[h] and isinstance(c[h][0], list) else ",".join(c[h]) or "-") for h in others)
        lines.append(f"{c['file'][:28]:28} {c['label'][:18]:18} {pred[:18]:18} {c['window_agreement']:5.2f}  {tops}  {'ok' if ok else '--'}")
    lines.append("")
    if isinstance(ev.clip, Scores):
        lines.append(f"{'class':18} {'prec':>6} {'rec':>6} {'f1':>6} {'n':>5}   (clip level)")
        for cl, s in ev.clip.per_class.items():
            lines.append(f"{cl[:18]:18} {s['precision']:6.2f} {s['recall']:6.2f} {s['f1']:6.2f} {s['support']:5d}")
        lines.append("")
        lines.append("window confusion (rows: label, columns: prediction)")
        w = max(8, *(len(c) for c in ev.window.classes))
        lines.append(" " * (w + 1) + " ".join(f"{c[:w]:>{w}}" for c in ev.window.classes))
        for cl, row in zip(ev.window.classes, ev.window.confusion):
            lines.append(f"{cl[:w]:{w}} " + " ".join(f"{v:>{w}}" for v in row))
    else:
        lines.append(f"{'family':18} {'detect':>6} {'prec':>6} {'f1':>6} {'fp':>6} {'n':>5}   (clip level)")
        for fam, s in ev.clip.per_family.items():
            fp = "     —" if s["false_positive_rate"] is None else f"{s['false_positive_rate']:6.2f}"
            lines.append(f"{fam[:18]:18} {s['detection_rate']:6.2f} {s['precision']:6.2f} {s['f1']:6.2f} {fp} {s['support']:5d}")
        lines.append("")
        lines.append(f"voice on instrumental clips {_pct(ev.clip.voice_false_positive_rate)} of {ev.clip.instrumental} clips, "
                     f"{_pct(ev.window.voice_false_positive_rate)} of {ev.window.instrumental} windows")
    lines.append("")
    lines.append(f"clip accuracy   {ev.clip.accuracy:.1%} ({ev.clip.n} clips), macro-F1 {ev.clip.macro_f1:.3f}")
    lines.append(f"window accuracy {ev.window.accuracy:.1%} ({ev.window.n} windows), macro-F1 {ev.window.macro_f1:.3f}")
    if ev.groups:
        lines.append("")
        lines.append(f"{'group':24} {'windows':>8} {'accuracy':>9} {'clips':>6} {'accuracy':>9}")
        for g, v in ev.groups.items():
            lines.append(f"{g[:24]:24} {v['window'].n:8d} {v['window'].accuracy:9.1%} {v['clip'].n:6d} {v['clip'].accuracy:9.1%}")
    if ev.skipped:
        lines.append("")
        lines.append(f"skipped {len(ev.skipped)} file(s) shorter than one window, e.g. {ev.skipped[0]['file']} (--loop-short repeats them to fill one)")
    looped = sum(bool(c.get("looped")) for c in ev.clips)
    if looped:
        lines.append(f"{looped} file(s) shorter than one window were repeated end to end to fill one")
    return "\n".join(lines)


def record_in_card(card: ModelCard, key: str, ev: Evaluation, command: str) -> None:
    """Store the evaluation under ``evaluation.<key>`` in the model card (the ONNX file is unchanged)."""
    path = card.onnx_path.with_suffix(".json")
    raw = json.loads(path.read_text())
    per = ev.clip.per_class if isinstance(ev.clip, Scores) else ev.clip.per_family
    raw.setdefault("evaluation", {})[key] = {"command": command, "head": ev.head, "clip_accuracy": ev.clip.accuracy, "clip_macro_f1": ev.clip.macro_f1,
                                            "window_accuracy": ev.window.accuracy, "clips": ev.clips, "per_class": per}
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtgenre eval``."""
    parser.add_argument("--data", type=Path, required=True, help="labelled audio: DIR/<label>/*.wav|au|mp3, or the folder of --labels' files")
    parser.add_argument("--labels", type=Path, default=None, help="CSV with columns file,<label> (file relative to --data)")
    parser.add_argument("--label-column", "--column", dest="label_column", default=None, help="label column of --labels (default: the first after 'file')")
    parser.add_argument("--head", default="genre", choices=HEAD_CHOICES, help="the head to score (default: genre)")
    parser.add_argument("--map", default=None, help="a card mapping of the head's labels (genre: gtzan, broad; mood: quadrant) or, for instruments, "
                        "of the data's instrument names to families (default: the built-in instrument families)")
    parser.add_argument("--group-by", default=None, metavar="COLUMN", help="also score per value of this column of --labels (e.g. source)")
    parser.add_argument("--silence-db", type=float, default=-50.0, help="content head: windows below this RMS level (dBFS) are silence/noise (default: -50)")
    parser.add_argument("--loop-short", action="store_true", help="repeat files shorter than one window until they fill one, instead of skipping them")
    parser.add_argument("--model", default=None, help="model name, card or ONNX file (default: the shipped rtgenre)")
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
    groups = file_groups(args.data, args.labels, args.group_by) if args.group_by else None
    ev = evaluate(card, files, args.map, args.hop, args.threads, head=args.head, groups=groups, silence_db=args.silence_db, loop_short=args.loop_short,
                  stream=not args.recompute, lookahead=args.lookahead)
    print(json.dumps(ev.to_json()) if args.json else format_report(ev))
    if args.plot is not None:
        plot_confusion(ev, args.plot)
    if args.record:
        import shlex
        import sys

        record_in_card(card, args.record, ev, "rtgenre " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    return 0
