"""Standard input as a source: raw PCM or a WAV stream, and the PCM decoder.

Raw PCM needs ``--format s16le|s24le|s32le|f32le``, ``--rate`` and
``--channels``.  Without ``--format`` the stream must be WAV: its RIFF header
is parsed here (``wave`` and libsndfile both want a seekable file; a pipe is
not one).  :class:`PcmDecoder` turns interleaved little-endian bytes into
float32 frames without per-sample Python loops; the URL source reuses it for
ffmpeg's ``f32le`` output.
"""

from __future__ import annotations

import os
import select
import struct
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from rtgenre.errors import InputFormatError, InputTruncatedError, UsageError
from rtgenre.sources.base import ThreadedSource, check_format

#: Raw sample formats: bytes per sample.
FORMATS = {"s16le": 2, "s24le": 3, "s32le": 4, "f32le": 4}
#: WAV data sizes meaning "unknown length" (streaming writers cannot seek back).
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)
_FIX_RAW = "For raw PCM pass --format s16le|s24le|s32le|f32le --rate R --channels C"


class PcmDecoder:
    """Interleaved little-endian PCM bytes → float32 frames ``(n, channels)``.

    Bytes of an incomplete trailing frame are kept for the next call.

    Parameters
    ----------
    fmt : str
        One of :data:`FORMATS`.
    channels : int
        Interleaved channel count.
    """

    def __init__(self, fmt: str, channels: int) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"Unknown sample format {fmt!r}", f"Use one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.channels = channels
        self.frame_bytes = FORMATS[fmt] * channels
        self._rest = b""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._rest)

    def process(self, data: bytes) -> np.ndarray:
        """Decode ``data`` (plus bytes held back) into whole frames.

        Parameters
        ----------
        data : bytes
            The next bytes of the stream.

        Returns
        -------
        ndarray, shape (n, channels), float32
        """
        buf = self._rest + data if self._rest else data
        whole = len(buf) - len(buf) % self.frame_bytes
        self._rest = bytes(buf[whole:])
        raw = np.frombuffer(buf, dtype=np.uint8, count=whole)
        if self.fmt == "s16le":
            x = raw.view("<i2").astype(np.float32) / np.float32(32768.0)
        elif self.fmt == "s32le":
            x = (raw.view("<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
        elif self.fmt == "s24le":
            wide = np.zeros((whole // 3, 4), dtype=np.uint8)
            wide[:, 1:] = raw.reshape(-1, 3)
            x = (wide.view("<i4")[:, 0] >> 8).astype(np.float32) / np.float32(8388608.0)
        else:
            x = raw.view("<f4").astype(np.float32)
        return x.reshape(-1, self.channels)

    def reset(self) -> None:
        """Forget held-back bytes."""
        self._rest = b""


def parse_wav_header(read: Callable[[int], bytes]) -> tuple[str, int, int, int | None]:
    """Read a WAV header from a stream up to the start of the sample data.

    Parameters
    ----------
    read : callable
        ``read(n)`` returns exactly ``n`` bytes, fewer only at the end of the stream.

    Returns
    -------
    fmt : str
        Sample format (a key of :data:`FORMATS`).
    sample_rate, channels : int
    data_bytes : int or None
        Size of the sample data; None when the header leaves it open (streams).
    """
    riff = read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise UsageError("stdin is not a WAV stream and --format was not given", _FIX_RAW)
    spec: tuple[str, int, int] | None = None
    while True:
        head = read(8)
        if len(head) < 8:
            raise InputTruncatedError("stdin ended inside the WAV header", "Send a complete WAV stream")
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        if cid == b"data":
            if spec is None:
                raise InputFormatError("The WAV stream on stdin has no fmt chunk before its data", "Send a valid WAV stream")
            return (*spec, None if size in _UNKNOWN_SIZES else size)
        body = read(size + (size & 1))
        if len(body) < size:
            raise InputTruncatedError("stdin ended inside the WAV header", "Send a complete WAV stream")
        if cid == b"fmt ":
            spec = _wav_spec(body)


def _wav_spec(fmt_chunk: bytes) -> tuple[str, int, int]:
    """(fmt, rate, channels) of a WAV ``fmt `` chunk."""
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if tag == 0xFFFE and len(fmt_chunk) >= 26:
        tag = struct.unpack("<H", fmt_chunk[24:26])[0]
    fmt = {(1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le"}.get((tag, bits))
    if fmt is None:
        raise InputFormatError(
            f"The WAV stream on stdin has an unsupported sample format (format tag {tag}, {bits} bit)",
            "Send 16/24/32-bit integer or 32-bit float PCM, e.g. `ffmpeg -i IN -f wav -c:a pcm_s16le -`",
        )
    return fmt, rate, channels


#: Float samples beyond this magnitude cannot be audio in [-1, 1] (a little headroom over full scale is normal).
FLOAT_LIMIT = 64.0
#: Share of NaN/Inf samples in one block above which the data cannot be float audio with a few bad samples.
NONFINITE_SHARE = 0.25


def check_float_block(block: np.ndarray, what: str) -> None:
    """Raise :class:`InputFormatError` when a block of ``f32le`` samples cannot be float audio.

    Integer PCM read as float gives NaN/Inf and magnitudes up to 1e38 in about
    every other sample; a few NaN samples in real float audio are zeroed and
    counted downstream instead.
    """
    finite = np.isfinite(block)
    share = 1.0 - float(finite.mean())
    peak = float(np.abs(block[finite]).max()) if finite.any() else 0.0
    if share > NONFINITE_SHARE or peak > FLOAT_LIMIT:
        raise InputFormatError(
            f"{what[:1].upper() + what[1:]} cannot be float samples: {share:.0%} of a block are NaN/Inf and values reach {peak:.3g} (audio is within [-1, 1])",
            "Pass the format the data really has, e.g. --format s16le for 16-bit PCM",
        )


class StdinSource(ThreadedSource):
    """Reads raw PCM or a WAV stream from standard input.

    Parameters
    ----------
    fmt : str or None
        Raw sample format; None: a WAV stream is expected.
    rate, channels : int or None
        Raw stream parameters (required with ``fmt``).
    block_seconds : float
        Seconds of audio per read.
    stream : binary file or None
        What to read (default ``sys.stdin.buffer``); only its file descriptor is used.
    """

    def __init__(
        self,
        fmt: str | None = None,
        rate: int | None = None,
        channels: int | None = None,
        *,
        block_seconds: float = 0.05,
        stream: BinaryIO | None = None,
    ) -> None:
        super().__init__()
        self.fmt, self._rate, self._channels = fmt, rate, channels
        self.block_seconds = block_seconds
        self._stream = stream
        self._fd = -1
        self._decoder: PcmDecoder | None = None
        self._remaining: int | None = None

    def open(self) -> None:
        if self._stream is None:
            self._stream = sys.stdin.buffer
        self._fd = self._stream.fileno()
        if self.fmt is not None:
            if self._rate is None or self._channels is None:
                raise UsageError("Raw PCM on stdin needs --rate and --channels", _FIX_RAW)
            fmt, rate, channels = self.fmt, self._rate, self._channels
            self.description = f"stdin {fmt} {rate} Hz {channels} ch"
        else:
            fmt, rate, channels, self._remaining = parse_wav_header(self._read_exact)
            self.description = f"stdin wav {fmt} {rate} Hz {channels} ch"
        check_format(self.description, rate, channels, "Pass the stream's true --rate / --channels, or resample it")
        self._decoder = PcmDecoder(fmt, channels)
        self.sample_rate, self.channels = rate, channels

    def _read_exact(self, n: int) -> bytes:
        """Read ``n`` bytes (fewer at the end of the stream)."""
        out = b""
        while len(out) < n:
            chunk = os.read(self._fd, n - len(out))
            if not chunk:
                break
            out += chunk
        return out

    def blocks(self) -> Iterator[np.ndarray]:
        dec = self._decoder
        if dec is None:
            raise RuntimeError("StdinSource.open() was not called")
        chunk = max(1, int(self.block_seconds * self.sample_rate)) * dec.frame_bytes
        while not self._stop.is_set() and self._remaining != 0:
            if not select.select([self._fd], [], [], 0.1)[0]:
                continue
            data = os.read(self._fd, chunk if self._remaining is None else min(chunk, self._remaining))
            if not data:
                break
            if self._remaining is not None:
                self._remaining -= len(data)
            block = dec.process(data)
            if len(block):
                if dec.fmt == "f32le":
                    check_float_block(block, self.description)
                yield block
        if self._stop.is_set():
            return
        if dec.pending:
            raise InputTruncatedError(
                f"stdin ended mid-frame: {dec.pending} trailing bytes dropped",
                f"Send whole frames of {dec.frame_bytes} bytes ({dec.fmt}, {dec.channels} ch)",
            )
        if self._remaining:
            raise InputTruncatedError(
                f"The WAV stream on stdin ended {self._remaining} bytes before the end its header announces",
                "Send the complete stream",
            )
