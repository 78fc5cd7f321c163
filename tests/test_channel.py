"""The short-wave channels of the content classifier's augmentation (rtgenre.training.channel), and the modem clips it is no remedy for."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.errors import DataInvalidError
from rtgenre.training import channel

RATE = 16000
ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RTGENRE_SHARED", ROOT.parent / "shared" / "data"))
CODEC2 = SHARED / "train" / "speech" / "codec2_samples" / "speech"
needs_codec2 = pytest.mark.skipif(shutil.which("c2enc") is None or shutil.which("c2dec") is None, reason="codec2's c2enc/c2dec not installed")


def band_db(x: np.ndarray, low: float, high: float) -> float:
    """Energy in ``low``-``high`` Hz relative to all of ``x`` (dB)."""
    s = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / RATE)
    return float(10 * np.log10(s[(f >= low) & (f < high)].sum() / s.sum() + 1e-30))


def peak_hz(x: np.ndarray) -> float:
    return float(np.fft.rfftfreq(len(x), 1.0 / RATE)[np.argmax(np.abs(np.fft.rfft(x)))])


@pytest.mark.parametrize("fading", [None, "good", "moderate", "poor"])
def test_ssb_keeps_the_receiver_band_only(fading):
    noise = np.random.default_rng(1).standard_normal(5 * RATE).astype(np.float32)  # flat: every frequency at the same level
    out = channel.ssb(noise, np.random.default_rng(2), RATE, (300, 2700), snr_db=10, fading=fading, offset_hz=60)
    assert band_db(noise, 3000, 8000) > -3  # 5/8 of white noise's energy lies above 3 kHz
    assert band_db(out, 3000, 8000) < band_db(noise, 3000, 8000) - 30
    assert band_db(out, 0, 100) < -30
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(noise**2)), rel=1e-3)  # the input's level


def test_ssb_mistuning_moves_every_frequency():
    t = np.arange(2 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    for offset in (-80.0, 0.0, 80.0):
        out = channel.ssb(tone, np.random.default_rng(0), RATE, snr_db=40, fading=None, offset_hz=offset)
        assert peak_hz(out) == pytest.approx(1000 + offset, abs=1.0)


def test_fading_gain_has_unit_power_and_its_doppler_spread():
    g = channel.fading_gain(60 * RATE, RATE, 1.0, np.random.default_rng(3))
    assert np.mean(np.abs(g) ** 2) == pytest.approx(1.0)
    spec = np.abs(np.fft.fft(g)) ** 2
    f = np.abs(np.fft.fftfreq(len(g), 1.0 / RATE))
    assert spec[f < 1.5].sum() > 0.99 * spec.sum()  # all within the spread
    level = 20 * np.log10(np.abs(g[:: RATE // 10]) + 1e-9)
    assert np.percentile(level, 95) - np.percentile(level, 5) > 10  # Rayleigh fades over a minute


def test_agc_evens_out_a_slow_fade():
    t = np.arange(10 * RATE) / RATE
    fade = (np.sin(2 * np.pi * 1000 * t) * (0.02 + 0.5 * (1 + np.sin(2 * np.pi * 0.2 * t)))).astype(np.float32)
    out = channel.agc(fade, RATE)
    level = lambda x: 20 * np.log10(np.sqrt(np.mean(x[: len(x) // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1)))
    assert np.ptp(level(fade)) > 30 and np.ptp(level(out)[10:]) < np.ptp(level(fade)) / 2  # what a 0.3 s release lets through of a 34 dB fade


@needs_codec2
def test_codec2_is_the_real_vocoder():
    t = np.arange(3 * RATE) / RATE
    voiced = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 40)).astype(np.float32) * np.float32(0.05)  # a 120 Hz buzz, harmonics to 4.7 kHz
    out = channel.codec2(voiced, "1300", RATE)
    assert len(out) == len(voiced) and np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(voiced**2)), rel=1e-3)
    assert band_db(voiced, 4000, 8000) > -30 and band_db(out, 4000, 8000) < band_db(voiced, 4000, 8000) - 30  # codec2 runs at 8 kHz
    assert abs(peak_hz(out[RATE:]) % 120) < 3 or abs(peak_hz(out[RATE:]) % 120) > 117  # the pitch survives
    errors = channel.codec2(voiced, "1300", RATE, ber=0.05)
    assert not np.allclose(errors, out)
    with pytest.raises(DataInvalidError, match="codec2 mode"):
        channel.codec2(voiced, "9600", RATE)


@needs_codec2
def test_hf_draws_both_channels_and_says_which():
    x = np.random.default_rng(4).standard_normal(RATE).astype(np.float32) * np.float32(0.1)
    rng = np.random.default_rng(5)
    kinds = set()
    for _ in range(12):
        out, what = channel.hf(x, rng, RATE)
        assert len(out) == len(x) and np.abs(out).max() <= 0.99
        kinds.add(what.split()[0])
    assert kinds == {"ssb", "codec2"}


@pytest.mark.skipif(not CODEC2.is_dir(), reason="../shared/data is not available")
def test_the_clips_left_out_as_not_speech_are_the_constant_envelope_ones():
    from rtgenre.training.content import NOT_SPEECH

    def spread_db(path: Path) -> float:  # 5th to 95th percentile of 20 ms levels: speech pauses, a modem does not
        x, sr = sf.read(str(path), dtype="float32")
        n = int(0.02 * sr)
        rms = np.sqrt(np.mean(x[: len(x) // n * n].reshape(-1, n) ** 2, axis=1)) + 1e-9
        return float(np.diff(np.percentile(20 * np.log10(rms), [5, 95]))[0])

    spreads = {f"codec2_samples/speech/{p.name}": spread_db(p) for p in sorted(CODEC2.glob("*.ogg"))}
    modem = {k for k in spreads if k in NOT_SPEECH}
    assert modem == set(NOT_SPEECH)
    assert all(spreads[k] < 8 for k in modem) and all(v > 15 for k, v in spreads.items() if k not in modem), spreads
