"""Analyse audio files into similarity codes and keep a library up to date.

A file is analysed with the live path's stages (:func:`rtgenre.pipeline.analyze_file`)
at a coarse hop (default 5 s: a library is built faster than a live feed is
followed).  Each window gives the model's ``hash`` output; windows quieter
than the silence threshold are left out when others remain.  The track's code
is the sign of the mean ``hash`` output of its windows, and there is one code
per segment (default 15 s, windows assigned by their centre).  The track's
dominant labels are the top label of each single-label head and the present
labels of each multi-label head, on the mean probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.errors import LibraryMismatchError, RtgenreError
from rtgenre.inference.base import Engine
from rtgenre.pipeline import FileAnalysis, analyze_file
from rtgenre.similarity.codes import mean_code
from rtgenre.similarity.library import Library, TrackCodes, file_state

#: File name endings ``index`` picks up when it walks a folder (files named on the command line are always tried).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au"})


def dominant_labels(card: ModelCard, probs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{head: top label}`` for single-label heads, ``{head: [present labels]}`` for multi-label heads."""
    out: dict[str, Any] = {}
    for h in card.heads:
        mean = probs[h.name].mean(axis=0)
        if h.kind == "multiclass":
            out[h.name] = h.labels[int(np.argmax(mean))]
        else:
            out[h.name] = [h.labels[i] for i in np.argsort(-mean) if mean[i] >= h.threshold]
    return out


def _kept(analysis: FileAnalysis, silence_db: float) -> np.ndarray:
    keep = analysis.level_dbfs > silence_db
    return keep if keep.any() else np.ones_like(keep)


def track_codes(analysis: FileAnalysis, card: ModelCard, segment_s: float, silence_db: float = -50.0) -> TrackCodes:
    """The whole-track code, one code per segment and the dominant labels of an analysed file."""
    keep = _kept(analysis, silence_db)
    h = analysis.probs["hash"][keep]
    centre = analysis.t[keep] - card.window_seconds / 2
    seg = np.floor(np.maximum(centre, 0.0) / segment_s).astype(np.int64)
    ids = np.unique(seg)
    return TrackCodes(
        duration=round(analysis.duration, 3),
        labels=dominant_labels(card, {k: v[keep] for k, v in analysis.probs.items() if k != "hash"}),
        code=mean_code(h),
        segment_index=ids,
        segment_codes=np.stack([mean_code(h[seg == i]) for i in ids]),
    )


def excerpt_code(analysis: FileAnalysis, card: ModelCard, at: float, length: float) -> np.ndarray:
    """The code of the windows centred in ``[at, at + length)`` (at least the window nearest to ``at``)."""
    centre = analysis.t - card.window_seconds / 2
    sel = (centre >= at) & (centre < at + length)
    if not sel.any():
        sel = np.arange(len(centre)) == np.argmin(np.abs(centre - at))
    return mean_code(analysis.probs["hash"][sel])


def analyse(path: Path, card: ModelCard, engine: Engine, hop_s: float) -> FileAnalysis:
    """Run the model over a file; the analysis carries the ``hash`` output."""
    analysis = analyze_file(path, card, engine, hop_s=hop_s)
    if "hash" not in analysis.probs:
        raise LibraryMismatchError(f"Engine {engine.name} did not return the hash output of {card.name}", "Run with --engine onnxruntime")
    return analysis


def audio_files(paths: list[Path]) -> Iterator[Path]:
    """Files named in ``paths`` and audio files (by suffix) under folders in ``paths``, sorted, absolute."""
    for p in paths:
        p = p.resolve()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in AUDIO_SUFFIXES:
                        yield Path(root) / name
        else:
            yield p


@dataclass
class IndexReport:
    """What one ``rtgenre index`` run did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tracks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"added": len(self.added), "updated": len(self.updated), "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"path": p, "error": e} for p, e in self.failed.items()], "tracks": self.tracks}


def index_paths(
    library: Library,
    paths: list[Path],
    card: ModelCard,
    engine: Engine,
    silence_db: float = -50.0,
    progress: Callable[[Path, int, int], None] | None = None,
) -> IndexReport:
    """Bring ``library`` up to date with the audio files under ``paths``.

    New and changed files are analysed and stored one transaction each (an
    interrupted run resumes); unchanged ones are skipped; tracks under
    ``paths`` whose files are gone are removed.  Unreadable files are recorded
    (and skipped while unchanged) and reported in :attr:`IndexReport.failed`.
    ``progress(path, done, total)`` is called before each file.
    """
    report = IndexReport()
    missing = [str(p) for p in paths if not p.exists()]
    for p in missing:
        report.failed[p] = "no such file or folder"
    files = list(audio_files([p for p in paths if p.exists()]))
    report.removed = library.prune([p.resolve() for p in paths if p.exists()])
    for n, path in enumerate(files):
        if progress is not None:
            progress(path, n, len(files))
        try:
            state = library.state(path)
            stamp = file_state(path)
        except OSError as e:
            report.failed[str(path)] = f"cannot read ({e.strerror})"
            continue
        if state == "current":
            report.unchanged += 1
            continue
        if state == "failed":
            report.failed[str(path)] = library.failure(path)
            continue
        try:
            track = track_codes(analyse(path, card, engine, library.hop_s), card, library.segment_s, silence_db)
        except LibraryMismatchError:  # the model cannot make codes: no file would succeed
            raise
        except RtgenreError as e:
            library.put_failure(path, stamp, str(e))
            report.failed[str(path)] = str(e)
            continue
        library.put(path, stamp, track)
        (report.updated if state == "changed" else report.added).append(str(path))
    if progress is not None:
        progress(Path(), len(files), len(files))
    report.tracks = len(library)
    return report
