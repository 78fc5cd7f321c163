"""Tests for the streaming resampler: parity with one-shot soxr, reset, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from rtgenre.dsp.resample import Resampler
from rtgenre.errors import InputFormatError, UsageError

RATES = [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (16000, 16000)]
CHUNKS = [1, 7, 441, 1000, 4097, "random"]


def signal(rate: int, seconds: float = 0.6, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(rate)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x, -0.5 * x], axis=1)


def chunked(res: Resampler, x: np.ndarray, chunk) -> np.ndarray:
    rng = np.random.default_rng(7)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 3000)) if chunk == "random" else chunk
        parts.append(res.process(x[i : i + n]))
        i += n
    parts.append(res.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("rates", RATES, ids=lambda r: f"{r[0]}to{r[1]}")
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_equals_one_shot(rates, chunk):
    in_rate, out_rate = rates
    x = signal(in_rate, seconds=0.15 if chunk == 1 else 0.6)
    ref = soxr.resample(x, in_rate, out_rate, quality="HQ")
    got = chunked(Resampler(in_rate, out_rate), x, chunk)
    assert got.dtype == np.float32 and got.ndim == 1
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_multichannel_and_reset():
    x = signal(44100, channels=2)
    ref = soxr.resample(x, 44100, 16000)
    res = Resampler(44100, 16000, channels=2)
    first = chunked(res, x, 1000)
    res.reset()
    second = chunked(res, x, 333)
    assert first.shape == ref.shape == (ref.shape[0], 2)
    np.testing.assert_allclose(first, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(second, ref, atol=1e-5, rtol=0)


def test_reset_mid_stream_forgets_history():
    x = signal(48000)
    res = Resampler(48000, 16000)
    res.process(signal(48000, 0.3) * 3)  # history that must not leak
    res.reset()
    np.testing.assert_allclose(chunked(res, x, 4097), soxr.resample(x, 48000, 16000), atol=1e-5, rtol=0)


def test_passthrough_keeps_float32_without_copy():
    x = signal(16000)
    res = Resampler(16000, 16000)
    assert res.process(x) is x
    y = res.process(x.astype(np.float64))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    assert res.flush().shape == (0,)


@pytest.mark.parametrize("rates", [(4000, 16000), (16000, 400000), (0, 16000)])
def test_rate_out_of_range_is_input_format_error(rates):
    with pytest.raises(InputFormatError, match=f"{min(rates) if min(rates) < 8000 else max(rates)} Hz.*8000..384000"):
        Resampler(*rates)


def test_unknown_quality_is_usage_error():
    with pytest.raises(UsageError, match="quality 'XQ'"):
        Resampler(44100, 16000, quality="XQ")
