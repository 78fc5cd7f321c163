"""Shared, generic test fixtures (test audio files and the like)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest


def tone(seconds: float, rate: int, freqs: Sequence[float], amps: Sequence[float]) -> np.ndarray:
    """A float32 ``(n, len(freqs))`` signal: channel ``c`` is a sine of ``freqs[c]`` at peak ``amps[c]``."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([a * np.sin(2 * np.pi * f * t) for f, a in zip(freqs, amps)], axis=1).astype(np.float32)


@pytest.fixture(autouse=True)
def _tensorrt_check_forgets_fakes():
    """After each test, forget the cached answer of ``tensorrt_available``: a test's fake TensorRT
    (``engine_fixtures.install_fake_gpu``) is gone once its monkeypatch is undone, which happens first."""
    yield
    trt = sys.modules.get("rtgenre.inference.tensorrt")
    if trt is not None:
        trt.tensorrt_available.cache_clear()


@pytest.fixture
def make_tone(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a sine test file into ``tmp_path``; returns its path.

    ``make_tone(name="tone.wav", seconds=1.0, rate=48000, freqs=(440, 660), amps=(0.3, 0.15),
    subtype=None)``: one sine per channel; the format follows the file extension
    (``.wav``, ``.flac``, ``.ogg``, ``.mp3``); ``subtype`` as in :func:`soundfile.write`.
    """

    def make(
        name: str = "tone.wav",
        seconds: float = 1.0,
        rate: int = 48000,
        freqs: Sequence[float] = (440.0, 660.0),
        amps: Sequence[float] = (0.3, 0.15),
        subtype: str | None = None,
    ) -> Path:
        import soundfile as sf  # imported here: the GPU check runs the engine tests without soundfile

        path = tmp_path / name
        sf.write(path, tone(seconds, rate, freqs, amps), rate, subtype=subtype)
        return path

    return make


@pytest.fixture
def tone_wav(make_tone: Callable[..., Path]) -> Path:
    """A 1 s, 48 kHz, stereo 16-bit WAV: 440 Hz at 0.3 left, 660 Hz at 0.15 right."""
    return make_tone()
