"""Short-wave radio and digital-voice channels, to augment training audio with what an HF link does to it.

Owns two channels that speech (and, so that the channel is no cue for
speech, music) reaches a listener through on short wave, as heard in the
codec2 / HF-radio recordings of the speech set:

* :func:`ssb`: an analogue single-sideband (SSB) voice link: two-path
  Watterson fading (CCIR good / moderate / poor: Doppler spread and path
  delay), the receiver mistuned by up to 100 Hz (every frequency shifted, as
  an SSB receiver does), receiver noise, the receiver's crystal filter (a
  band of about 300-2700 Hz, :func:`bandpass`) and its AGC;
* :func:`codec2`: digital voice (FreeDV): the real codec2 vocoder, the
  ``c2enc``/``c2dec`` programs of Debian's ``codec2`` package, at one of its
  bit rates, optionally with bit errors (``c2dec --ber``) as on a fading link.

:func:`hf` draws one of them with random settings and says which in a
one-line description.  Training-time only (numpy, soxr and, for
:func:`codec2`, the ``codec2`` package); nothing here runs while listening.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import soxr

from rtgenre.errors import DataInvalidError

CODEC2_MODES = ("3200", "2400", "1600", "1400", "1300", "1200", "700C")
"""codec2 bit rates drawn by :func:`hf` (FreeDV 1600 uses 1300, 700C/D use 700C)."""
CODEC2_RATE = 8000
"""codec2's sample rate."""
FADING = {"good": (0.1, 0.5e-3), "moderate": (0.5, 1e-3), "poor": (1.0, 2e-3)}
"""CCIR HF channels (ITU-R F.1487): Doppler spread (Hz) and delay (s) between the two paths."""


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)


def bandpass(audio: np.ndarray, rate: int, low: float = 300.0, high: float = 2700.0, skirt: float = 300.0) -> np.ndarray:
    """Keep ``low``-``high`` Hz: a zero-phase FFT filter with raised-cosine skirts outside the band, nothing beyond them.

    The upper skirt is ``skirt`` Hz wide, the lower one ``skirt`` or ``low``
    if less (no DC).  As steep as an SSB receiver's crystal filter: with the
    defaults nothing above 3000 Hz passes.
    """
    spec = np.fft.rfft(audio.astype(np.float64))
    f = np.fft.rfftfreq(len(audio), 1.0 / rate)
    lower = min(skirt, low)
    below = np.clip((f - (low - lower)) / max(lower, 1e-9), 0.0, 1.0)
    above = np.clip(((high + skirt) - f) / skirt, 0.0, 1.0)
    gain = (0.5 - 0.5 * np.cos(np.pi * below)) * (0.5 - 0.5 * np.cos(np.pi * above))
    return np.fft.irfft(spec * gain, len(audio)).astype(np.float32)


def analytic(audio: np.ndarray) -> np.ndarray:
    """The analytic signal (real part ``audio``, no negative frequencies), by FFT."""
    n = len(audio)
    spec = np.fft.fft(audio.astype(np.float64))
    h = np.zeros(n)
    h[0] = 1.0
    h[1 : (n + 1) // 2] = 2.0
    if n % 2 == 0:
        h[n // 2] = 1.0
    return np.fft.ifft(spec * h)


def fading_gain(n: int, rate: int, spread_hz: float, rng: np.random.Generator) -> np.ndarray:
    """A unit-power complex Gaussian path gain whose Doppler spectrum is Gaussian with ``spread_hz`` (2 sigma), ``n`` samples."""
    spec = np.fft.fft(rng.standard_normal(n) + 1j * rng.standard_normal(n))
    f = np.fft.fftfreq(n, 1.0 / rate)
    g = np.fft.ifft(spec * np.exp(-0.5 * (f / (spread_hz / 2)) ** 2))
    return g / np.sqrt(np.mean(np.abs(g) ** 2) + 1e-30)


def agc(audio: np.ndarray, rate: int, attack_s: float = 0.005, release_s: float = 0.3, frame_s: float = 0.01) -> np.ndarray:
    """A receiver's AGC: the level of ``frame_s`` frames followed fast upwards (``attack_s``) and slowly down (``release_s``), divided out."""
    hop = max(1, int(frame_s * rate))
    frames = len(audio) // hop + 1
    level = np.sqrt(np.mean(np.square(np.pad(audio, (0, frames * hop - len(audio))).reshape(frames, hop), dtype=np.float64), axis=1))
    up, down = np.exp(-frame_s / attack_s), np.exp(-frame_s / release_s)
    env = np.empty(frames)
    e = level.max() * 0.1 + 1e-9
    for i, v in enumerate(level):
        e = up * e + (1 - up) * v if v > e else down * e + (1 - down) * v
        env[i] = e
    gain = 1.0 / np.maximum(env, level.max() * 1e-3 + 1e-9)
    return (audio * np.interp(np.arange(len(audio)), np.arange(frames) * hop + hop / 2, gain)).astype(np.float32)


def ssb(audio: np.ndarray, rng: np.random.Generator, rate: int = 16000, band: tuple[float, float] = (300.0, 2700.0),
        snr_db: float = 15.0, fading: str | None = "moderate", offset_hz: float = 0.0) -> np.ndarray:
    """``audio`` received over an analogue SSB voice link (see the module); the output has the input's RMS level.

    Parameters
    ----------
    band : (float, float)
        The receiver filter's pass band (Hz).
    snr_db : float
        Signal-to-noise ratio in that band (dB).
    fading : str or None
        A :data:`FADING` channel, or ``None`` for a steady path.
    offset_hz : float
        Receiver mistuning: every frequency of the audio moves by this much.
    """
    n = len(audio)
    a = analytic(audio)
    if fading is not None:
        spread, delay = FADING[fading]
        d = int(round(delay * rate))
        a = (fading_gain(n, rate, spread, rng) * a + fading_gain(n, rate, spread, rng) * np.concatenate([np.zeros(d), a[: n - d]])) / np.sqrt(2)
    x = (a * np.exp(2j * np.pi * offset_hz * np.arange(n) / rate)).real.astype(np.float32)
    x = bandpass(x, rate, *band)
    noise = bandpass(rng.standard_normal(n).astype(np.float32), rate, *band)
    x = agc(x + noise * np.float32(_rms(x) / _rms(noise) * 10 ** (-snr_db / 20)), rate)
    x *= np.float32(_rms(audio) / _rms(x))
    return x


def codec2(audio: np.ndarray, mode: str = "1300", rate: int = 16000, ber: float = 0.0) -> np.ndarray:
    """``audio`` encoded and decoded by the codec2 vocoder at ``mode`` (``c2enc``/``c2dec``), with bit-error rate ``ber``; same RMS level.

    Raises
    ------
    DataInvalidError
        The ``codec2`` programs are not installed, or ``mode`` is not one of theirs.
    """
    if shutil.which("c2enc") is None or shutil.which("c2dec") is None:
        raise DataInvalidError("codec2's c2enc/c2dec programs are missing", "Install Debian's codec2 package (apt-get install codec2)")
    if mode not in CODEC2_MODES + ("450",):
        raise DataInvalidError(f"codec2 mode {mode!r} is unknown", f"Use one of {', '.join(CODEC2_MODES)}")
    x = soxr.resample(audio.astype(np.float32), rate, CODEC2_RATE)
    x = x * np.float32(0.25 / max(_rms(x), 1e-6))  # about -12 dBFS RMS: the level the vocoder's quantisers expect
    pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    bits = subprocess.run(["c2enc", mode, "-", "-"], input=pcm, capture_output=True, check=True).stdout
    dec = ["c2dec", mode, "-", "-"] + (["--ber", f"{ber:g}"] if ber > 0 else [])
    out = np.frombuffer(subprocess.run(dec, input=bits, capture_output=True, check=True).stdout, "<i2").astype(np.float32) / 32768
    y = soxr.resample(out, CODEC2_RATE, rate).astype(np.float32)
    y = np.pad(y, (0, max(0, len(audio) - len(y))))[: len(audio)]
    return y * np.float32(_rms(audio) / _rms(y))


def hf(audio: np.ndarray, rng: np.random.Generator, rate: int = 16000, p_codec2: float = 0.4) -> tuple[np.ndarray, str]:
    """``audio`` through a random short-wave channel: :func:`codec2` (probability ``p_codec2``) or :func:`ssb`; and what it was.

    SSB: pass band from 150-400 Hz to 2300-3400 Hz, SNR 3-25 dB, fading none /
    good / moderate / poor, mistuning up to ±100 Hz.  codec2: a mode of
    :data:`CODEC2_MODES`, error-free or with 0.1-2 % bit errors.  Peak-limited to 0.99.
    """
    if rng.random() < p_codec2:
        mode = str(rng.choice(CODEC2_MODES))
        ber = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.001, 0.02))
        y, what = codec2(audio, mode, rate, ber), f"codec2 {mode} ber {ber:.3f}"
    else:
        band = (float(rng.uniform(150, 400)), float(rng.uniform(2300, 3400)))
        snr, offset = float(rng.uniform(3, 25)), float(rng.uniform(-100, 100))
        fading = [None, *FADING][int(rng.integers(len(FADING) + 1))]
        y = ssb(audio, rng, rate, band, snr, fading, offset)
        what = f"ssb {band[0]:.0f}-{band[1]:.0f} Hz snr {snr:.0f} dB fading {fading or 'none'} offset {offset:+.0f} Hz"
    return (y * np.float32(min(1.0, 0.99 / (np.abs(y).max() + 1e-9)))).astype(np.float32), what
