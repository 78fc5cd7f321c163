"""Network streams and anything else ffmpeg opens (``http(s)://``, ``rtmp://``, ``file://`` ...).

``ffprobe`` (when installed) learns the stream's native rate and channel
count, and fails early with ffmpeg's own message when the URL cannot be
opened; without ``ffprobe`` (or when it cannot tell) the stream is decoded to
2 channels at 48000 Hz.
An ``ffmpeg`` subprocess decodes to interleaved ``f32le`` on its stdout,
which a reader thread turns into frames with :class:`PcmDecoder`.
:class:`FfmpegDecoder` also decodes MP3 files for the file source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import numpy as np

from rtgenre.errors import DependencyMissingError, StreamFailedError
from rtgenre.sources.base import ThreadedSource, check_format
from rtgenre.sources.stdin import PcmDecoder

#: Decoding parameters when ffprobe is not installed.
FALLBACK_RATE, FALLBACK_CHANNELS = 48000, 2
#: Seconds ffprobe may take to open the stream.
PROBE_TIMEOUT = 20.0
_FIX_URL = "Check the URL and that the stream is reachable (try `ffplay URL`)"


class FfmpegDecoder:
    """An ``ffmpeg`` subprocess decoding one input to float32 frames at a given rate and channel count.

    Parameters
    ----------
    url : str
        Anything ``ffmpeg -i`` accepts (URL or file path).
    rate, channels : int
        Output sample rate and channel count.
    """

    def __init__(self, url: str, rate: int, channels: int) -> None:
        self.url, self.rate, self.channels = url, rate, channels
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()

    def start(self) -> None:
        """Launch ffmpeg (it blocks on its full stdout until :meth:`blocks` reads)."""
        cmd = [require_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", self.url, "-vn", "-f", "f32le",
               "-ac", str(self.channels), "-ar", str(self.rate), "pipe:1"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)

    def blocks(self, block_frames: int, stopped: threading.Event) -> Iterator[np.ndarray]:
        """Yield float32 ``(n, channels)`` blocks until ffmpeg ends.

        Raises :class:`StreamFailedError` with ffmpeg's last stderr line when it
        fails (unless ``stopped`` is set: then it was terminated on purpose).
        """
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("FfmpegDecoder.start() was not called")
        dec = PcmDecoder("f32le", self.channels)
        fd = proc.stdout.fileno()
        while True:
            data = os.read(fd, block_frames * dec.frame_bytes)
            if not data:
                break
            block = dec.process(data)
            if len(block):
                yield block
        rc = proc.wait()
        if rc != 0 and not stopped.is_set():
            self._stderr.seek(0)
            raise StreamFailedError(f"ffmpeg failed on {self.url} (exit {rc}): {_last_line(self._stderr.read())}", _FIX_URL)

    def interrupt(self) -> None:
        """Terminate ffmpeg (its stdout then ends)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def close(self) -> None:
        """Reap ffmpeg and close its pipes; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._stderr.close()


def require_ffmpeg() -> str:
    """Path of the ``ffmpeg`` program; :class:`DependencyMissingError` if it is not installed."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DependencyMissingError("ffmpeg not found (needed to read URLs and MP3 files)", "Install it, e.g. `apt-get install ffmpeg`")
    return ffmpeg


class UrlSource(ThreadedSource):
    """Decodes a URL with an ffmpeg subprocess.

    Parameters
    ----------
    url : str
        Anything ``ffmpeg -i`` accepts.
    block_seconds : float
        Seconds of audio per read.
    """

    def __init__(self, url: str, *, block_seconds: float = 0.05) -> None:
        super().__init__()
        self.url = url
        self.block_seconds = block_seconds
        self.description = f"url {url}"
        self._decoder: FfmpegDecoder | None = None

    def open(self) -> None:
        require_ffmpeg()
        self.sample_rate, self.channels = self._probe()
        check_format(self.description, self.sample_rate, self.channels)
        self._decoder = FfmpegDecoder(self.url, self.sample_rate, self.channels)
        self._decoder.start()

    def _probe(self) -> tuple[int, int]:
        """(rate, channels) of the first audio stream, from ffprobe; the fallback without it."""
        ffprobe = shutil.which("ffprobe")
        if ffprobe is None:
            return FALLBACK_RATE, FALLBACK_CHANNELS
        cmd = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
               "-of", "json", self.url]
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise StreamFailedError(f"{self.url} did not answer within {PROBE_TIMEOUT:.0f} s", _FIX_URL) from None
        if res.returncode != 0:
            raise StreamFailedError(f"ffmpeg cannot open {self.url}: {_last_line(res.stderr)}", _FIX_URL)
        streams = json.loads(res.stdout or b"{}").get("streams") or []
        if not streams:
            raise StreamFailedError(f"{self.url} has no audio stream", "Pass a URL that carries audio")
        return int(streams[0].get("sample_rate", FALLBACK_RATE)), int(streams[0].get("channels", FALLBACK_CHANNELS))

    def blocks(self) -> Iterator[np.ndarray]:
        if self._decoder is None:
            raise RuntimeError("UrlSource.open() was not called")
        yield from self._decoder.blocks(max(1, int(self.block_seconds * self.sample_rate)), self._stop)

    def interrupt(self) -> None:
        if self._decoder is not None:
            self._decoder.interrupt()

    def release(self) -> None:
        if self._decoder is not None:
            self._decoder.close()


def _last_line(stderr: bytes) -> str:
    """ffmpeg's last non-empty stderr line (its actual complaint)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"
