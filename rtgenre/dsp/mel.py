"""Streaming log-Mel front end (numpy only).

This module owns the conversion of model-rate samples to log-Mel frames:
the Mel filterbank (equal to ``librosa.filters.mel``), the STFT framing
(``center=False``, periodic Hann window) and the log compression named by the
model card.  :class:`MelStream` computes only the frames that newly arrived
samples complete; :func:`log_mel` is one :meth:`MelStream.process` call on a
fresh stream, so the offline and online paths share every line of code.
"""

from __future__ import annotations

import numpy as np

from rtgenre.card import FrontendParams
from rtgenre.errors import ModelCorruptError

_F_SP = 200.0 / 3  # Slaney mel scale: Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0
_DB_FLOOR = 1e-10


def hz_to_mel(f: float | np.ndarray, htk: bool = False) -> np.ndarray:
    """Hz to mels on the HTK or the Slaney (linear below 1 kHz, log above) scale."""
    f = np.asarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mels = f / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, mels)


def mel_to_hz(m: float | np.ndarray, htk: bool = False) -> np.ndarray:
    """Mels to Hz; the inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log_part, _F_SP * m)


def _check(params: FrontendParams) -> None:
    problems = []
    if params.window != "hann":
        problems.append(f"window '{params.window}' (only 'hann')")
    if params.norm not in ("slaney", None):
        problems.append(f"norm '{params.norm}' (only 'slaney' or null)")
    if params.log_kind not in ("log10", "db"):
        problems.append(f"log kind '{params.log_kind}' (only 'log10' or 'db')")
    if params.hop_length < 1 or params.n_fft < 2 or params.n_mels < 1:
        problems.append(f"n_fft {params.n_fft}, hop_length {params.hop_length}, n_mels {params.n_mels}")
    if problems:
        raise ModelCorruptError(
            f"The model card's front end asks for unsupported settings: {'; '.join(problems)}",
            "Use a card whose front end matches what rtgenre implements, or re-export the model",
        )


def mel_filterbank(params: FrontendParams) -> np.ndarray:
    """Triangular Mel filterbank, equal to ``librosa.filters.mel``.

    Parameters
    ----------
    params : FrontendParams
        Uses ``sample_rate, n_fft, n_mels, fmin, fmax, htk, norm``.

    Returns
    -------
    ndarray, shape (n_mels, n_fft // 2 + 1), float32
    """
    _check(params)
    fmax = params.sample_rate / 2.0 if params.fmax is None else params.fmax
    fftfreqs = np.fft.rfftfreq(params.n_fft, d=1.0 / params.sample_rate)
    lo, hi = hz_to_mel(params.fmin, params.htk), hz_to_mel(fmax, params.htk)
    mel_f = mel_to_hz(np.linspace(lo, hi, params.n_mels + 2), params.htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if params.norm == "slaney":
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def periodic_hann(n: int) -> np.ndarray:
    """Periodic (DFT-even) Hann window of length ``n``, float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class MelStream:
    """Incremental log-Mel spectrogram.

    Each :meth:`process` call computes only the STFT frames completed by the new
    samples plus the kept overlap, in one vectorised pass (strided frame view,
    one ``rfft``, one matrix product).

    Parameters
    ----------
    params : FrontendParams
        Front-end settings from the model card.

    Attributes
    ----------
    frames_done : int
        Frames emitted since construction or :meth:`reset`.
    """

    def __init__(self, params: FrontendParams) -> None:
        self.params = params
        self.n_mels = params.n_mels
        # The STFT and the Mel product run in float64 (as librosa's STFT does): the
        # float32 FFT round-off floor would otherwise show in quiet bands, and the
        # product's rounding must not depend on the number of frames (BLAS uses
        # other kernels for one row), so that streaming == offline bit for bit.
        self._fb_t = np.ascontiguousarray(mel_filterbank(params).T, dtype=np.float64)
        self._window = periodic_hann(params.n_fft)
        self.reset()

    def reset(self) -> None:
        """Forget buffered samples and the frame count."""
        self._tail = np.zeros(0, dtype=np.float32)
        self._skip = 0  # samples still to discard when hop_length > n_fft
        self.frames_done = 0

    def samples_for(self, frames: int) -> int:
        """Samples still to feed before :attr:`frames_done` reaches ``frames`` (0 if it has)."""
        p = self.params
        if frames <= self.frames_done:
            return 0
        return (frames - 1) * p.hop_length + p.n_fft - (self.frames_done * p.hop_length + self._tail.size) + self._skip

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed 1-D model-rate samples; return the newly completed frames.

        Returns
        -------
        ndarray, shape (new_frames, n_mels), float32
        """
        p = self.params
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._skip:
            drop = min(self._skip, x.size)
            x, self._skip = x[drop:], self._skip - drop
        buf = np.concatenate((self._tail, x)) if self._tail.size else x
        n = 0 if buf.size < p.n_fft else 1 + (buf.size - p.n_fft) // p.hop_length
        consumed = n * p.hop_length
        self._tail = buf[consumed:].copy()
        self._skip += max(0, consumed - buf.size)
        self.frames_done += n
        if n == 0:
            return np.zeros((0, self.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(buf, p.n_fft)[: consumed : p.hop_length]
        spec = np.fft.rfft(frames * self._window, axis=1)
        if p.power == 2.0:
            power = spec.real**2 + spec.imag**2
        else:
            power = np.abs(spec) ** p.power
        mel = power @ self._fb_t
        if p.log_kind == "db":
            return (10.0 * np.log10(np.maximum(mel, _DB_FLOOR))).astype(np.float32)
        return np.log10(mel * p.log_scale + p.log_offset).astype(np.float32)


def log_mel(signal: np.ndarray, params: FrontendParams) -> np.ndarray:
    """Offline log-Mel frames of a whole signal (``center=False``).

    Returns
    -------
    ndarray, shape (1 + (len - n_fft) // hop_length or 0, n_mels), float32
    """
    return MelStream(params).process(signal)
