"""The real labelled clips' cached MSD_musicnn frame features, and window embeddings of them.

The cache (written by the lead's feature job, default ``/work/cache/real``)
is ``index.jsonl`` — one record per clip: ``id``, ``dataset`` (``4q``,
``gtzan``, ...), ``file``, ``group`` (the artist, or the track where there is
no artist: the unit of every split) and ``labels`` — and ``<id>.npy``, the
clip's frame features, float16 ``(frames, 753)`` at 62.5 frames/s.

A clip is cut into model windows of 469 frames every ``hop_frames``; a clip
shorter than one window (the GTZAN excerpts, 2–3 s) is one shorter window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtgenre.errors import DataInvalidError

WINDOW_FRAMES = 469


@dataclass(frozen=True)
class Clip:
    """One cached clip and its labels."""

    id: str
    dataset: str
    path: Path
    group: str
    labels: dict = field(default_factory=dict, hash=False)

    @property
    def artist(self) -> str | None:
        return self.labels.get("artist") or None

    def label(self, kind: str) -> str | None:
        """``genre`` (namespaced by data set: vocabularies differ) or ``quadrant``; None when absent."""
        if kind == "genre":
            g = self.labels.get("genre") or self.labels.get("genre_single")
            return f"{self.dataset}:{g}" if g else None
        return self.labels.get(kind) or None


def load_clips(cache_dir: str | Path, datasets: tuple[str, ...]) -> list[Clip]:
    """The clips of ``datasets`` in the cache whose features exist, in index order.

    Raises
    ------
    DataInvalidError
        When there is no index or no clip of those data sets.
    """
    cache_dir = Path(cache_dir)
    index = cache_dir / "index.jsonl"
    if not index.is_file():
        raise DataInvalidError(f"No feature cache index at {index}", "Pass --cache with the folder holding index.jsonl and <id>.npy")
    clips = []
    for line in index.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        path = cache_dir / f"{r['id']}.npy"
        if r.get("dataset") in datasets and path.is_file():
            clips.append(Clip(r["id"], r["dataset"], path, r.get("group") or f"track:{r['id']}", r.get("labels", {})))
    if not clips:
        raise DataInvalidError(f"The cache {cache_dir} has no clips of {', '.join(datasets)}", "Wait for the feature job to finish, or pass another --cache")
    return clips


def clip_windows(feats: np.ndarray, hop_frames: int) -> np.ndarray:
    """``(frames, C)`` → ``(n, min(frames, 469), C)`` windows every ``hop_frames``."""
    if len(feats) <= WINDOW_FRAMES:
        return feats[None]
    starts = range(0, len(feats) - WINDOW_FRAMES + 1, hop_frames)
    return np.stack([feats[s : s + WINDOW_FRAMES] for s in starts])


@torch.no_grad()
def window_embeddings(backend: nn.Module, clips: list[Clip], hop_frames: int = 312, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
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
            x = torch.from_numpy(np.concatenate(pending).astype(np.float32))
            out.append(backend.embed(x).numpy())
            owner.extend(pending_owner)
            pending.clear()
            pending_owner.clear()

    for i, clip in enumerate(clips):
        w = clip_windows(np.load(clip.path), hop_frames)
        if pending and (w.shape[1] != pending[0].shape[1] or sum(len(p) for p in pending) + len(w) > batch):
            flush()
        pending.append(w)
        pending_owner.extend([i] * len(w))
    flush()
    return np.concatenate(out), np.asarray(owner)
