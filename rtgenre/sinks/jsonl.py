"""JSON Lines sink: one event object per line on a byte stream, flushed per event.

By default the lines go straight to file descriptor 1 with ``os.write`` (no
Python buffer, hence no buffer lock that a writer blocked on a stalled reader
could hold when the process exits).  Write errors propagate as ``OSError``
(``BrokenPipeError`` when the reader left); the sink runner decides.
"""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

from rtgenre.events import Event
from rtgenre.sinks.base import Sink


class JsonLinesSink(Sink):
    """Writes events as JSON Lines.

    ``latency_ms`` of a ``prediction`` is measured here, at the moment the
    line is written: from the arrival of the window's last sample
    (``Event.arrival``, monotonic seconds) to the write.

    Parameters
    ----------
    stream : binary file, optional
        Defaults to standard output: its file descriptor, written unbuffered
        (``sys.stdout.buffer`` when ``sys.stdout`` was replaced).
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        if stream is None:
            # the process's own stdout is written straight to its descriptor; a replaced sys.stdout (a test, an embedding program) is used as it is
            stream = _FdWriter(1) if sys.stdout is None or sys.stdout is sys.__stdout__ else sys.stdout.buffer
        self.stream = stream

    def handle(self, event: Event) -> None:
        if event.arrival is not None:
            event = event.with_data(latency_ms=round((time.monotonic() - event.arrival) * 1000.0, 3))
        try:
            self.stream.write(event.to_json().encode("utf-8", "backslashreplace") + b"\n")
            self.stream.flush()
        except BrokenPipeError:
            self._detach()
            raise

    def close(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._detach()
            raise

    def _detach(self) -> None:
        """After a broken pipe, point the stream's descriptor at /dev/null so that
        interpreter shutdown cannot fail flushing it (and exit non-zero)."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


class _FdWriter:
    """Unbuffered whole writes to a file descriptor (what :class:`JsonLinesSink` needs of a stream)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)

    def flush(self) -> None:
        pass
