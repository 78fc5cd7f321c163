"""Network streams and anything else ffmpeg opens (``http(s)://``, ``rtmp://``, ``file://`` ...).

``ffprobe`` (when installed) learns the stream's native rate and channel
count and whether it has a length, and fails early with ffmpeg's own message
when the URL cannot be opened; without ``ffprobe`` (or when it cannot tell)
the stream is decoded to 2 channels at 48000 Hz.
An ``ffmpeg`` subprocess decodes to interleaved ``f32le`` on its stdout,
which a reader thread turns into frames with :class:`PcmDecoder`.
:class:`FfmpegDecoder` also decodes MP3 files for the file source.

A *live* URL (one without a length: a radio stream) is kept alive: when it
ends, fails, or delivers no audio for the stall timeout (the watchdog here,
with ffmpeg's own ``-rw_timeout`` as a backstop), ffmpeg is restarted with
exponential backoff and jitter; every stall, loss, failed attempt and
recovery is a :class:`~rtgenre.sources.base.Notice` at its ring position.
ffmpeg's own ``-reconnect`` is not used: it would hide the gap from the
analysis.  A URL with a length (a file over HTTP) is read once, like a file.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np

from rtgenre.errors import DependencyMissingError, StreamFailedError
from rtgenre.sources.base import Notice, ThreadedSource, backoff, check_format
from rtgenre.sources.stdin import PcmDecoder

#: Decoding parameters when ffprobe is not installed.
FALLBACK_RATE, FALLBACK_CHANNELS = 48000, 2
#: Seconds ffprobe may take to open the stream.
PROBE_TIMEOUT = 20.0
_FIX_URL = "Check the URL and that the stream is reachable (try `ffplay URL`)"
#: Seconds ffmpeg gets to exit after its output ended, and to die after a kill.
EXIT_TIMEOUT = 2.0


class StreamStalled(Exception):
    """ffmpeg delivered no audio for the stall timeout."""


class FfmpegDecoder:
    """An ``ffmpeg`` subprocess decoding one input to float32 frames at a given rate and channel count.

    Parameters
    ----------
    url : str
        Anything ``ffmpeg -i`` accepts (URL or file path).
    rate, channels : int
        Output sample rate and channel count.
    """

    def __init__(self, url: str, rate: int, channels: int, input_options: tuple[str, ...] = ()) -> None:
        self.url, self.rate, self.channels = url, rate, channels
        self.input_options = input_options
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()

    def start(self) -> None:
        """Launch ffmpeg (it blocks on its full stdout until :meth:`blocks` reads)."""
        cmd = [require_ffmpeg(), "-nostdin", "-loglevel", "error", *self.input_options, "-i", self.url, "-vn", "-f", "f32le",
               "-ac", str(self.channels), "-ar", str(self.rate), "pipe:1"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)

    def blocks(self, block_frames: int, stopped: threading.Event, stall_timeout: float | None = None) -> Iterator[np.ndarray]:
        """Yield float32 ``(n, channels)`` blocks until ffmpeg ends.

        Raises :class:`StreamFailedError` with ffmpeg's last stderr line when it
        fails (unless ``stopped`` is set: then it was terminated on purpose),
        and :class:`StreamStalled` when ``stall_timeout`` seconds pass without
        any output (the time the consumer holds a block does not count).
        """
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("FfmpegDecoder.start() was not called")
        dec = PcmDecoder("f32le", self.channels)
        fd = proc.stdout.fileno()
        last = time.monotonic()
        while True:
            if stall_timeout is not None and not select.select([fd], [], [], min(0.25, stall_timeout))[0]:
                if stopped.is_set():
                    return
                if time.monotonic() - last >= stall_timeout:
                    raise StreamStalled(f"no audio for {stall_timeout:g} s")
                continue
            data = os.read(fd, block_frames * dec.frame_bytes)
            if not data:
                break
            block = dec.process(data)
            if len(block):
                yield block
            last = time.monotonic()
        try:
            rc = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:  # closed its output but hangs: it is done for us
            proc.kill()
            rc = proc.wait(EXIT_TIMEOUT)
        if rc != 0 and not stopped.is_set():
            self._stderr.seek(0)
            raise StreamFailedError(f"ffmpeg failed on {self.url} (exit {rc}): {_last_line(self._stderr.read())}", _FIX_URL)

    def interrupt(self) -> None:
        """Kill ffmpeg (its stdout then ends at once, whatever it was blocked on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        """Reap ffmpeg (killing it if it does not end by itself) and close its pipes; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass  # unkillable (stuck in the kernel): leave it to init
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
    """Decodes a URL with an ffmpeg subprocess; keeps a live URL alive.

    Parameters
    ----------
    url : str
        Anything ``ffmpeg -i`` accepts.
    block_seconds : float
        Seconds of audio per read.
    reconnect : bool or None
        None: reopen a live URL that ends, fails or stalls once it played.
        True: also retry opening at start.  False: a live URL that ends,
        fails or stalls is a :class:`StreamFailedError`.
    max_reconnects : int or None
        Consecutive failed attempts before giving up (None: never).
    stall_timeout : float
        Seconds without audio after which a live URL counts as stalled.

    Attributes
    ----------
    endless : bool
        The stream has no length (a live stream), known after :meth:`open`.
    """

    def __init__(self, url: str, *, block_seconds: float = 0.05, reconnect: bool | None = None,
                 max_reconnects: int | None = None, stall_timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.block_seconds = block_seconds
        self.reconnect = reconnect
        self.max_reconnects = max_reconnects
        self.stall_timeout = stall_timeout
        self.description = f"url {url}"
        self.endless = False
        self._decoder: FfmpegDecoder | None = None

    def open(self) -> None:
        require_ffmpeg()
        attempt = 0
        while True:
            try:
                self.sample_rate, self.channels, self.endless = self._probe()
                break
            except StreamFailedError as exc:  # never worked: retried only when --reconnect was asked for
                attempt += 1
                if self.reconnect is not True or self._gave_up(attempt):
                    raise (self._giving_up(exc.problem, attempt - 1) if self.reconnect else exc) from None
                delay = backoff(attempt)
                notice = Notice("failed", 0, {"attempt": attempt, "reason": exc.problem, "retry_in_s": round(delay, 2)})
                (self.notify or self.notices.append)(notice)
                time.sleep(delay)  # a stop signal interrupts this (the session raises out of it)
        check_format(self.description, self.sample_rate, self.channels)
        self._decoder = self._new_decoder()

    def _new_decoder(self) -> FfmpegDecoder:
        opts = ("-rw_timeout", str(int(2 * self.stall_timeout * 1e6))) if self.endless else ()
        decoder = FfmpegDecoder(self.url, self.sample_rate, self.channels, opts)
        decoder.start()
        return decoder

    def _gave_up(self, attempt: int) -> bool:
        return self.max_reconnects is not None and attempt > self.max_reconnects

    def _giving_up(self, reason: str, attempts: int) -> StreamFailedError:
        return StreamFailedError(f"{self.url} failed ({reason}) and {attempts} reconnect attempt(s) did not bring it back", _FIX_URL)

    def _probe(self) -> tuple[int, int, bool]:
        """(rate, channels, endless) of the first audio stream, from ffprobe; the fallback without it."""
        ffprobe = shutil.which("ffprobe")
        if ffprobe is None:  # cannot tell a length: network URLs count as live
            return FALLBACK_RATE, FALLBACK_CHANNELS, not self.url.lower().startswith("file:")
        cmd = [ffprobe, "-v", "error", "-rw_timeout", str(int(PROBE_TIMEOUT * 1e6)), "-select_streams", "a:0",
               "-show_entries", "stream=sample_rate,channels:format=duration", "-of", "json", self.url]
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise StreamFailedError(f"{self.url} did not answer within {PROBE_TIMEOUT:.0f} s", _FIX_URL) from None
        if res.returncode != 0:
            raise StreamFailedError(f"ffmpeg cannot open {self.url}: {_last_line(res.stderr)}", _FIX_URL)
        info = json.loads(res.stdout or b"{}")
        streams = info.get("streams") or []
        if not streams:
            raise StreamFailedError(f"{self.url} has no audio stream", "Pass a URL that carries audio")
        endless = (info.get("format") or {}).get("duration") in (None, "N/A")
        return int(streams[0].get("sample_rate", FALLBACK_RATE)), int(streams[0].get("channels", FALLBACK_CHANNELS)), endless

    def blocks(self) -> Iterator[np.ndarray]:
        if self._decoder is None:
            raise RuntimeError("UrlSource.open() was not called")
        block = max(1, int(self.block_seconds * self.sample_rate))
        if not self.endless:
            yield from self._decoder.blocks(block, self._stop)
            return
        attempt, lost_at, reason = 0, None, ""
        last_audio = time.monotonic()
        while True:
            try:
                for data in self._decoder.blocks(block, self._stop, self.stall_timeout):
                    if lost_at is not None:
                        self.notices.append(Notice("recovered", self.frames_in, {
                            "attempt": attempt, "reason": reason, "missed_s": round(time.monotonic() - lost_at, 3)}))
                        attempt, lost_at = 0, None
                    yield data
                    last_audio = time.monotonic()
                why = "the stream ended"
            except StreamStalled as exc:
                why = f"stalled: {exc}"
                self.notices.append(Notice("stall", self.frames_in, {"seconds": self.stall_timeout, "attempt": attempt}))
            except StreamFailedError as exc:
                why = exc.problem
            if self._stop.is_set():
                return
            if self.reconnect is False:
                raise StreamFailedError(f"Live stream {self.url} broke off ({why})", "Restart it, or leave out --no-reconnect to reconnect")
            attempt += 1
            if self._gave_up(attempt):
                raise self._giving_up(reason or why, attempt - 1)
            delay = backoff(attempt)
            if lost_at is None:
                lost_at, reason = last_audio, why
                self.notices.append(Notice("lost", self.frames_in, {"attempt": 0, "reason": why, "retry_in_s": round(delay, 2)}))
            else:
                self.notices.append(Notice("failed", self.frames_in, {"attempt": attempt - 1, "reason": why, "retry_in_s": round(delay, 2)}))
            if self._stop.wait(delay):
                return
            self._decoder.close()
            self._decoder = self._new_decoder()

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
