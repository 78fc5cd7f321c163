"""Live "sounds like": the tracks of a library nearest to what a feed played lately.

:class:`LiveSimilar` is a per-prediction hook of a feed
(:class:`rtgenre.pipeline.Feed`): it keeps the ``hash`` outputs of the last
``span_s`` seconds of windows, and every ``every_s`` seconds searches the
library by segment with the sign of their mean.  The library's codes are
loaded when the hook is made, before the feed starts; a search runs in the
analysis thread (2.2 ms for 10 000 tracks of 12 segments in ``rtgenre eval-similar``'s benchmark).  Each prediction carries the
latest result as ``similar``: ``[{"path", "distance", "segment", "labels"}]``,
nearest first.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from rtgenre.errors import LibraryMismatchError
from rtgenre.similarity.codes import mean_code
from rtgenre.similarity.library import Library


class LiveSimilar:
    """Search a library with the recent windows' codes.

    Parameters
    ----------
    library : Library
    k : int
        Tracks per result.
    every_s : float
        Seconds of audio between searches.
    span_s : float, optional
        Seconds of windows whose codes are pooled (default: the library's segment length).
    """

    def __init__(self, library: Library, k: int = 3, every_s: float = 3.0, span_s: float | None = None) -> None:
        self.library = library
        self.k = k
        self.every_s = every_s
        self.span_s = library.segment_s if span_s is None else span_s
        library.load()
        self.reset()

    def reset(self) -> None:
        self._recent: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._searched_at: float | None = None
        self._result: list[dict[str, Any]] = []

    def __call__(self, t: float, probs: dict[str, np.ndarray]) -> dict[str, Any]:
        """``{"similar": [...]}`` for the prediction of the window ending at ``t``."""
        if "hash" not in probs:
            raise LibraryMismatchError("The engine did not return the model's hash output, so --index cannot search", "Run with --engine onnxruntime")
        self._recent.append((t, probs["hash"]))
        while self._recent[0][0] <= t - self.span_s:
            self._recent.popleft()
        if self._searched_at is None or t - self._searched_at >= self.every_s:
            code = mean_code(np.stack([h for _, h in self._recent]))
            self._result = [
                {"path": m.path, "distance": m.distance, "segment": m.segment, "labels": m.labels}
                for m in self.library.search(code, self.k, by_segment=True)
            ]
            self._searched_at = t
        return {"similar": self._result}
