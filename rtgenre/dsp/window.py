"""Sliding windows of log-Mel frames: when a window is due and what it holds.

This module owns the window arithmetic (window ``k`` ends at frame
``window_frames + round((k + phase) * hop_frames)``, computed with exact
fractions so that fractional hops never drift) and the cutting of windows out
of a preallocated ring of frames, together with the window's input level from
the :mod:`rtgenre.dsp.level` blocks.

A stream's *phase* (0 by default) delays its window grid by that fraction of a
hop.  A monitor gives its feeds phases spread over the hop (:func:`feed_phase`):
feeds started together, whose sample clocks then keep them in step, would
otherwise all have a window due at the same moment, and the last of them would
wait for the engine to run every other feed's window first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from rtgenre.dsp.level import window_levels
from rtgenre.errors import ModelCorruptError, UsageError

#: Step between the phases of consecutive feeds (the golden ratio's fractional part: any number of feeds spreads evenly).
PHASE_STEP = (5**0.5 - 1) / 2


def feed_phase(index: int) -> float:
    """The phase in [0, 1) of a monitor's ``index``-th feed: where its grids start (see the module).

    Examples
    --------
    >>> [round(feed_phase(k), 3) for k in range(4)]
    [0.0, 0.618, 0.236, 0.854]
    """
    return (index * PHASE_STEP) % 1.0


@dataclass
class Window:
    """One model input.

    Attributes
    ----------
    mel : ndarray, shape (window_frames, n_mels)
        A fresh array, safe to keep.  Empty, ``(window_frames, 0)``, when the
        analyzer streams frame features (the window's features are then read
        from its :class:`~rtgenre.inference.streaming.FeatureStream`).
    index : int
        0 for the first window, then 1, 2, ...
    end_frame : int
        Absolute index one past the window's last frame.
    t : float
        Seconds of audio at the window's end.
    level_dbfs : float or None
        RMS level of the window's samples (floored at -120); None when no
        levels were fed.
    peak_dbfs : float or None
        Peak level (floored at -120); None when no levels were fed.
    """

    mel: np.ndarray
    index: int
    end_frame: int
    t: float
    level_dbfs: float | None = None
    peak_dbfs: float | None = None


class RowRing:
    """Rows stored by absolute index; keeps the last ``capacity`` of them."""

    def __init__(self, capacity: int, width: int | None, dtype: type[np.generic]) -> None:
        shape = (capacity,) if width is None else (capacity, width)
        self.data = np.zeros(shape, dtype=dtype)
        self.total = 0

    def extend(self, rows: np.ndarray) -> None:
        """Append rows (only the last ``capacity`` are kept)."""
        n = len(rows)
        cap = self.data.shape[0]
        kept = rows[-cap:] if n > cap else rows
        pos = (self.total + n - len(kept)) % cap
        first = min(len(kept), cap - pos)
        self.data[pos : pos + first] = kept[:first]
        self.data[: len(kept) - first] = kept[first:]
        self.total += n

    def reserve(self, capacity: int) -> None:
        """Grow to hold at least ``capacity`` rows, keeping the rows held (no-op when large enough).

        It grows at least twofold, so that a need growing a little at a time (a backlog) copies the held rows only now and then.
        """
        cap = self.data.shape[0]
        if capacity <= cap:
            return
        held = min(self.total, cap)
        rows = self.get(self.total - held, self.total) if held else self.data[:0]
        self.data = np.zeros((max(capacity, 2 * cap), *self.data.shape[1:]), dtype=self.data.dtype)
        self.total -= held
        self.extend(rows)

    def views(self, start: int, end: int) -> tuple[np.ndarray, ...]:
        """Rows ``[start, end)`` as one or two views of the storage, in order (no copy; valid until the next write); they must still be held."""
        cap = self.data.shape[0]
        if start < self.total - cap or end > self.total:
            raise ValueError(f"rows [{start}, {end}) not held (have [{max(0, self.total - cap)}, {self.total}))")
        i = start % cap
        first = min(end - start, cap - i)
        return (self.data[i : i + first],) if first == end - start else (self.data[i:], self.data[: end - start - first])

    def get(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        """A fresh copy of rows ``[start, end)`` (written into ``out`` when given); they must still be held."""
        parts = self.views(start, end)
        if out is None:
            return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
        out[: len(parts[0])] = parts[0]
        if len(parts) == 2:
            out[len(parts[0]) :] = parts[1]
        return out


class Windower:
    """Cuts due windows out of the stream of log-Mel frames.

    Parameters
    ----------
    window_frames : int
        Frames per window (469 for 7.5 s at 16 kHz, hop 256, n_fft 512).
    n_mels : int
        Mel bands per frame.
    hop_seconds : float
        Seconds between window ends; at least one frame.
    sample_rate, hop_length, n_fft : int
        Front-end parameters (for ``t`` and the hop in frames).
    phase : float
        Delay of the window grid, a fraction of a hop in [0, 1) (see the module).

    Raises
    ------
    UsageError
        ``hop_seconds`` shorter than one frame.
    ValueError
        ``phase`` outside [0, 1).
    """

    def __init__(self, window_frames: int, n_mels: int, hop_seconds: float, sample_rate: int, hop_length: int, n_fft: int,
                 phase: float = 0.0) -> None:
        frame_s = hop_length / sample_rate
        if not (math.isfinite(hop_seconds) and hop_seconds >= frame_s):
            raise UsageError(
                f"Window hop {hop_seconds} s is shorter than one frame ({frame_s:g} s)",
                f"Use a hop of at least {frame_s:g} s (e.g. --hop 0.5)",
            )
        if hop_length > n_fft:
            raise ModelCorruptError(
                f"Front end has hop_length {hop_length} > n_fft {n_fft}, which windows cannot align with",
                "Use a card whose hop_length is at most its n_fft",
            )
        if not 0.0 <= phase < 1.0:
            raise ValueError(f"phase must be in [0, 1), got {phase}")
        self.window_frames = int(window_frames)
        self.n_mels = int(n_mels)
        self.hop_seconds = float(hop_seconds)
        self.sample_rate = int(sample_rate)
        self.hop_length = int(hop_length)
        self.n_fft = int(n_fft)
        self.hop_frames = Fraction(hop_seconds).limit_denominator(10**6) * Fraction(sample_rate, hop_length)
        self.phase = Fraction(phase).limit_denominator(10**6)
        # Between calls, level blocks run ahead of frames by at most ceil(n_fft / hop) - 1.
        lead = -(-self.n_fft // self.hop_length) + 1
        self._frames = RowRing(self.window_frames + lead, self.n_mels, np.float32)
        self._ms = RowRing(self.window_frames + lead, None, np.float64)
        self._peak = RowRing(self.window_frames + lead, None, np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget all frames and restart the window count."""
        for ring in (self._frames, self._ms, self._peak):
            ring.total = 0
        self.next_index = 0

    def window_end(self, k: int) -> int:
        """End frame (exclusive) of window ``k``: ``window_frames + round((k + phase) * hop_frames)``, halves rounded up."""
        return self.window_frames + math.floor((k + self.phase) * self.hop_frames + Fraction(1, 2))

    def windows_for(self, n_frames: int) -> int:
        """How many windows ``n_frames`` frames complete."""
        if n_frames < self.window_frames:
            return 0
        return max(0, math.ceil((n_frames - self.window_frames + Fraction(1, 2)) / self.hop_frames - self.phase))

    def time_of(self, end_frame: int) -> float:
        """Seconds of audio at the end of frame ``end_frame - 1``."""
        return ((end_frame - 1) * self.hop_length + self.n_fft) / self.sample_rate

    def process(self, frames: np.ndarray, block_ms: np.ndarray | None = None, block_peak: np.ndarray | None = None) -> list[Window]:
        """Feed new frames (and the level blocks of the same samples); return due windows in order.

        Parameters
        ----------
        frames : ndarray, shape (n, n_mels)
            The next log-Mel frames.
        block_ms, block_peak : ndarray or None
            The next level blocks from :class:`~rtgenre.dsp.level.LevelMeter`
            (block ``b`` aligns with frame ``b``).  Without them windows carry
            no level.

        Returns
        -------
        list of Window
        """
        f0, b0 = self._frames.total, self._ms.total
        levels = block_ms is not None
        out: list[Window] = []
        fi = bi = 0
        while True:
            end = self.window_end(self.next_index)
            if f0 + len(frames) < end:
                break
            take = end - f0
            if take > fi:
                self._frames.extend(frames[fi:take])
                fi = take
            if levels:
                if b0 + len(block_ms) < end:
                    raise ValueError(f"level blocks end at {b0 + len(block_ms)}, behind frame {end}")
                take = end - b0
                if take > bi:
                    self._ms.extend(block_ms[bi:take])
                    self._peak.extend(block_peak[bi:take])
                    bi = take
            start = end - self.window_frames
            level = window_levels(self._ms.get(start, end), self._peak.get(start, end)) if levels else (None, None)
            out.append(Window(self._frames.get(start, end), self.next_index, end, self.time_of(end), *level))
            self.next_index += 1
        self._frames.extend(frames[fi:])
        if levels:
            self._ms.extend(block_ms[bi:])
            self._peak.extend(block_peak[bi:])
        return out
