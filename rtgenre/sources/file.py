"""Audio files (WAV, FLAC, OGG, MP3 and anything else libsndfile reads) as a source.

Every format goes through :mod:`soundfile` except MP3: libsndfile 1.2.2 (the
Debian 12 one) returns wrong samples when an MP3 is read in blocks (only a
whole-file read is right), so MP3 files are decoded by ffmpeg
(:class:`~rtgenre.sources.url.FfmpegDecoder`) at the rate and channel count
libsndfile reports; the values agree with libsndfile's whole-file read to
within 1e-6.  A file is read block by block in a reader thread,
either as fast as the consumer takes it (lossless backpressure) or paced at
the file's own rate (``realtime=True``, a live source that behaves like a
device); paced files read by libsndfile share one pacing thread instead
(:class:`~rtgenre.sources.base.Pacer`: many such feeds cost one wake-up per
block period, not one per feed).  A truncated file delivers everything readable, then fails with
:class:`~rtgenre.errors.InputTruncatedError` (an MP3 when its Xing/Info
header states its length, as encoders write it; a cut CBR MP3 without one
cannot be told from a shorter file).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from rtgenre.errors import InputEmptyError, InputTruncatedError, InputUnreadableError, StreamFailedError
from rtgenre.ring import Ring
from rtgenre.sources.base import PACER, ThreadedSource, check_format
from rtgenre.sources.url import FfmpegDecoder, require_ffmpeg

#: libsndfile's header log line for a WAV data chunk whose size disagrees with the file.
_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
#: libsndfile's log line for an MP3 whose Xing/Info header gives the exact frame count.
_XING = re.compile(r"^\s*bitrate mode\s*:\s*variable", re.MULTILINE)
#: Frames an intact MP3 may decode short of its header's count (encoder delay/padding rounding).
MP3_SLACK_FRAMES = 2 * 1152
#: Data sizes that mean "unknown length" (written by streaming encoders), not truncation.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)

_FIX_READABLE = "Pass a readable WAV, FLAC, OGG or MP3 file (convert others with `ffmpeg -i IN OUT.wav`)"
_FIX_TRUNCATED = "Re-export or re-download the file; everything readable was analysed"


class FileSource(ThreadedSource):
    """Reads an audio file into the ring.

    Parameters
    ----------
    path : str
        The file.
    realtime : bool
        Pace delivery at the file's sample rate (a live source); otherwise read
        as fast as the consumer allows.
    block_seconds : float
        Seconds of audio per block.
    """

    def __init__(self, path: str, *, realtime: bool = False, block_seconds: float = 0.05) -> None:
        super().__init__()
        self.path = str(path)
        self.live = realtime
        self.block_seconds = block_seconds
        self.description = f"file {self.path}"
        self.declared_frames = 0
        self._file: sf.SoundFile | None = None
        self._ffmpeg: FfmpegDecoder | None = None
        self._mp3_exact = False

    def open(self) -> None:
        if not os.path.exists(self.path):
            raise InputUnreadableError(f"File {self.path} does not exist", _FIX_READABLE)
        if os.path.isdir(self.path):
            raise InputUnreadableError(f"{self.path} is a directory, not an audio file", _FIX_READABLE)
        try:
            f = sf.SoundFile(os.fsencode(self.path))  # bytes: a file name in any encoding
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise InputUnreadableError(f"Cannot read {self.path} as audio ({exc})", _FIX_READABLE) from None
        try:
            check_format(self.description, f.samplerate, f.channels)
            self.declared_frames = _declared_frames(f)
            if f.frames == 0:
                raise InputEmptyError(f"File {self.path} holds no audio (0 frames)", "Pass a file with audio in it")
        except Exception:
            f.close()
            raise
        self.sample_rate, self.channels = f.samplerate, f.channels
        # an MP3 with a Xing/Info header (libsndfile then says "variable") states its exact length; without one
        # the length is an estimate from the file size, which a cut file follows, so a cut cannot be seen
        self._mp3_exact = f.format == "MP3" and _XING.search(f.extra_info) is not None
        if f.format == "MP3":
            f.close()
            require_ffmpeg()
            self._ffmpeg = FfmpegDecoder(self.path, self.sample_rate, self.channels)
            self._ffmpeg.start()
        else:
            self._file = f

    def start(self, ring: Ring) -> None:
        """Start delivering into ``ring``: from the shared :data:`~rtgenre.sources.base.PACER` when paced
        and read by libsndfile (whose reads never block), else from a reader thread of its own."""
        if self.live and self._file is not None:
            self._ring = ring
            PACER.add(self, self._sndfile_blocks(self._file, self._block_frames()))
        else:
            super().start(ring)

    def stop(self) -> None:
        PACER.remove(self)
        super().stop()

    def _block_frames(self) -> int:
        return max(1, int(round(self.block_seconds * self.sample_rate)))

    def blocks(self) -> Iterator[np.ndarray]:
        block = self._block_frames()
        if self._ffmpeg is not None:
            source = self._ffmpeg.blocks(block, self._stop)
        elif self._file is not None:
            source = self._sndfile_blocks(self._file, block)
        else:
            raise RuntimeError("FileSource.open() was not called")
        t0 = time.monotonic()
        pos = 0
        try:
            for data in source:
                pos += len(data)
                if self.live:
                    self._stop.wait(max(0.0, t0 + pos / self.sample_rate - time.monotonic()))
                if self._stop.is_set():
                    return
                yield data
        except StreamFailedError as exc:  # ffmpeg gave up on an MP3 part-way
            raise InputTruncatedError(
                f"File {self.path} is damaged after {pos / self.sample_rate:.2f} s ({exc.problem})", _FIX_TRUNCATED
            ) from None
        if self._ffmpeg is not None and self._mp3_exact and pos < self.declared_frames - MP3_SLACK_FRAMES and not self._stop.is_set():
            raise InputTruncatedError(
                f"File {self.path} is truncated: its header announces {self.declared_frames / self.sample_rate:.2f} s, "
                f"only {pos / self.sample_rate:.2f} s are present",
                _FIX_TRUNCATED,
            )

    def _sndfile_blocks(self, f: sf.SoundFile, block: int) -> Iterator[np.ndarray]:
        """Blocks read by libsndfile; InputTruncatedError after the last readable one if the file is cut.

        Each block is read straight into a new array (``buffer_read_into``): ``SoundFile.read``'s checks
        and seeks cost half as much again per 50 ms block (50 against 33 µs of a 44.1 kHz stereo WAV
        here), which many paced feeds pay 20 times a second each.
        """
        pos = 0
        while not self._stop.is_set():
            data = np.empty((block, f.channels), np.float32)
            try:
                n = f.buffer_read_into(data, "float32")
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise InputTruncatedError(
                    f"File {self.path} is damaged after {pos / self.sample_rate:.2f} s ({exc})", _FIX_TRUNCATED
                ) from None
            if not n:
                break
            pos += n
            yield data[:n]
        if pos < self.declared_frames and not self._stop.is_set():
            raise InputTruncatedError(
                f"File {self.path} is truncated: its header announces {self.declared_frames} frames, "
                f"only {pos} are present",
                _FIX_TRUNCATED,
            )

    def interrupt(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.interrupt()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._ffmpeg is not None:
            self._ffmpeg.close()


def _declared_frames(f: sf.SoundFile) -> int:
    """Frames the file's header announces (libsndfile silently shortens truncated WAVs)."""
    m = _DATA_LOG.search(f.extra_info)
    if m is None or int(m.group(1)) in _UNKNOWN_SIZES:
        return f.frames
    frame_bytes = _frame_bytes(f)
    return int(m.group(1)) // frame_bytes if frame_bytes else f.frames


def _frame_bytes(f: sf.SoundFile) -> int:
    """Bytes per frame of an uncompressed file, 0 if unknown."""
    width = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}.get(f.subtype, 0)
    return width * f.channels
