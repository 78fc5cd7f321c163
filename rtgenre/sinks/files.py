"""One JSON Lines file per feed (``--out-dir DIR``), appended, reopened on request for log rotation.

Each feed's events go to ``DIR/<stream>.jsonl`` in the same form as on
stdout (:class:`~rtgenre.sinks.jsonl.JsonLinesSink`).  :meth:`FeedFiles.reopen`
(called from the SIGUSR1 handler, so it only bumps a counter) makes the sink
thread close and reopen every file before its next write (a write error
is the bus's to report, like any output's): after
``logrotate`` renamed a file, the lines up to the reopen land in the renamed
file and the rest in the new one, so a rotation loses no line.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from rtgenre.errors import UsageError
from rtgenre.events import Event
from rtgenre.sinks.base import Sink
from rtgenre.sinks.jsonl import JsonLinesSink


class FeedFiles(Sink):
    """Appends each stream's events to its own file.

    Parameters
    ----------
    directory : path
        Created if missing.
    streams : iterable of str
        The feed names; their files are opened (created) at once, so that an
        unwritable folder is reported before the run starts.

    Raises
    ------
    UsageError
        The folder or a file cannot be created or written.
    """

    def __init__(self, directory: str | Path, streams: list[str]) -> None:
        self.directory = Path(directory)
        self.reopens = 0
        self._requested = 0
        self._files: dict[str, BinaryIO] = {}
        self._writers: dict[str, JsonLinesSink] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in streams:
                self._open(name)
        except OSError as e:
            self.close()
            raise UsageError(f"Cannot write to --out-dir {self.directory} ({e.strerror or e})", "Pass a folder this user can write to") from None

    def path(self, stream: str) -> Path:
        return self.directory / f"{stream}.jsonl"

    def reopen(self) -> None:
        """Ask for every file to be reopened before the next write (safe in a signal handler)."""
        self._requested += 1

    def handle(self, event: Event) -> None:
        if self._requested != self.reopens:
            self.reopens = self._requested
            self.close()  # each file is reopened at its stream's next event
        writer = self._writers.get(event.stream) or self._open(event.stream)
        writer.handle(event)

    def _open(self, name: str) -> JsonLinesSink:
        f = open(self.path(name), "ab")
        self._files[name] = f
        self._writers[name] = JsonLinesSink(f)
        return self._writers[name]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._writers.clear()
