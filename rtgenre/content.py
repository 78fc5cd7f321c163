"""The short-window content classifier: music, speech or speech over music from the newest second of encoder features.

The model's ``content`` head reads the whole 7.5 s window, so a change from
music to talk shows in it only once most of a window has changed.  A split
model (streaming) computes the encoder's frame features every hop anyway; this
classifier reads the newest :attr:`ContentClassifier.frames` of them (about
1 s), summarises them as the mean and standard deviation of every feature
(:func:`frame_stats`) and maps that through a small network (standardisation,
one hidden ReLU layer, softmax) evaluated in numpy.  Its output replaces the
back end's ``content`` probabilities of the window (:mod:`rtgenre.pipeline`),
so the gate (:mod:`rtgenre.gate`) follows talk within a second or two.
A model whose encoder is a stack (several encoders' features side by side,
e.g. ``rtgenre-duo``) may carry a classifier of its first encoder's features:
it reads the first :attr:`ContentClassifier.feature_dim` of every frame.

Weights live beside the model card as ``<model name>.content.npz`` (found by
that name; the card's ``content_classifier`` entry records how they were
trained and their figures) and are written by
:mod:`rtgenre.training.content`.  Arrays: ``labels`` (str), ``frames`` (int),
``mean``, ``scale`` (the standardisation of the statistics), ``w1``, ``b1``,
``w2``, ``b2``.  A model without such a file, or a whole-window run (which has
no frame features), keeps the back end's content head.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.errors import ModelCorruptError
from rtgenre.gate import CONTENT_HEAD

#: Suffix of the weights file beside the card: ``<name>.content.npz``.
SUFFIX = ".content.npz"


def frame_stats(feats: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of every feature over the frames: ``(..., frames, dim)`` → ``(..., 2 dim)``."""
    x = np.asarray(feats, np.float32)
    return np.concatenate([x.mean(axis=-2), x.std(axis=-2)], axis=-1)


class ContentClassifier:
    """Content probabilities of the newest frames (a processor: ``process``).

    Parameters
    ----------
    path : Path
        The ``.content.npz`` weights file.
    labels : sequence of str, optional
        The order the output must have (the card's content head); the file's
        labels must be the same set.

    Raises
    ------
    ModelCorruptError
        The file cannot be read, lacks an array or its shapes or labels do not agree.
    """

    def __init__(self, path: Path, labels: tuple[str, ...] | None = None) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                own = tuple(str(s) for s in z["labels"])
                self.frames = int(z["frames"])
                self.mean, self.scale = z["mean"].astype(np.float32), z["scale"].astype(np.float32)
                self.w1, self.b1 = z["w1"].astype(np.float32), z["b1"].astype(np.float32)
                self.w2, self.b2 = z["w2"].astype(np.float32), z["b2"].astype(np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise ModelCorruptError(f"Content classifier {path} is unreadable ({e})", "Rebuild it with `python -m rtgenre.training.content` or delete it to use the content head") from None
        labels = own if labels is None else tuple(labels)
        dims = (len(self.mean), len(self.scale), self.w1.shape[0])
        if sorted(own) != sorted(labels) or len(set(dims)) != 1 or self.w1.shape[1] != len(self.b1) or self.w2.shape != (len(self.b1), len(own)) \
                or len(self.b2) != len(own) or self.frames < 2:
            raise ModelCorruptError(f"Content classifier {path} does not fit its model (labels {list(own)} for {list(labels)}, shapes {dims}, "
                                    f"{self.w1.shape}, {self.w2.shape})", "Rebuild it with `python -m rtgenre.training.content` for this model")
        order = [own.index(label) for label in labels]
        self.w2, self.b2 = self.w2[:, order], self.b2[order]
        self.labels = labels
        self.feature_dim = len(self.mean) // 2

    def process(self, feats: np.ndarray) -> np.ndarray:
        """Probabilities ``(..., n_labels)`` of the last :attr:`frames` frames of ``feats`` ``(..., frames, dim)`` (their first :attr:`feature_dim` features)."""
        x = (frame_stats(feats[..., -self.frames :, : self.feature_dim]) - self.mean) / self.scale
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=8)
def _load(path: Path, labels: tuple[str, ...]) -> ContentClassifier:
    return ContentClassifier(path, labels)


def for_card(card: ModelCard) -> ContentClassifier | None:
    """The content classifier beside a split model's card with a content head, or ``None``.

    Loaded once per file and shared (it holds no state).
    """
    if card.split is None or CONTENT_HEAD not in card.labels():
        return None
    path = (card.onnx_path.parent / f"{card.name}{SUFFIX}").resolve()
    if not path.is_file():
        return None
    clf = _load(path, card.head(CONTENT_HEAD).labels)
    if card.split.encoder.feature_dim % clf.feature_dim:  # the encoder's, or a stack's first encoder's features
        raise ModelCorruptError(f"Content classifier {path} reads {clf.feature_dim} features, the encoder gives {card.split.encoder.feature_dim}",
                                "Rebuild it with `python -m rtgenre.training.content` for this model")
    return clf
