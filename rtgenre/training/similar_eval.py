"""``rtgenre eval-similar``: retrieval quality of the similarity codes on real labelled clips, and search cost at 1 M tracks.

Protocol.  The clips of the real-data cache (:mod:`rtgenre.training.clip_embeddings`;
4Q and GTZAN excerpts) are split by group — the artist for 4Q, the track for
GTZAN — into three disjoint parts: the hash layers are trained on one
(``train``, 50 % of the groups), and the other two are the queries (15 %) and
the library searched (35 %), so that no query's artist is in its library and
none of them was seen in training.  The hash layers' settings are chosen
inside the training part, on a grouped validation split of it
(:func:`rtgenre.training.hashing.select_and_fit`: fit on 70 % of the training
groups, score on the other 30 %, each validation clip querying the other
validation clips of other groups); the queries and library play no part in
any choice.  The record keeps every candidate's validation figures and the
settings chosen per code length (``hash_training``).  Each clip is one item: its float
embedding is the mean of its windows' back-end embeddings (windows of 469
frames every 5 s, as ``rtgenre index`` takes them), and its code the sign of
the mean ``hash`` output of its windows (as the library stores a track).

For each task — ``gtzan/genre``, ``4q/genre`` (clips with a single AllMusic
genre) and ``4q/quadrant`` — the queries and library are the clips with that
label, and a library clip is relevant when it has the query's label.  Reported
per method (hash codes of each length ranked by Hamming distance, float
embeddings ranked by cosine, random codes): mAP@10 (average precision over the
top 10, normalised by min(relevant in library, 10)), its standard error over
the queries, and precision@10.  Ties in
Hamming distance are broken by library order.

The search benchmark times :meth:`rtgenre.similarity.codes.CodeIndex.distances` +
:func:`~rtgenre.similarity.codes.top_k` over 1 M random codes per code length
(one thread: numpy runs these on one core), and reports the codes' bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgenre.similarity.codes import CodeIndex, top_k

SPLIT = (("train", 50), ("query", 65), ("library", 100))
"""Cumulative percentage of groups per part."""

TASKS = (("gtzan", "genre"), ("4q", "genre"), ("4q", "quadrant"))
K = 10
RANDOM_SEEDS = 20


def part_of(group: str) -> str:
    """The split part of a group: a fixed function of its name (stable across runs and models)."""
    bucket = int(hashlib.sha1(group.encode()).hexdigest(), 16) % 100
    return next(name for name, upto in SPLIT if bucket < upto)


def average_precision_at_k(relevant: np.ndarray, n_relevant: int, k: int = K) -> float:
    """AP@k of one ranked list (``relevant``: booleans of the ranked items, at least ``k`` or all)."""
    rel = np.asarray(relevant[:k], dtype=np.float64)
    if n_relevant == 0:
        return 0.0
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / min(n_relevant, k))


def retrieval_scores(rankings: np.ndarray, q_labels: np.ndarray, lib_labels: np.ndarray, k: int = K, exclude: np.ndarray | None = None) -> dict[str, float]:
    """mAP@k, precision@k and the standard error of the mean AP of ``rankings`` (queries × ≥k library indices, nearest first).

    ``exclude`` (queries × library, optional): pairs that neither count as
    relevant nor as results (e.g. the query's own group).
    """
    aps, precs = [], []
    for q, order in enumerate(rankings):
        keep = np.ones(len(lib_labels), dtype=bool) if exclude is None else ~exclude[q]
        rel = (lib_labels[order[:k]] == q_labels[q]) & keep[order[:k]]
        aps.append(average_precision_at_k(rel, int(((lib_labels == q_labels[q]) & keep).sum()), k))
        precs.append(float(rel.mean()))
    return {f"map@{k}": round(float(np.mean(aps)), 4), f"p@{k}": round(float(np.mean(precs)), 4),
            f"map@{k}_se": round(float(np.std(aps) / np.sqrt(len(aps))), 4)}


def rank_cosine(queries: np.ndarray, library: np.ndarray, k: int = K, exclude: np.ndarray | None = None) -> np.ndarray:
    """Library indices by decreasing cosine similarity, top ``k`` per query; ``exclude`` (queries × library) pairs rank last."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    lib = library / np.linalg.norm(library, axis=1, keepdims=True)
    dist = -(q @ lib.T)
    if exclude is not None:
        dist[exclude] = np.inf
    return np.stack([top_k(d, k) for d in dist])


def rank_hamming(queries: np.ndarray, library: np.ndarray, k: int = K, exclude: np.ndarray | None = None) -> np.ndarray:
    """Library indices by Hamming distance of packed codes, top ``k`` per query; ``exclude`` (queries × library) pairs rank last."""
    index = CodeIndex(library)
    dist = np.stack([index.distances(q) for q in queries])
    if exclude is not None:
        dist[exclude] = index.nbytes * 8 + 1
    return np.stack([top_k(d, k) for d in dist])


def task_labels(clips: list, dataset: str, kind: str) -> np.ndarray:
    """Each clip's label for the task ``dataset``/``kind`` (``""`` where it has none or is of another data set)."""
    from rtgenre.training.clip_embeddings import clip_label

    return np.array([clip_label(c, kind) or "" if c.dataset == dataset else "" for c in clips])


def group_out_scores(clips: list, items: np.ndarray, rank) -> dict[str, dict[str, float]]:
    """Retrieval within one set of clips: for each task, every labelled clip queries the other labelled clips of other groups.

    ``items`` are the clips' codes or embeddings and ``rank`` the matching
    ranking (:func:`rank_hamming`, :func:`rank_cosine`).  The validation
    figures of :func:`rtgenre.training.hashing.select_and_fit`.  Queries
    with no relevant clip of another group are left out, and so are tasks
    with none.
    """
    groups = np.array([c.group for c in clips])
    out = {}
    for dataset, kind in TASKS:
        labels = task_labels(clips, dataset, kind)
        idx = np.flatnonzero(labels != "")
        exclude = groups[idx][:, None] == groups[idx][None, :]
        has = ((labels[idx][:, None] == labels[idx][None, :]) & ~exclude).any(axis=1)  # queries with a relevant clip to find
        if has.any():
            q = idx[has]
            out[f"{dataset}/{kind}"] = retrieval_scores(rank(items[q], items[idx], exclude=exclude[has]), labels[q], labels[idx], exclude=exclude[has])
    return out


def search_benchmark(bits: int, n: int = 1_000_000, queries: int = 200, k: int = K, seed: int = 0) -> dict[str, Any]:
    """Time a top-``k`` Hamming search over ``n`` random ``bits``-bit codes (one core)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    qs = rng.integers(0, 256, size=(queries, bits // 8), dtype=np.uint8)
    index = CodeIndex(codes)
    top_k(index.distances(qs[0]), k)  # warm-up
    times = []
    for q in qs:
        t0 = time.perf_counter()
        top_k(index.distances(q), k)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"tracks": n, "bits": bits, "queries": queries, "k": k, "ms_median": round(float(np.median(times)), 2),
            "ms_p95": round(float(np.percentile(times, 95)), 2), "ms_max": round(float(np.max(times)), 2),
            "code_bytes_per_track": bits // 8, "codes_mb": round(codes.nbytes / 1e6, 1)}


def library_benchmark(bits: int, tracks: int = 10_000, segments: int = 12, seed: int = 0) -> dict[str, Any]:
    """Bytes per track of a library file of ``tracks`` synthetic 3-minute tracks, and its load and search times.

    Each track has a 78-character path, labels like the shipped model's, a
    whole-track code and ``segments`` segment codes (3 minutes at 15 s).
    """
    import tempfile

    from rtgenre.card import FrontendParams, HashSpec, ModelCard
    from rtgenre.similarity.library import Library, TrackCodes

    rng = np.random.default_rng(seed)
    card = ModelCard("synthetic", "0", Path("synthetic.onnx"), "0" * 64, FrontendParams(), 469, "mel", (), hash=HashSpec("hash", bits))
    labels = {"genre": "electronic", "mood": "energetic", "instruments": ["bass", "drums", "synth"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lib.rtsim"
        with Library(path, card, create=True) as lib:
            lib.db.execute("PRAGMA synchronous = OFF")  # a benchmark: no fsync per track
            for i in range(tracks):
                codes = rng.integers(0, 256, size=(segments + 1, bits // 8), dtype=np.uint8)
                lib.put(Path(f"/home/someone/Music/Some Artist Name/Some Album Title (2020)/{i:06d} Track.flac"), (30_000_000 + i, 1_700_000_000_000_000_000 + i),
                        TrackCodes(180.0, labels, codes[0], np.arange(segments), codes[1:]))
        size = path.stat().st_size
        t0 = time.perf_counter()
        with Library(path, card) as lib:
            lib.search(codes[0], K)
            load_s = time.perf_counter() - t0
            times = []
            for by_segment in (False, True):
                t0 = time.perf_counter()
                lib.search(codes[1], K, by_segment=by_segment)
                times.append((time.perf_counter() - t0) * 1e3)
    return {"tracks": tracks, "segments_per_track": segments, "bits": bits, "file_bytes_per_track": round(size / tracks),
            "open_and_load_s": round(load_s, 2), "search_ms_track_codes": round(times[0], 2), "search_ms_segment_codes": round(times[1], 2)}


def evaluate(backend, cache_dir: Path, bits_list: list[int], seed: int = 0, bench_tracks: int = 1_000_000) -> dict[str, Any]:
    """The whole evaluation (see the module docstring); returns the JSON record."""
    from rtgenre.training.hashing import METHOD, clip_codes, select_and_fit
    from rtgenre.training.clip_embeddings import select, window_embeddings

    clips = select(cache_dir, tuple(sorted({d for d, _ in TASKS})))
    parts = np.array([part_of(c.group) for c in clips])
    t0 = time.perf_counter()
    emb, clip_of = window_embeddings(backend, cache_dir, clips)
    embed_s = time.perf_counter() - t0
    clip_emb = np.stack([emb[clip_of == i].mean(axis=0) for i in range(len(clips))])
    train = np.flatnonzero(parts[clip_of] == "train")
    train_clips = sorted(set(clip_of[train].tolist()))
    remap = {c: j for j, c in enumerate(train_clips)}

    codes: dict[str, np.ndarray] = {}
    train_s = {}
    hash_training = {}
    for bits in bits_list:
        t0 = time.perf_counter()
        layer, hash_training[bits] = select_and_fit(emb[train], np.array([remap[c] for c in clip_of[train]]), [clips[c] for c in train_clips], bits, seed=seed)
        train_s[bits] = round(time.perf_counter() - t0, 1)
        codes[f"hash{bits}"] = clip_codes(layer, emb, clip_of, len(clips))

    tasks: dict[str, Any] = {}
    for dataset, kind in TASKS:
        labels = task_labels(clips, dataset, kind)
        q = np.flatnonzero((parts == "query") & (labels != ""))
        lib = np.flatnonzero((parts == "library") & (labels != ""))
        ql, ll = labels[q], labels[lib]
        if not len(q) or not len(lib):
            tasks[f"{dataset}/{kind}"] = {"queries": len(q), "library": len(lib), "skipped": "no labelled clips of this task in the cache"}
            continue
        methods = {"float-cosine": retrieval_scores(rank_cosine(clip_emb[q], clip_emb[lib]), ql, ll)}
        for name, c in codes.items():
            methods[name] = retrieval_scores(rank_hamming(c[q], c[lib]), ql, ll)
        rng = np.random.default_rng(seed)
        rand = [retrieval_scores(np.stack([rng.permutation(len(lib))[:K] for _ in q]), ql, ll) for _ in range(RANDOM_SEEDS)]
        methods["random"] = {m: round(float(np.mean([r[m] for r in rand])), 4) for m in rand[0]}
        tasks[f"{dataset}/{kind}"] = {"queries": len(q), "library": len(lib), "classes": len(set(ll)),
                                      "relevant_per_query": round(float(np.mean([(ll == x).sum() for x in ql])), 1), "methods": methods}

    return {
        "clips": {d: int(sum(c.dataset == d for c in clips)) for d in sorted({c.dataset for c in clips})},
        "split": {p: {"clips": int((parts == p).sum()), "groups": len({c.group for c, pp in zip(clips, parts) if pp == p})} for p, _ in SPLIT},
        "windows": int(len(emb)),
        "embedding_dim": int(emb.shape[1]),
        "seconds": {"embed": round(embed_s, 1), "select_and_train_hash": train_s},
        "hash_training": {"method": METHOD, **{str(b): r for b, r in hash_training.items()}},
        "tasks": tasks,
        "search": [search_benchmark(b, n=bench_tracks) for b in bits_list],
        "library_file": [library_benchmark(b) for b in bits_list],
    }


def add_eval_similar_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtgenre eval-similar``."""
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/real"), help="real-data feature cache: index.jsonl + <id>.npy (default: /work/cache/real)")
    parser.add_argument("--backend", type=Path, default=None, help="back-end weights (.backend.npz; default: the shipped model's)")
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128], help="code lengths (default: 64 128)")
    parser.add_argument("--bench-tracks", type=int, default=1_000_000, help="synthetic library size of the search benchmark (default: 1000000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here (e.g. benchmarks/results/eval_similar.json)")


def run_eval_similar(args: argparse.Namespace) -> int:
    """Entry point of ``rtgenre eval-similar``."""
    import torch

    from rtgenre.card import ENGINES_DIR, DEFAULT_MODEL, file_sha256
    from rtgenre.training.export import load_backend

    torch.set_num_threads(1)
    path = args.backend or ENGINES_DIR / f"{DEFAULT_MODEL}.backend.npz"
    backend = load_backend(path)
    record = {"command": "rtgenre " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "backend": str(path), "backend_sha256": file_sha256(path),
              "cache": str(args.cache), "machine": f"{platform.machine()}, {platform.python_version()}, numpy {np.__version__}",
              **evaluate(backend, args.cache, args.bits, seed=args.seed, bench_tracks=args.bench_tracks),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
