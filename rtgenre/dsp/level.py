"""Input level per hop-sized block, and its conversion to dBFS.

This module owns level metering: :class:`LevelMeter` turns model-rate samples
into one mean square and one peak per block of ``hop_length`` samples (block
``b`` covers samples ``[b * hop, (b + 1) * hop)`` and so lines up with STFT
frame ``b``); :func:`window_levels` turns a window's blocks into the RMS and
peak levels in dBFS that events carry, floored at :data:`FLOOR_DBFS` so that
silence never becomes ``-inf``.
"""

from __future__ import annotations

import numpy as np

FLOOR_DBFS = -120.0
_MS_FLOOR = 10.0 ** (FLOOR_DBFS / 10.0)
_PEAK_FLOOR = 10.0 ** (FLOOR_DBFS / 20.0)


class LevelMeter:
    """Mean square and peak of every completed block of ``hop_length`` samples.

    Parameters
    ----------
    hop_length : int
        Samples per block (the STFT hop, so that blocks align with frames).

    Attributes
    ----------
    blocks_done : int
        Blocks completed since construction or :meth:`reset`.
    """

    def __init__(self, hop_length: int) -> None:
        if hop_length < 1:
            raise ValueError(f"hop_length must be >= 1, got {hop_length}")
        self.hop_length = int(hop_length)
        self.reset()

    def reset(self) -> None:
        """Forget the carried partial block and the block count."""
        self._rest = np.zeros(0, dtype=np.float32)
        self.blocks_done = 0

    def process(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed 1-D samples; return the newly completed blocks' levels.

        Returns
        -------
        mean_square : ndarray, shape (new_blocks,), float64
        peak : ndarray, shape (new_blocks,), float64
            Largest ``|x|`` of each block.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate((self._rest, x)) if self._rest.size else x
        n = buf.size // self.hop_length
        blocks = buf[: n * self.hop_length].reshape(n, self.hop_length).astype(np.float64)
        self._rest = buf[n * self.hop_length :].copy()
        self.blocks_done += n
        return np.mean(blocks * blocks, axis=1), np.max(np.abs(blocks), axis=1, initial=0.0)


def window_levels(mean_square: np.ndarray, peak: np.ndarray) -> tuple[float, float]:
    """RMS and peak level of a window of blocks, in dBFS, floored at -120.

    Parameters
    ----------
    mean_square, peak : ndarray
        The window's blocks, as returned by :meth:`LevelMeter.process`.

    Returns
    -------
    level_dbfs : float
        ``10 * log10(mean(mean_square))`` (a full-scale sine reads -3.01 dBFS).
    peak_dbfs : float
        ``20 * log10(max(peak))``.
    """
    level = 10.0 * np.log10(max(float(np.mean(mean_square)), _MS_FLOOR))
    top = 20.0 * np.log10(max(float(np.max(peak, initial=0.0)), _PEAK_FLOOR))
    return float(level), float(top)
