"""Tests for block level metering and window levels in dBFS."""

from __future__ import annotations

import numpy as np
import pytest

from rtgenre.dsp.level import FLOOR_DBFS, LevelMeter, window_levels
from rtgenre.dsp.window import Windower

SR, HOP, NFFT, W = 16000, 256, 512, 469


def feed(x: np.ndarray, chunks) -> tuple[np.ndarray, np.ndarray]:
    meter = LevelMeter(HOP)
    ms, pk, i = [], [], 0
    for n in chunks:
        a, b = meter.process(x[i : i + n])
        ms.append(a)
        pk.append(b)
        i += n
    assert i >= len(x) and meter.blocks_done == len(x) // HOP
    return np.concatenate(ms), np.concatenate(pk)


def test_blocks_equal_direct_computation_for_any_chunking():
    x = np.random.default_rng(0).standard_normal(40_000).astype(np.float32) * 0.3
    blocks = x[: len(x) // HOP * HOP].astype(np.float64).reshape(-1, HOP)
    rng = np.random.default_rng(1)
    for chunks in ([len(x)], [1] * len(x), [255, 256, 257] * 60, list(rng.integers(1, 3000, 100))):
        ms, pk = feed(x, chunks)
        np.testing.assert_allclose(ms, np.mean(blocks**2, axis=1), rtol=1e-12)
        np.testing.assert_array_equal(pk, np.abs(blocks).max(axis=1))


@pytest.mark.parametrize("amp", [1.0, 0.5, 0.01, 1e-4])
def test_sine_level(amp):
    t = np.arange(SR * 8) / SR
    x = (amp * np.sin(2 * np.pi * 997 * t)).astype(np.float32)
    level, peak = window_levels(*feed(x, [len(x)]))
    assert level == pytest.approx(20 * np.log10(amp / np.sqrt(2)), abs=0.05)
    assert peak == pytest.approx(20 * np.log10(amp), abs=0.05)


def test_full_scale_square_is_0_dbfs_and_silence_is_floored():
    t = np.arange(SR * 8)
    square = np.where((t // 40) % 2 == 0, 1.0, -1.0).astype(np.float32)
    level, peak = window_levels(*feed(square, [len(square)]))
    assert level == pytest.approx(0.0, abs=1e-9) and peak == 0.0
    assert window_levels(*feed(np.zeros(SR * 8, np.float32), [5000] * 26)) == (FLOOR_DBFS, FLOOR_DBFS)


def test_windows_carry_levels_of_their_own_blocks():
    """A loud first half then silence: each window's level is that of its own sample span."""
    x = np.zeros(SR * 20, np.float32)
    x[: SR * 10] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR * 10) / SR)
    ms, pk = feed(x, [len(x)])
    n_frames = 1 + (len(x) - NFFT) // HOP
    win = Windower(W, 4, 0.5, SR, HOP, NFFT)
    windows = win.process(np.zeros((n_frames, 4), np.float32), ms, pk)
    assert len(windows) == win.windows_for(n_frames) > 20
    for w in windows:
        ref = window_levels(ms[w.end_frame - W : w.end_frame], pk[w.end_frame - W : w.end_frame])
        assert (w.level_dbfs, w.peak_dbfs) == ref
    assert windows[0].level_dbfs == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    assert windows[-1].level_dbfs == FLOOR_DBFS == windows[-1].peak_dbfs


def test_reset_drops_partial_block():
    meter = LevelMeter(HOP)
    meter.process(np.ones(200, np.float32))
    meter.reset()
    ms, pk = meter.process(np.full(HOP, 0.5, np.float32))
    np.testing.assert_allclose(ms, [0.25])
    np.testing.assert_array_equal(pk, [0.5])
