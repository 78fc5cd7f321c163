"""Tests for the log-Mel front end: parity with librosa, streaming == offline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import librosa
import numpy as np
import pytest

from rtgenre.card import FrontendParams
from rtgenre.dsp.mel import MelStream, hz_to_mel, log_mel, mel_filterbank, mel_to_hz
from rtgenre.errors import ModelCorruptError

SR = 16000
DEFAULT = FrontendParams()


def make_signal(kind: str, seconds: float = 1.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(SR * seconds)) / SR
    if kind == "noise":
        x = 0.3 * rng.standard_normal(t.size)
    elif kind == "chirp":
        x = 0.8 * np.sin(2 * np.pi * (50 * t + 0.5 * (7900 - 50) / seconds * t**2))
    elif kind == "silence":
        x = np.zeros_like(t)
    else:  # music-like: bass, chord partials, hats, fade-in
        notes = [110.0, 220.0, 277.2, 329.6, 440.0, 1318.5]
        x = sum(a * np.sin(2 * np.pi * f * t) for a, f in zip([0.4, 0.2, 0.15, 0.15, 0.1, 0.05], notes))
        hats = (np.sin(2 * np.pi * 4 * t) > 0.95) * 0.1 * rng.standard_normal(t.size)
        x = (x + hats) * np.minimum(1.0, t / 0.3)
    return x.astype(np.float32)


def librosa_log_mel(y: np.ndarray, p: FrontendParams) -> np.ndarray:
    S = librosa.feature.melspectrogram(
        y=y, sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels, center=False,
        power=p.power, window="hann", htk=p.htk, norm=p.norm, fmin=p.fmin, fmax=p.fmax,
    )
    if p.log_kind == "db":
        return (10.0 * np.log10(np.maximum(S, 1e-10))).T
    return np.log10(p.log_scale * S + p.log_offset).T


def stream(p: FrontendParams, x: np.ndarray, chunk) -> np.ndarray:
    ms = MelStream(p)
    rng = np.random.default_rng(11)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 5000)) if chunk == "random" else chunk
        out.append(ms.process(x[i : i + n]))
        i += n
    assert ms.frames_done == sum(len(o) for o in out)
    return np.concatenate(out)


@pytest.mark.parametrize(
    "p",
    [
        DEFAULT,
        dataclasses.replace(DEFAULT, htk=True),
        dataclasses.replace(DEFAULT, norm=None, fmin=30.0, fmax=7000.0),
        dataclasses.replace(DEFAULT, htk=True, norm=None, n_mels=40),
        dataclasses.replace(DEFAULT, sample_rate=22050, n_fft=2048, n_mels=128, fmax=11025.0),
    ],
    ids=["slaney", "htk", "slaney-nonorm", "htk-nonorm", "22k-2048"],
)
def test_filterbank_equals_librosa(p):
    ref = librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax, htk=p.htk, norm=p.norm)
    got = mel_filterbank(p)
    assert got.shape == ref.shape == (p.n_mels, p.n_fft // 2 + 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("htk", [False, True])
def test_mel_scale_round_trip_and_librosa(htk):
    f = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0, 22050.0])
    np.testing.assert_allclose(hz_to_mel(f, htk), librosa.hz_to_mel(f, htk=htk), rtol=1e-12)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, htk), htk), f, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("kind", ["noise", "chirp", "silence", "music"])
@pytest.mark.parametrize("chunk", [1, 3, 255, 256, 257, 1000, 4097, "random"])
def test_streaming_equals_librosa_and_offline(kind, chunk):
    x = make_signal(kind, seconds=0.4 if chunk in (1, 3) else 1.3)
    offline = log_mel(x, DEFAULT)
    ref = librosa_log_mel(x, DEFAULT)
    assert offline.shape == ref.shape == (1 + (len(x) - 512) // 256, 96) and offline.dtype == np.float32
    np.testing.assert_allclose(offline, ref, rtol=1e-4, atol=1e-5)
    got = stream(DEFAULT, x, chunk)
    np.testing.assert_array_equal(got, offline)


@pytest.mark.parametrize(
    "p",
    [
        dataclasses.replace(DEFAULT, log_kind="db"),
        dataclasses.replace(DEFAULT, power=1.0, htk=True, norm=None),
        dataclasses.replace(DEFAULT, n_fft=400, hop_length=160, n_mels=64, fmin=20.0, fmax=7600.0),
        dataclasses.replace(DEFAULT, n_fft=256, hop_length=300),  # hop longer than the frame
    ],
    ids=["db", "power1-htk", "400-160", "hop>nfft"],
)
def test_other_frontends(p):
    x = make_signal("music")
    ref = librosa_log_mel(x, p)
    offline = log_mel(x, p)
    assert offline.shape == ref.shape
    np.testing.assert_allclose(offline, ref, rtol=1e-4, atol=1e-4)
    for chunk in (1, 7, 299, 301, "random"):
        np.testing.assert_array_equal(stream(p, x, chunk), offline)


def test_short_signal_and_reset():
    ms = MelStream(DEFAULT)
    assert log_mel(np.zeros(511, np.float32), DEFAULT).shape == (0, 96)
    assert ms.process(np.ones(300, np.float32)).shape == (0, 96)
    assert ms.process(np.ones(212, np.float32)).shape == (1, 96)
    ms.reset()
    assert ms.frames_done == 0
    x = make_signal("chirp")
    np.testing.assert_array_equal(ms.process(x), log_mel(x, DEFAULT))


def test_unsupported_frontend_is_model_corrupt():
    with pytest.raises(ModelCorruptError, match="window 'hamming'.*norm '2'"):
        MelStream(dataclasses.replace(DEFAULT, window="hamming", norm="2"))


def test_runtime_imports_neither_librosa_nor_scipy():
    code = "import sys, rtgenre.dsp.mel; bad = {'librosa', 'scipy'} & set(sys.modules); sys.exit(str(bad) if bad else 0)"
    subprocess.run([sys.executable, "-c", code], check=True)
