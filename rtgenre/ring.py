"""Lock-free single-producer/single-consumer ring buffer for audio frames.

This module owns the hand-over of audio between the producer (a sounddevice
callback, or a file/stdin/URL reader thread) and the consumer (the analysis
loop).  The producer never blocks, never allocates array memory, never takes a
lock; when the consumer falls behind by more than the capacity, new audio
overwrites the oldest and the consumer is told how many frames it lost.

Memory-ordering argument
------------------------
Positions are absolute frame indices; position ``p`` lives in slot
``p % capacity``.  Three integer counters coordinate the two threads, each
written by exactly one of them:

* ``_claim`` (producer): one past the last position the producer has started
  writing.  Stored *before* the producer touches the storage.
* ``written`` (producer): one past the last position whose data is complete.
  Stored *after* the data has been copied into the storage.
* ``read_pos`` (consumer): one past the last position consumed.

In CPython every attribute store and load of these ints is atomic under the
GIL and the GIL hand-over is a full memory barrier, so the other thread sees
the stores in program order: when the consumer loads ``written == w``, every
position below ``w`` has been fully copied.  The producer only ever overwrites
slots of positions below ``_claim - capacity``, and a producer write that
touches the storage while the consumer is copying must have stored its claim
before the copy ended.  So after copying positions ``[r, r + k)`` the consumer
loads ``_claim == c`` and keeps only positions ``>= c - capacity``: those slots
cannot have been overwritten during the copy (a seqlock-style validation).
Frames discarded this way are counted as dropped, so the consumer never
returns torn data, and ``delivered + dropped == written`` always holds once
the ring is drained.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from numpy.typing import DTypeLike


class Ring:
    """Preallocated SPSC ring of ``(capacity, channels)`` frames.

    Parameters
    ----------
    capacity : int
        Frames the ring holds.
    channels : int
        Samples per frame.
    dtype : numpy dtype
        Sample type of the storage.

    Attributes
    ----------
    written : int
        Frames published by the producer since creation (monotonic).
    read_pos : int
        Frames consumed (delivered or dropped) by the consumer (monotonic).
    dropped_total : int
        Frames the consumer lost to overruns since creation.
    """

    def __init__(self, capacity: int, channels: int = 1, dtype: DTypeLike = np.float32) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be >= 1, got {capacity}, {channels}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=dtype)
        self._claim = 0
        self.written = 0
        self.read_pos = 0
        self.dropped_total = 0
        self._dropped_unreported = 0
        self._closed = False

    # ------------------------------------------------------------------ producer
    def write(self, block: np.ndarray) -> None:
        """Copy ``block`` (``(n, channels)``) into the ring and publish it.

        Never blocks and allocates no array memory.  Unread data older than
        ``capacity`` frames is overwritten; of a block longer than the capacity
        only its last ``capacity`` frames are kept.
        """
        n = block.shape[0]
        if n == 0:
            return
        cap = self.capacity
        end = self.written + n
        if n > cap:
            block = block[n - cap :]
            n = cap
        self._claim = end
        start = (end - n) % cap
        first = min(n, cap - start)
        self._buf[start : start + first] = block[:first]
        if first < n:
            self._buf[: n - first] = block[first:]
        self.written = end

    def close(self) -> None:
        """Mark the end of the stream (producer side)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """True once the producer has called :meth:`close`."""
        return self._closed

    def space(self) -> int:
        """Frames the producer may write now without overwriting unread data."""
        return max(0, self.capacity - (self.written - self.read_pos))

    def wait_space(self, n: int, stop_event: threading.Event | None = None, poll: float = 0.002) -> bool:
        """Wait until ``n`` frames fit without overwriting (non-live producers).

        Parameters
        ----------
        n : int
            Frames to be written; at most ``capacity``.
        stop_event : threading.Event or None
            Gives up when set.
        poll : float
            Seconds between checks.

        Returns
        -------
        bool
            True when there is space, False when ``stop_event`` was set first.
        """
        if n > self.capacity:
            raise ValueError(f"cannot wait for {n} frames of space in a ring of {self.capacity}")
        while self.space() < n:
            if stop_event is not None and stop_event.is_set():
                return False
            time.sleep(poll)
        return True

    # ------------------------------------------------------------------ consumer
    def available(self) -> int:
        """Frames readable now (at most ``capacity``)."""
        return min(self.written - self.read_pos, self.capacity)

    def wait_available(self, n: int, timeout: float, poll: float = 0.001) -> bool:
        """Poll until ``n`` frames are readable, the ring is closed, or ``timeout`` passes.

        Uses short sleeps only; the producer never has to signal anything.

        Returns
        -------
        bool
            True when at least ``n`` frames are available.
        """
        deadline = time.monotonic() + timeout
        while self.available() < n:
            if self._closed or time.monotonic() >= deadline:
                return self.available() >= n
            time.sleep(poll)
        return True

    def _copy_out(self, out: np.ndarray, max_frames: int) -> tuple[int, int]:
        """Copy the next frames to ``out[:k]`` and validate them; return (valid offset, k).

        Advances ``read_pos`` past everything copied and accounts the skipped and
        discarded frames as dropped.
        """
        cap = self.capacity
        w = self.written
        r = self.read_pos
        skipped = 0
        if w - r > cap:
            skipped = w - cap - r
            r = w - cap
        k = min(w - r, max_frames)
        start = r % cap
        first = min(k, cap - start)
        out[:first] = self._buf[start : start + first]
        if first < k:
            out[first:k] = self._buf[: k - first]
        torn = min(k, max(0, self._claim - cap - r))
        self.read_pos = r + k
        lost = skipped + torn
        self.dropped_total += lost
        self._dropped_unreported += lost
        return torn, k

    def _take_dropped(self) -> int:
        d = self._dropped_unreported
        self._dropped_unreported = 0
        return d

    def read(self, max_frames: int | None = None) -> tuple[np.ndarray, int]:
        """Read the next frames in order.

        Parameters
        ----------
        max_frames : int or None
            Upper bound on the frames returned (None: all available).

        Returns
        -------
        frames : ndarray, shape (n, channels)
            A fresh copy, safe to keep.
        dropped : int
            Frames lost to overruns since the previous read (they precede ``frames``).
        """
        limit = self.capacity if max_frames is None else min(max_frames, self.capacity)
        out = np.empty((min(self.available(), limit), self.channels), dtype=self._buf.dtype)
        torn, k = self._copy_out(out, out.shape[0])
        return out[torn:k], self._take_dropped()

    def read_into(self, out: np.ndarray) -> tuple[int, int]:
        """Read the next frames into ``out`` (``(m, channels)``) without allocating.

        Returns
        -------
        n : int
            Frames copied to ``out[:n]``.
        dropped : int
            Frames lost to overruns since the previous read (they precede ``out[:n]``).
        """
        torn, k = self._copy_out(out, min(out.shape[0], self.capacity))
        if torn:
            # Rare: the producer overwrote the start of the copy; move the valid part down.
            out[: k - torn] = out[torn:k]
        return k - torn, self._take_dropped()
