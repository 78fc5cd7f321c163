"""``rtgenre index``, ``rtgenre similar``, ``rtgenre eval-similar`` and ``listen --index``: options and entry points.

:func:`add_similarity_arguments` adds the subcommands (and ``--index`` to
``listen``); :func:`live_hooks` gives ``listen`` its per-prediction hook.
Indexing and search run the model with ONNX Runtime (the engine that returns
the ``hash`` output); ``eval-similar`` needs the ``[train]`` extra (torch).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rtgenre.errors import ExitCode, InputUnreadableError, UsageError


def parse_time(text: str) -> float:
    """``"90"``, ``"1:30"``, ``"1:02:03"`` or ``"12.5"`` → seconds."""
    if not re.fullmatch(r"(\d+:){0,2}\d+(\.\d+)?", text.strip()):
        raise UsageError(f"--at {text!r} is not a time", "Give seconds or minutes:seconds, e.g. --at 90 or --at 1:30")
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def add_similarity_arguments(sub: argparse._SubParsersAction) -> None:
    """Add ``index``, ``similar`` and ``eval-similar`` to the subcommands, and ``--index`` to ``listen``."""
    def model_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("model")
        g.add_argument("--model", default=None, help="model with a hash output: name in engines/, card or ONNX path (default: the shipped model)")
        g.add_argument("--threads", type=int, default=1, help="ONNX Runtime CPU threads (default: 1)")

    p = sub.add_parser("index", help="analyse audio files into a similarity library (resumable)",
                       description="Analyse every audio file under the paths and store its similarity codes in LIBRARY.")
    p.add_argument("paths", nargs="+", type=Path, help="audio files and folders (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="the library file (created, or brought up to date)")
    p.add_argument("--hop", type=float, default=5.0, help="seconds between analysed windows, for a new library (default: 5)")
    p.add_argument("--segment", type=float, default=15.0, help="seconds per segment code, for a new library (default: 15)")
    p.add_argument("--silence-db", type=float, default=-50.0, help="windows below this RMS level (dBFS) are left out (default: -50)")
    p.add_argument("--json", action="store_true", help="print the run's report as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    model_options(p)
    p.set_defaults(handler=run_index)

    p = sub.add_parser("similar", help="tracks of a library that sound like an audio file",
                       description="Rank the tracks of a library by Hamming distance to the code of QUERY (or of a segment of it).")
    p.add_argument("query", type=Path, help="audio file")
    p.add_argument("--index", type=Path, required=True, help="library written by `rtgenre index --out`")
    p.add_argument("-k", type=int, default=10, help="number of tracks (default: 10)")
    p.add_argument("--at", default=None, help="query the segment starting here (seconds or m:ss) instead of the whole file")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    model_options(p)
    p.set_defaults(handler=run_similar)

    from rtgenre.training.similar_eval import add_eval_similar_arguments, run_eval_similar

    p = sub.add_parser("eval-similar", help="retrieval quality of the similarity codes on real labelled clips (needs the [train] extra)",
                       description="Train hash layers on part of the real labelled clips' cached features, then measure mAP@10 and "
                                   "precision@10 of the codes, the float embeddings and random codes on held-out artists, and the "
                                   "search time over 1 M synthetic codes.")
    add_eval_similar_arguments(p)
    p.set_defaults(handler=run_eval_similar)

    g = sub.choices["listen"].add_argument_group("similarity")
    g.add_argument("--index", type=Path, default=None, help="library (`rtgenre index`): add the 3 nearest tracks to predictions as `similar`")
    g.add_argument("--similar-every", type=float, default=3.0, help="seconds of audio between similarity searches (default: 3)")


def _library(path: Path, card, create: bool = False, **kw):
    from rtgenre.similarity.library import Library

    return Library(path, card, create=create, **kw)


def _engine(card, threads: int):
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine

    if threads < 0:
        raise UsageError(f"Invalid --threads {threads}", "Use --threads >= 0")
    return OnnxRuntimeEngine(card, threads=threads)


def run_index(args: argparse.Namespace) -> int:
    """Entry point of ``rtgenre index``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rtgenre.card import load_card
    from rtgenre.similarity.indexer import index_paths

    if args.hop <= 0 or args.segment < args.hop:
        raise UsageError(f"Invalid --hop {args.hop} / --segment {args.segment}", "Use --hop > 0 and --segment >= --hop")
    card = load_card(args.model)
    err = Console(stderr=True)
    with _library(args.out, card, create=True, hop_s=args.hop, segment_s=args.segment) as lib:
        engine = _engine(card, args.threads)
        columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=err, disable=args.no_progress, transient=True) as bar:
            task = bar.add_task("", total=None)

            def progress(path: Path, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description=path.name[-40:])

            report = index_paths(lib, args.paths, card, engine, silence_db=args.silence_db, progress=progress)
    for path, error in report.failed.items():
        print(f"rtgenre: skipped {path}: {error}", file=sys.stderr)
    print(f"rtgenre: {args.out}: {report.tracks} tracks ({len(report.added)} added, {len(report.updated)} updated, "
          f"{report.unchanged} unchanged, {len(report.removed)} removed, {len(report.failed)} unreadable)", file=sys.stderr)
    if args.json:
        print(json.dumps({"library": str(args.out), **report.to_json()}))
    return ExitCode.INPUT_UNREADABLE if report.failed else ExitCode.OK


def run_similar(args: argparse.Namespace) -> int:
    """Entry point of ``rtgenre similar``."""
    from rtgenre.card import load_card
    from rtgenre.similarity.indexer import analyse, excerpt_code, track_codes

    if args.k < 1:
        raise UsageError(f"Invalid -k {args.k}", "Use -k 1 or more")
    if not args.query.is_file():
        raise InputUnreadableError(f"Query {args.query} does not exist or is not a file", "Pass an audio file")
    at = None if args.at is None else parse_time(args.at)
    card = load_card(args.model)
    with _library(args.index, card) as lib:
        analysis = analyse(args.query, card, _engine(card, args.threads), lib.hop_s)
        if at is None:
            code = track_codes(analysis, card, lib.segment_s).code
        else:
            if at >= analysis.duration:
                raise UsageError(f"--at {_clock(at)} is past the end of {args.query} ({_clock(analysis.duration)})", "Give a time inside the file")
            code = excerpt_code(analysis, card, at, lib.segment_s)
        matches = lib.search(code, args.k, by_segment=at is not None)
        record: dict[str, Any] = {"query": str(args.query), "at": at, "model": card.name, "bits": lib.bits, "library": str(args.index),
                                  "tracks": len(lib), "results": [{"rank": i + 1, **m.to_json()} for i, m in enumerate(matches)]}
    if args.json:
        print(json.dumps(record))
    else:
        _print_matches(record)
    return ExitCode.OK


def _print_matches(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    at = f" at {_clock(record['at'])}" if record["at"] is not None else ""
    table = Table(title=f"sounds like {record['query']}{at} ({record['tracks']} tracks, {record['bits']} bits; --json for full paths)", title_justify="left")
    for col, kw in (("#", {"justify": "right"}), ("distance", {"justify": "right"}), ("track", {}), ("segment", {"justify": "right"}), ("labels", {})):
        table.add_column(col, **kw)
    for r in record["results"]:
        labels = " · ".join(v if isinstance(v, str) else ", ".join(v) for v in r["labels"].values() if v)
        table.add_row(str(r["rank"]), str(r["distance"]), Path(r["path"]).name, _clock(r["segment"]), labels)
    Console().print(table)


def live_hooks(args: argparse.Namespace, card) -> list:
    """``listen``'s per-prediction hooks: the library search when ``--index`` is given."""
    if getattr(args, "index", None) is None:
        return []
    from rtgenre.similarity.live import LiveSimilar

    if args.similar_every <= 0:
        raise UsageError(f"Invalid --similar-every {args.similar_every}", "Use a positive number of seconds")
    return [LiveSimilar(_library(args.index, card), every_s=args.similar_every)]
