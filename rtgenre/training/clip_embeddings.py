"""Window embeddings of a back end over the cached frame features of real labelled clips.

The cache (the lead's real-data feature job, default ``/work/cache/real``) is
``index.jsonl`` — one record per clip: ``id``, ``dataset`` (``4q``, ``gtzan``,
...), ``file``, ``group`` (the artist, or the track where there is no artist:
the unit of every split), ``labels`` and ``frames`` — and ``<id>.npy``, the
clip's ``MSD_musicnn`` frame features, float16 ``(frames, 753)`` at 62.5
frames/s.  The format is :mod:`rtgenre.training.realdata`'s (its ``Clip`` is
:class:`CachedClip` here, and its readers serve).

A clip is cut into model windows of 469 frames every ``hop_frames``; a clip
shorter than one window is one shorter window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtgenre.errors import DataInvalidError
from rtgenre.training.realdata import Clip as CachedClip
from rtgenre.training.realdata import load_features
from rtgenre.training.realdata import read_index as _read_index

WINDOW_FRAMES = 469


def read_index(cache: Path) -> list[CachedClip]:
    """The clips of a feature cache whose features are written (:func:`rtgenre.training.realdata.read_index`, filtered).

    Raises
    ------
    DataInvalidError
        When ``cache`` has no index.
    """
    return [clip for clip in _read_index(cache) if (Path(cache) / f"{clip.id}.npy").is_file()]


def clip_label(clip: CachedClip, kind: str) -> str | None:
    """``genre`` (namespaced by data set: the vocabularies differ; 4Q: its single AllMusic genre), ``quadrant`` or ``artist``; None when absent."""
    if kind == "genre":
        g = clip.labels.get("genre") or clip.labels.get("genre_single")
        return f"{clip.dataset}:{g}" if g else None
    return clip.labels.get(kind) or None


def select(cache: Path, datasets: tuple[str, ...]) -> list[CachedClip]:
    """The cached clips of ``datasets``.

    Raises
    ------
    DataInvalidError
        When there is none.
    """
    clips = [c for c in read_index(cache) if c.dataset in datasets]
    if not clips:
        raise DataInvalidError(f"The cache {cache} has no clips of {', '.join(datasets)}", "Wait for the feature job to finish, or pass another --cache")
    return clips


def clip_windows(feats: np.ndarray, hop_frames: int) -> np.ndarray:
    """``(frames, C)`` → ``(n, min(frames, 469), C)`` windows every ``hop_frames``."""
    if len(feats) <= WINDOW_FRAMES:
        return feats[None]
    starts = range(0, len(feats) - WINDOW_FRAMES + 1, hop_frames)
    return np.stack([feats[s : s + WINDOW_FRAMES] for s in starts])


@torch.no_grad()
def window_embeddings(backend: nn.Module, cache: Path, clips: list[CachedClip], hop_frames: int = 312, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``backend.embed`` of every window of every clip: ``(N, D)`` float32 and each window's clip index ``(N,)``.

    Windows of equal length are batched together; clips are read one at a time.
    """
    backend.eval()
    out: list[np.ndarray] = []
    owner: list[int] = []
    pending: list[np.ndarray] = []
    pending_owner: list[int] = []

    def flush() -> None:
        if pending:
            out.append(backend.embed(torch.from_numpy(np.concatenate(pending))).numpy())
            owner.extend(pending_owner)
            pending.clear()
            pending_owner.clear()

    for i, clip in enumerate(clips):
        w = clip_windows(load_features(cache, clip), hop_frames)
        if pending and (w.shape[1] != pending[0].shape[1] or sum(len(p) for p in pending) + len(w) > batch):
            flush()
        pending.append(w)
        pending_owner.extend([i] * len(w))
    flush()
    return np.concatenate(out), np.asarray(owner)
