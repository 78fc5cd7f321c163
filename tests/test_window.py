"""Tests for the sliding-window arithmetic, content and chunking invariance."""

from __future__ import annotations

import numpy as np
import pytest

from rtgenre.card import FrontendParams
from rtgenre.dsp.level import LevelMeter
from rtgenre.dsp.mel import MelStream, log_mel
from rtgenre.dsp.window import Windower
from rtgenre.errors import UsageError

SR, HOP, NFFT, W, MELS = 16000, 256, 512, 469, 96


def windower(hop_s: float = 0.5, w: int = W, mels: int = MELS, phase: float = 0.0) -> Windower:
    return Windower(w, mels, hop_s, SR, HOP, NFFT, phase)


def test_default_arithmetic():
    win = windower()
    assert win.hop_frames == 31.25
    assert [win.window_end(k) for k in range(6)] == [469, 500, 532, 563, 594, 625]
    assert win.time_of(469) == pytest.approx(7.52)  # (468 * 256 + 512) / 16000
    assert win.time_of(500) - win.time_of(469) == pytest.approx(31 * HOP / SR)
    assert [win.windows_for(n) for n in (0, 468, 469, 499, 500, 531, 532)] == [0, 0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("hop_s", [0.5, 0.1, 0.016, 1 / 3, 0.37, 2.0])
def test_long_run_hop_is_exact_and_windows_for_agrees(hop_s):
    win = windower(hop_s)
    hf = hop_s * SR / HOP
    ends = np.array([win.window_end(k) for k in range(10_001)])
    assert np.all(np.diff(ends) >= 1)
    assert np.all(np.abs(ends - W - np.arange(10_001) * hf) <= 0.5 + 1e-9)  # never drifts
    assert np.all(np.abs(np.diff(ends) - hf) < 1.0)
    if hop_s == 0.5:
        assert ends[10_000] == W + 312_500
        assert win.time_of(ends[10_000]) == pytest.approx(7.52 + 5000.0)
    for n in list(range(W - 2, W + 200)) + [int(e) + d for e in ends[::997] for d in (-1, 0, 1)]:
        assert win.windows_for(n) == int(np.sum(ends <= n)), n


@pytest.mark.parametrize("hop_s", [0.5, 0.016, 1 / 3, 2.0])
@pytest.mark.parametrize("phase", [0.25, 0.618, 0.99])
def test_a_phase_delays_the_window_grid_by_that_share_of_a_hop(hop_s, phase):
    """Window k of a stream with a phase ends where window k + phase would (rounded to a frame),
    windows_for counts exactly those, and cutting them is as chunking-invariant as without."""
    win, plain = windower(hop_s, phase=phase), windower(hop_s)
    hf = hop_s * SR / HOP
    ends = np.array([win.window_end(k) for k in range(2001)])
    assert np.all(np.abs(ends - W - (np.arange(2001) + phase) * hf) <= 0.5 + 1e-9)
    assert ends[0] >= plain.window_end(0) and ends[-1] <= plain.window_end(2001)
    for n in list(range(W - 2, W + 200)) + [int(e) + d for e in ends[::97] for d in (-1, 0, 1)]:
        assert win.windows_for(n) == int(np.sum(ends <= n)), n
    frames = np.random.default_rng(2).standard_normal((2000, 4)).astype(np.float32)
    win = windower(hop_s, mels=4, phase=phase)
    whole = run(win, frames, [2000])
    win.reset()
    chunked = run(win, frames, list(np.random.default_rng(3).integers(0, 300, 30)) + [2000])
    assert [w.end_frame for w in chunked] == [w.end_frame for w in whole] == list(ends[: len(whole)])
    for a, b in zip(chunked, whole):
        np.testing.assert_array_equal(a.mel, frames[b.end_frame - W : b.end_frame])
    with pytest.raises(ValueError, match="phase"):
        windower(hop_s, phase=1.0)


def test_hop_shorter_than_a_frame_is_usage_error():
    with pytest.raises(UsageError, match="shorter than one frame"):
        windower(0.01)
    with pytest.raises(UsageError):
        windower(float("nan"))


def run(win: Windower, frames: np.ndarray, chunks, levels=None):
    out, i = [], 0
    for n in chunks:
        if levels is None:
            out += win.process(frames[i : i + n])
        else:
            out += win.process(frames[i : i + n], levels[0][i : i + n], levels[1][i : i + n])
        i += n
    return out


@pytest.mark.parametrize("hop_s", [0.5, 0.016, 0.37])
def test_content_and_chunking_invariance(hop_s):
    n = 3000
    frames = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    win = windower(hop_s, mels=8)
    whole = run(win, frames, [n])
    assert len(whole) == win.windows_for(n)
    for k, w in enumerate(whole):
        assert w.index == k and w.end_frame == win.window_end(k)
        assert w.t == win.time_of(w.end_frame)
        np.testing.assert_array_equal(w.mel, frames[w.end_frame - W : w.end_frame])
        assert w.level_dbfs is None and w.peak_dbfs is None
    rng = np.random.default_rng(1)
    for chunks in ([1] * n, [468, 1, 31, 2500], list(rng.integers(0, 700, 40))):
        win.reset()
        got = run(win, frames, chunks + [n])
        assert [(w.index, w.end_frame, w.t) for w in got] == [(w.index, w.end_frame, w.t) for w in whole]
        for a, b in zip(got, whole):
            np.testing.assert_array_equal(a.mel, b.mel)


def test_windows_are_independent_copies():
    frames = np.random.default_rng(2).standard_normal((700, 4)).astype(np.float32)
    win = windower(mels=4)
    first = run(win, frames, [469])[0]
    kept = first.mel.copy()
    later = run(win, frames[469:], [1] * 231)
    assert len(later) == 7
    np.testing.assert_array_equal(first.mel, kept)
    first.mel[:] = 0
    np.testing.assert_array_equal(later[0].mel, frames[500 - W : 500])


@pytest.mark.parametrize("hop_s", [0.37, 0.016])
@pytest.mark.parametrize("n_fft", [256, 512, 1024])
def test_levels_fed_with_real_frame_lag_and_chunking(hop_s, n_fft):
    """Blocks run ahead of frames (n_fft > hop); any chunking gives the same levels."""
    x = (0.25 * np.random.default_rng(3).standard_normal(SR * 12)).astype(np.float32)
    n_frames = 1 + (len(x) - n_fft) // HOP
    frames = np.zeros((n_frames, 2), np.float32)
    win = Windower(W, 2, hop_s, SR, HOP, n_fft)
    meter = LevelMeter(HOP)
    ms, pk = meter.process(x)
    whole = run(win, frames, [n_frames], (ms, pk))
    assert len(whole) == win.windows_for(n_frames)
    # stream: samples in chunks, frames lag blocks exactly as MelStream would produce them
    win.reset()
    meter.reset()
    got, pos, done = [], 0, 0
    for n in np.random.default_rng(4).integers(1, 4000, 400):
        chunk = x[pos : pos + n]
        pos += len(chunk)
        have = 0 if pos < n_fft else 1 + (pos - n_fft) // HOP
        got += win.process(frames[done:have], *meter.process(chunk))
        done = have
        if pos >= len(x):
            break
    assert [(w.end_frame, w.level_dbfs, w.peak_dbfs) for w in got] == [(w.end_frame, w.level_dbfs, w.peak_dbfs) for w in whole]
    assert -13 < whole[0].level_dbfs < -11  # 0.25 RMS = -12.04 dBFS


def test_streamed_front_end_windows_equal_offline_slices():
    """MelStream + LevelMeter + Windower fed in odd chunks cut the offline log-Mel matrix."""
    p = FrontendParams()
    t = np.arange(SR * 10) / SR
    x = (0.4 * np.sin(2 * np.pi * 220 * t * (1 + t / 10))).astype(np.float32)
    offline = log_mel(x, p)
    mel, meter, win = MelStream(p), LevelMeter(p.hop_length), windower(0.5)
    got, i = [], 0
    for n in np.random.default_rng(5).integers(1, 9000, 100):
        chunk = x[i : i + n]
        i += len(chunk)
        got += win.process(mel.process(chunk), *meter.process(chunk))
    assert [w.end_frame for w in got] == [win.window_end(k) for k in range(win.windows_for(len(offline)))]
    for w in got:
        np.testing.assert_array_equal(w.mel, offline[w.end_frame - W : w.end_frame])
        assert w.level_dbfs == pytest.approx(20 * np.log10(0.4 / np.sqrt(2)), abs=0.05)


def test_row_ring_reserve_keeps_the_rows_held():
    from rtgenre.dsp.window import RowRing

    ring = RowRing(4, 2, np.float32)
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    ring.extend(rows[:7])  # holds rows 3..6, wrapped
    ring.reserve(6)  # grows at least twofold
    assert ring.data.shape == (8, 2) and ring.total == 7
    np.testing.assert_array_equal(ring.get(3, 7), rows[3:7])
    ring.extend(rows[7:9])
    np.testing.assert_array_equal(ring.get(3, 9), rows[3:9])
    ring.reserve(2)  # never shrinks
    assert ring.data.shape == (8, 2)
