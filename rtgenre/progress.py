"""Progress bars on stderr for long offline work (``classify``, ``eval``, ``train``, caches, corpora).

One small object, :class:`WorkProgress`, shows a ``rich.progress`` bar with
the items done, the audio hours done and the time left.  It is shown only
when a person watches a terminal that nothing else writes to:

* stderr is a terminal, and
* stdout is not a pipe or socket (there a consumer, e.g. ``| jq``, owns the
  terminal), and
* JSON Lines do not go to the terminal itself (the bar would draw over them).

Otherwise every method is a no-op, so callers never branch on it.  While the
bar is shown, ``print()`` to stderr (and to stdout when a terminal) appears above it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import TracebackType
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

__all__ = ["WorkProgress", "audio_seconds", "progress_wanted"]

T = TypeVar("T")


def _is_pipe(stream) -> bool:
    """True when ``stream`` is a pipe or a socket (a consumer reads it)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_wanted(json_output: bool = False) -> bool:
    """Whether a progress bar may be drawn on stderr now.

    Parameters
    ----------
    json_output : bool
        The command writes JSON Lines to stdout (``--json``, or ``classify``
        with stdout not a terminal).
    """
    if not _isatty(sys.stderr) or _is_pipe(sys.stdout):
        return False
    return not (json_output and _isatty(sys.stdout))


def audio_seconds(path: str | Path) -> float | None:
    """Duration of an audio file from its header, or ``None`` when the header does not say."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError):
        return None
    return float(info.frames) / info.samplerate if info.samplerate and info.frames > 0 else None


class _AudioColumn(ProgressColumn):
    """``0.42/1.30 h audio``: audio hours done (of the total when known)."""

    def render(self, task: Task) -> Text:
        done, total = task.fields.get("audio_done", 0.0), task.fields.get("audio_total")
        if done <= 0 and not total:
            return Text("")
        text = f"{done / 3600:.2f}" + (f"/{total / 3600:.2f}" if total else "") + " h audio"
        return Text(text, style="progress.data.speed")


class _ItemsColumn(ProgressColumn):
    """``12/169 files`` (the bar itself may count audio seconds instead)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.fields['items_done']}/{task.fields['items_total']} {task.fields['unit']}", style="progress.download")


class WorkProgress:
    """A progress bar over a known number of items, used as a context manager.

    Parameters
    ----------
    description : str
        What is being done (``"eval"``, ``"caching games"``...).
    total : int
        Number of items (files, tracks, steps).
    unit : str
        Name of an item, plural (``"files"``).
    seconds : iterable of float or None, optional
        Audio seconds of each item, ``None`` where unknown; read only when the
        bar is shown (a generator of :func:`audio_seconds` costs nothing
        otherwise).  When all are known the bar and the time left follow audio
        seconds instead of items, and the audio column shows the total.
    json_output : bool
        The command writes JSON Lines to stdout (see :func:`progress_wanted`).
    enabled : bool, optional
        Force the bar on or off (default: :func:`progress_wanted`).
    """

    def __init__(self, description: str, total: int, unit: str = "files", *, seconds: Iterable[float | None] | None = None,
                 json_output: bool = False, enabled: bool | None = None) -> None:
        self.enabled = progress_wanted(json_output) if enabled is None else enabled
        self.description = description
        self.total = total
        self.unit = unit
        self._seconds = seconds
        self._secs: list[float | None] = []
        self.audio_total: float | None = None
        self._done = 0
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "WorkProgress":
        if self.enabled:
            self._secs = [] if self._seconds is None else list(self._seconds)  # read only when shown
            if self._secs and all(x is not None for x in self._secs):
                self.audio_total = float(sum(self._secs))  # type: ignore[arg-type]
            console = Console(file=sys.stderr, stderr=True)
            by_audio = bool(self.audio_total)
            columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), _ItemsColumn(), _AudioColumn(),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            self._progress = Progress(*columns, console=console, redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=self.audio_total if by_audio else self.total,
                audio_done=0.0, audio_total=self.audio_total, items_done=0, items_total=self.total, unit=self.unit,
            )
        return self

    def advance(self, items: int = 1, seconds: float | None = None) -> None:
        """Count ``items`` done; their audio seconds are ``seconds``, else those given for them at creation."""
        if self._progress is None:
            return
        if seconds is None:
            seconds = sum(x or 0.0 for x in self._secs[self._done:self._done + items])
        self._done += items
        task = self._progress.tasks[0]
        audio_done = task.fields["audio_done"] + seconds
        self._progress.update(self._task, advance=seconds if self.audio_total else items, items_done=self._done, audio_done=audio_done)

    def add_audio(self, seconds: float) -> None:
        """Count ``seconds`` of audio done (read or produced) without finishing an item."""
        if self._progress is not None:
            self._progress.update(self._task, audio_done=self._progress.tasks[0].fields["audio_done"] + seconds)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting each one done when the loop body has run for it (also on ``continue``)."""
        for item in items:
            yield item
            self.advance()

    def describe(self, description: str) -> None:
        """Change the text before the bar (e.g. the current corpus or epoch)."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
