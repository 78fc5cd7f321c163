"""Streaming sample-rate conversion to the model rate (libsoxr).

This module owns the conversion of source audio, chunk by chunk, to the
front end's sample rate.  Chunked output concatenated with :meth:`Resampler.flush`
equals a one-shot ``soxr.resample`` of the whole signal.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

from rtgenre.errors import InputFormatError, UsageError

MIN_RATE = 8000
MAX_RATE = 384000
QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


class Resampler:
    """Chunked float32 resampler; a pass-through when the rates are equal.

    Parameters
    ----------
    in_rate : int
        Sample rate of the input, in Hz (8000..384000).
    out_rate : int
        Sample rate of the output, in Hz (8000..384000).
    channels : int
        1 for 1-D mono arrays; more for ``(n, channels)`` arrays.
    quality : str
        libsoxr quality recipe: one of ``QQ LQ MQ HQ VHQ``.

    Raises
    ------
    InputFormatError
        A rate outside the supported range.
    UsageError
        An unknown quality.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1, quality: str = "HQ") -> None:
        for what, rate in (("input", in_rate), ("output", out_rate)):
            if not MIN_RATE <= rate <= MAX_RATE:
                raise InputFormatError(
                    f"Unsupported {what} sample rate {rate} Hz (supported: {MIN_RATE}..{MAX_RATE} Hz)",
                    f"Convert the audio to a rate between {MIN_RATE} and {MAX_RATE} Hz (e.g. 44100 or 48000 Hz)",
                )
        if quality not in QUALITIES:
            raise UsageError(f"Unknown resampler quality '{quality}'", f"Use one of {', '.join(QUALITIES)}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.channels = int(channels)
        self.quality = quality
        self._stream = None if self.in_rate == self.out_rate else soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="float32", quality=quality)
        self._in = self._out = 0  # frames given and returned since the last reset

    def input_for(self, n: int) -> int:
        """A lower bound on the input frames to give before :meth:`process` can have returned ``n`` more frames.

        Whatever the filter holds back now may come out with the next chunk,
        so the bound subtracts it (and a 2-frame margin for rounding).
        """
        if self._stream is None:
            return max(0, n)
        held = self._in * self.out_rate / self.in_rate - self._out
        return max(0, math.floor((n - held - 2) * self.in_rate / self.out_rate))

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk (1-D for mono, ``(n, channels)`` otherwise); float32 out."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stream is None:
            return x
        y = self._stream.resample_chunk(x)
        self._in += len(x)
        self._out += len(y)
        return y

    def flush(self) -> np.ndarray:
        """End of stream: return the samples still held in the filter."""
        shape = (0,) if self.channels == 1 else (0, self.channels)
        empty = np.zeros(shape, dtype=np.float32)
        if self._stream is None:
            return empty
        return self._stream.resample_chunk(empty, last=True)

    def reset(self) -> None:
        """Forget all history, as if freshly constructed."""
        if self._stream is not None:
            self._stream.clear()
        self._in = self._out = 0
