"""Tests for the lock-free SPSC ring: unit behaviour and real-thread stress."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtgenre.ring import Ring


def ramp(start: int, n: int, channels: int = 1) -> np.ndarray:
    """Frames whose every channel holds the frame's absolute index (+ channel * 0.25)."""
    idx = np.arange(start, start + n, dtype=np.float64)[:, None]
    return idx + 0.25 * np.arange(channels)[None, :]


def test_wrap_around_keeps_order():
    ring = Ring(10, dtype=np.float64)
    ring.write(ramp(0, 7))
    out, dropped = ring.read(5)
    np.testing.assert_array_equal(out, ramp(0, 5))
    assert dropped == 0
    ring.write(ramp(7, 6))  # wraps: slots 7..9 then 0..2
    assert ring.available() == 8
    out, dropped = ring.read()
    np.testing.assert_array_equal(out, ramp(5, 8))
    assert dropped == 0 and ring.available() == 0


def test_exact_fill_then_overrun():
    ring = Ring(8, dtype=np.float64)
    ring.write(ramp(0, 8))
    assert ring.space() == 0 and ring.available() == 8
    ring.write(ramp(8, 3))  # overwrites the 3 oldest
    out, dropped = ring.read()
    assert dropped == 3
    np.testing.assert_array_equal(out, ramp(3, 8))
    assert ring.dropped_total == 3 and ring.read_pos == ring.written == 11


def test_block_longer_than_capacity_keeps_tail():
    ring = Ring(6, dtype=np.float64)
    ring.write(ramp(0, 2))
    ring.write(ramp(2, 15))
    out, dropped = ring.read()
    np.testing.assert_array_equal(out, ramp(11, 6))
    assert dropped == 11 and ring.written == 17


def test_read_into_and_max_frames():
    ring = Ring(16, channels=3, dtype=np.float64)
    ring.write(ramp(0, 12, 3))
    buf = np.full((5, 3), -1.0)
    n, dropped = ring.read_into(buf)
    assert (n, dropped) == (5, 0)
    np.testing.assert_array_equal(buf, ramp(0, 5, 3))
    out, _ = ring.read(4)
    np.testing.assert_array_equal(out, ramp(5, 4, 3))
    big = np.zeros((32, 3))
    n, _ = ring.read_into(big)
    assert n == 3
    np.testing.assert_array_equal(big[:3], ramp(9, 3, 3))
    n, dropped = ring.read_into(big)
    assert (n, dropped) == (0, 0)


@pytest.mark.parametrize("use_into", [False, True])
def test_frames_overwritten_during_copy_are_dropped(use_into):
    """A producer write in progress (claimed, not yet published) invalidates the slots it reuses."""
    ring = Ring(8, dtype=np.float64)
    ring.write(ramp(0, 8))
    # Producer mid-write of positions 8..10: claim stored, slots 0..2 overwritten, not published.
    ring._claim = 11
    ring._buf[0:3] = -1.0
    if use_into:
        buf = np.zeros((8, 1))
        n, dropped = ring.read_into(buf)
        out = buf[:n]
    else:
        out, dropped = ring.read()
    assert dropped == 3
    np.testing.assert_array_equal(out, ramp(3, 5))
    ring._buf[0:3] = ramp(8, 3)
    ring.written = 11
    out, dropped = ring.read()
    assert dropped == 0
    np.testing.assert_array_equal(out, ramp(8, 3))


def test_float32_multichannel_default_dtype():
    ring = Ring(4, channels=2)
    block = np.arange(6, dtype=np.float32).reshape(3, 2)
    ring.write(block)
    out, _ = ring.read()
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_array_equal(out, block)


def test_space_wait_space_and_close():
    ring = Ring(4, dtype=np.float64)
    ring.write(ramp(0, 3))
    assert ring.space() == 1
    stop = threading.Event()
    stop.set()
    assert ring.wait_space(1, stop) is True
    assert ring.wait_space(2, stop) is False
    with pytest.raises(ValueError):
        ring.wait_space(5, stop)
    assert not ring.closed
    assert ring.wait_available(4, timeout=0.01) is False
    ring.close()
    assert ring.closed
    assert ring.wait_available(3, timeout=10.0) is True
    assert ring.wait_available(4, timeout=10.0) is False  # closed: returns at once


def _consume(ring: Ring, rng: np.random.Generator, stall_s: float, use_into: bool, force_overrun: bool = False) -> tuple[list[np.ndarray], list[int]]:
    chunks: list[np.ndarray] = []
    drops: list[int] = []
    buf = np.empty((ring.capacity, 1), dtype=np.int64)
    while force_overrun and ring.written <= 2 * ring.capacity:  # at least one overrun, whatever the timing
        time.sleep(0.0005)
    while True:
        closed = ring.closed  # read before available(): once closed, written is final
        if closed and ring.available() == 0:
            return chunks, drops
        if rng.random() < 0.02:
            time.sleep(rng.uniform(0, stall_s))
        m = int(rng.integers(1, ring.capacity + 1))
        if use_into:
            n, d = ring.read_into(buf[:m])
            out = buf[:n, 0].copy()
        else:
            frames, d = ring.read(m)
            out = frames[:, 0]
        if len(out) or d:
            chunks.append(out)
            drops.append(d)
        else:
            ring.wait_available(1, 0.001)


def _check_stream(chunks: list[np.ndarray], drops: list[int], total: int) -> int:
    """Assert values == indices, strict order and dropped == gaps; return frames dropped."""
    pos = 0
    for out, d in zip(chunks, drops):
        pos += d
        np.testing.assert_array_equal(out, np.arange(pos, pos + len(out)))
        pos += len(out)
    assert pos == total  # delivered + dropped == written
    return sum(drops)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_into", [False, True])
def test_stress_live_producer_overruns(use_into):
    total = 2_000_000
    ring = Ring(4096, dtype=np.int64)
    prng = np.random.default_rng(1)

    def produce():
        pos = 0
        while pos < total:
            n = min(int(prng.integers(1, 2000)) if prng.random() < 0.99 else 6000, total - pos)
            ring.write(np.arange(pos, pos + n, dtype=np.int64)[:, None])
            pos += n
            time.sleep(0.0003)
        ring.close()

    t = threading.Thread(target=produce)
    t.start()
    chunks, drops = _consume(ring, np.random.default_rng(2), stall_s=0.02, use_into=use_into, force_overrun=True)
    t.join()
    dropped = _check_stream(chunks, drops, total)
    assert ring.written == total and ring.dropped_total == dropped
    assert dropped >= 4096  # the stalls did force overruns
    assert sum(len(c) for c in chunks) > 0


@pytest.mark.timeout(60)
def test_stress_non_live_producer_drops_nothing():
    total = 2_000_000
    ring = Ring(8192, dtype=np.int64)
    prng = np.random.default_rng(3)
    stop = threading.Event()

    def produce():
        pos = 0
        while pos < total:
            n = min(int(prng.integers(1, 8192)), total - pos)
            assert ring.wait_space(n, stop, poll=0.0002)
            ring.write(np.arange(pos, pos + n, dtype=np.int64)[:, None])
            pos += n
        ring.close()

    t = threading.Thread(target=produce)
    t.start()
    chunks, drops = _consume(ring, np.random.default_rng(4), stall_s=0.005, use_into=False)
    t.join()
    assert _check_stream(chunks, drops, total) == 0
    assert ring.dropped_total == 0


def test_write_allocates_no_array_memory():
    """The producer path copies in place: no np.concatenate, no temporaries (numpy reports to tracemalloc)."""
    import tracemalloc

    ring = Ring(10_000, channels=2)
    block = np.ones((3000, 2), dtype=np.float32)  # 24 kB; wraps on every few writes
    long_block = np.ones((25_000, 2), dtype=np.float32)  # longer than the ring
    ring.write(block)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            ring.write(block)
        ring.write(long_block)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak
