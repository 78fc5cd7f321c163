"""Training examples: random window crops of cached features with their targets.

An :class:`Item` is one cached track (or rendition, or user clip): its frame
features, the teachers' patch tags (if any) and its exact labels (if any).
:class:`CropSampler` draws a window-sized crop and builds per-head targets and
masks: exact labels where the item has them, teacher targets
(:class:`~rtgenre.training.labels.TagMapper`) otherwise, nothing (mask 0) for
labels neither knows.  :func:`make_batch` stacks crops and optionally mixes
pairs of crops (mixup in feature space, targets mixed likewise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtgenre.training.features import read_index
from rtgenre.training.labels import HEADS, TagMapper
from rtgenre.training.musicnn import PATCH_FRAMES

WINDOW_FRAMES = 469


@dataclass
class Item:
    """One track's cached data.

    Attributes
    ----------
    feats : ndarray, shape (frames, C)
        Frame features (may be a read-only memory map).
    tags : ndarray or None, shape (patches, n_tags)
        Teacher tags of consecutive 187-frame patches.
    labels : dict
        Exact labels: head name → class index (multiclass) or 0/1 vector (multilabel).
    group : str
        The source track (renditions of one track share it).
    audio : (Path, (start, frames)) or None
        The audio the features were computed from (original renditions only).
    """

    feats: np.ndarray
    tags: np.ndarray | None
    labels: dict[str, int | np.ndarray]
    group: str
    audio: tuple[Path, tuple[int, int]] | None = None


def load_cache(cache: Path, corpus: Path | None = None, heads: dict[str, tuple[str, tuple[str, ...]]] = HEADS) -> tuple[list[Item], list[Item]]:
    """Items of a feature cache, split into (training, held-out).

    Exact labels outside a head's vocabulary are ignored.  With ``corpus``,
    original (unaugmented) items know their audio (:attr:`Item.audio`).
    """
    train, held = [], []
    for rec in read_index(cache):
        labels: dict[str, int | np.ndarray] = {}
        genres = heads["genre"][1]
        if rec.get("genre") in genres:
            labels["genre"] = genres.index(rec["genre"])
        if rec.get("instruments") is not None and "instruments" in heads:
            families = heads["instruments"][1]
            labels["instruments"] = np.array([f in rec["instruments"] for f in families], np.float32)
        feats = np.load(Path(cache) / f"{rec['id']}.feats.npy", mmap_mode="r")
        tags = np.load(Path(cache) / f"{rec['id']}.tags.npy")
        if len(feats) < WINDOW_FRAMES:
            continue
        audio = (Path(corpus) / rec["track"], tuple(rec["segment"])) if corpus is not None and rec["rendition"] == "original" else None
        (held if rec["held_out"] else train).append(Item(feats, tags, labels, f"{cache}:{rec['track']}", audio))
    return train, held


def window_tags(tags: np.ndarray, start: int, frames: int = WINDOW_FRAMES) -> np.ndarray:
    """Teacher tags of a window: the mean over its 187-frame patches, weighted by overlap."""
    idx = np.arange(start // PATCH_FRAMES, (start + frames - 1) // PATCH_FRAMES + 1)
    idx = np.unique(np.minimum(idx, len(tags) - 1))  # frames after the last whole patch use the last patch
    lo = np.maximum(idx * PATCH_FRAMES, start)
    hi = np.minimum((idx + 1) * PATCH_FRAMES, start + frames)
    w = np.clip(hi - lo, 1, None).astype(np.float32)
    return (tags[idx].astype(np.float32) * w[:, None]).sum(0) / w.sum()


class CropSampler:
    """Window crops of items with per-head targets and masks.

    Parameters
    ----------
    heads : dict
        ``name → (kind, labels)`` of the model being trained.
    mapper : TagMapper or None
        Teacher tags → targets; ``None`` when only exact labels exist.
    frames : int
        Window length in frames.
    """

    def __init__(self, heads: dict[str, tuple[str, tuple[str, ...]]], mapper: TagMapper | None, frames: int = WINDOW_FRAMES) -> None:
        self.heads, self.mapper, self.frames = heads, mapper, frames
        self.teacher_mask = {h: mapper.has_teacher(h).astype(np.float32) for h in heads if mapper is not None and h in mapper.index}

    def targets(self, item: Item, start: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Targets and masks of the window of ``item`` starting at frame ``start``."""
        teacher = self.mapper.targets(window_tags(item.tags, start, self.frames)) if self.mapper is not None and item.tags is not None and len(item.tags) else {}
        targets, masks = {}, {}
        for name, (kind, labels) in self.heads.items():
            n = len(labels)
            if name in item.labels:
                exact = item.labels[name]
                targets[name] = np.eye(n, dtype=np.float32)[exact] if kind == "multiclass" else np.asarray(exact, np.float32)
                masks[name] = np.ones(n, np.float32)
            elif name in teacher:
                targets[name] = teacher[name].astype(np.float32)
                masks[name] = self.teacher_mask[name] if kind == "multilabel" else np.ones(n, np.float32)
            else:
                targets[name], masks[name] = np.zeros(n, np.float32), np.zeros(n, np.float32)
        return targets, masks

    def process(self, item: Item, rng: np.random.Generator | None = None, start: int | None = None):
        """One crop: ``(feats (frames, C) float32, targets, masks)``; random start unless given."""
        if start is None:
            start = int(rng.integers(0, len(item.feats) - self.frames + 1))
        feats = np.asarray(item.feats[start : start + self.frames], dtype=np.float32)
        return (feats, *self.targets(item, start))

    def reset(self) -> None:
        """Stateless; present for the processor interface."""


def fixed_starts(item: Item, frames: int = WINDOW_FRAMES, hop: int = WINDOW_FRAMES) -> list[int]:
    """Window starts every ``hop`` frames (evaluation crops; at least one)."""
    return list(range(0, len(item.feats) - frames + 1, hop)) or [0]


def make_batch(
    crops: Sequence[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]],
    rng: np.random.Generator | None = None,
    mix_prob: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stack crops into tensors; with probability ``mix_prob`` a crop is mixed with another.

    Mixing is ``λ a + (1 - λ) b`` with ``λ ~ U(0.5, 1)`` for the features and
    the targets; a label is masked unless both crops know it.
    """
    feats = np.stack([c[0] for c in crops])
    targets = {h: np.stack([c[1][h] for c in crops]) for h in crops[0][1]}
    masks = {h: np.stack([c[2][h] for c in crops]) for h in crops[0][2]}
    if mix_prob > 0 and len(crops) > 1:
        partner = (np.arange(len(crops)) + rng.integers(1, len(crops))) % len(crops)  # never itself
        mix = rng.random(len(crops)) < mix_prob
        lam = np.where(mix, rng.uniform(0.5, 1.0, len(crops)), 1.0).astype(np.float32)
        feats = lam[:, None, None] * feats + (1 - lam[:, None, None]) * feats[partner]
        for h, t in targets.items():
            targets[h] = lam[:, None] * t + (1 - lam[:, None]) * t[partner]
            masks[h] = np.where(mix[:, None], np.minimum(masks[h], masks[h][partner]), masks[h])
    return (torch.from_numpy(feats), {h: torch.from_numpy(t) for h, t in targets.items()}, {h: torch.from_numpy(m) for h, m in masks.items()})
