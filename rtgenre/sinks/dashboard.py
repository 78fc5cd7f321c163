"""Live terminal dashboard: a sink that draws the event stream with rich.

The dashboard owns what a person sees while ``rtgenre listen`` runs on a
terminal and nothing else: it reads the same :class:`~rtgenre.events.Event`
objects as the JSON Lines writer and does no analysis.  Three small parts:

:class:`DashboardState`
    What the latest events say (decided labels, level, latency history,
    overruns, the genre timeline, the event log); ``process(event)`` /
    ``reset()``.
:class:`DashboardView`
    Turns a state into one rich renderable for a terminal size.  The layout
    tree is built once per size class and only its leaves are replaced.
:class:`Dashboard`
    The :class:`~rtgenre.sinks.base.Sink`: a rich ``Live`` on the alternate
    screen, redrawn by a painter thread only when new data arrived or the
    terminal was resized (at most ``refresh_per_second``), and a
    :class:`KeyReader` that calls ``on_quit`` when ``q`` is pressed.
"""

from __future__ import annotations

import math
import os
import select
import string
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rtgenre.events import Event
from rtgenre.sinks.base import Sink

#: Distinct colours for genres, assigned by the genre's index in the model's label list.
PALETTE = (
    "bright_blue", "bright_green", "bright_magenta", "bright_yellow", "bright_cyan", "bright_red",
    "dark_orange", "medium_purple", "spring_green2", "deep_pink2", "gold3", "steel_blue1",
    "orchid", "chartreuse3", "light_salmon1", "turquoise2",
)
#: Timeline cell of a window whose content was speech (music heads held).
TALK = "\x00talk"
#: Audio seconds a notice stays on the status line (an error stays until the next one).
NOTICE_S = 20.0
#: Level meter range in dBFS.
METER_FLOOR_DB = -60.0
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` with eighth-block resolution."""
    if width <= 0:
        return ""
    eighths = int(round(min(max(fraction, 0.0), 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    s = int(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _scale(width: int, step_db: int = 12) -> str:
    """dB tick labels under a ``width``-cell meter from :data:`METER_FLOOR_DB` to 0 dBFS."""
    cells = [" "] * (width + 4)
    for db in range(int(METER_FLOOR_DB), 1, step_db):
        label = str(db)
        pos = min(int(round((db - METER_FLOOR_DB) / -METER_FLOOR_DB * width)), width + 4 - len(label))
        if all(c == " " for c in cells[max(0, pos - 1):pos + len(label)]):
            cells[pos:pos + len(label)] = label
    return "".join(cells).rstrip()


def _db(x: float | None) -> str:
    """A dB figure with one decimal, ``—`` when unknown."""
    return "—" if x is None else f"{float(x):.1f}"


def _note(n: int) -> str:
    """MIDI note number → name with octave (60 → ``C4``)."""
    return f"{NOTE_NAMES[n % 12]}{n // 12 - 1}"


def _symbols(labels: list[str]) -> dict[str, str]:
    """One distinct character per label for the timeline when colours are off.

    The label's first letter not yet taken (upper case first), else any free letter or digit.
    """
    taken: set[str] = set()
    out: dict[str, str] = {}
    for label in labels:
        candidates = [c for c in label.upper() + label.lower() if c.isalnum()] + list(string.ascii_uppercase + string.digits)
        sym = next((c for c in candidates if c not in taken), "?")
        taken.add(sym)
        out[label] = sym
    return out


@dataclass
class LogEntry:
    """One line of the event log."""

    t: float
    text: str
    style: str = ""


class DashboardState:
    """What the dashboard shows, updated one event at a time.

    Parameters
    ----------
    history_s : float
        Seconds of dominant-genre history kept for the timeline.
    log_size : int
        Lines kept in the event log.
    latency_size : int
        Recent predictions whose latency feeds the p50/p99 figures.
    """

    def __init__(self, history_s: float = 300.0, log_size: int = 12, latency_size: int = 240) -> None:
        self.history_s = history_s
        self.log_size = log_size
        self.latency_size = latency_size
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new stream starts)."""
        self.start: dict[str, Any] = {}
        self.started_at: float | None = None
        self.now: float = 0.0
        self.t = 0.0
        self.labels: dict[str, list[str]] = {}
        self.colors: dict[str, str] = {}
        self.symbols: dict[str, str] = {}
        self.heads: dict[str, dict[str, Any]] = {}
        self.decided: dict[str, str] = {}
        self.level_dbfs: float | None = None
        self.peak_dbfs: float | None = None
        self.clipped = False
        self.silent_since: float | None = None
        self.content: dict[str, Any] | None = None
        self.talking = False
        self.latencies: deque[float] = deque(maxlen=self.latency_size)
        self.predictions = 0
        self.overruns = 0
        self.dropped_samples = 0
        self.midi: dict[str, Any] | None = None
        self.similar: list[dict[str, Any]] | None = None
        self.timeline: deque[str | None] = deque(maxlen=self._timeline_len(0.5))
        self.status: LogEntry | None = None
        self.status_until = math.inf
        self.log: deque[LogEntry] = deque(maxlen=self.log_size)
        self.stopped: str | None = None

    def _timeline_len(self, hop_s: float) -> int:
        return max(1, int(math.ceil(self.history_s / hop_s)))

    def process(self, event: Event, now: float) -> None:
        """Take one event into account.

        Parameters
        ----------
        event : Event
        now : float
            ``time.monotonic()`` when the sink received it (for latency and uptime).
        """
        self.now = now
        self.t = max(self.t, event.t)
        d = event.data
        kind = event.kind
        if kind == "start":
            self._on_start(event, now)
        elif kind == "prediction":
            self._on_prediction(event, now)
        elif kind == "silence":
            if self.silent_since is None:
                self.silent_since = float(d.get("since", event.t))
                self._log(event.t, f"silence ({_db(d.get('level_dbfs'))} dBFS)", "dim")
            self.level_dbfs, self.peak_dbfs = d.get("level_dbfs"), d.get("peak_dbfs", self.peak_dbfs)
            self.clipped = False
            self.timeline.append(None)
        elif kind in ("talk", "music"):
            was = f" ({d['from']} for {_clock(d['previous_s'])})" if d.get("previous_s") is not None else ""
            self._log(float(d.get("since", event.t)), f"{kind}{was}", "bold")
        elif kind == "change":
            self.decided[str(d.get("head"))] = str(d.get("to"))
            self._log(event.t, f"{d.get('head')}: {d.get('from') or '—'} → {d.get('to')} ({d.get('p', 0.0):.2f})", "bold")
        elif kind == "overrun":
            self.overruns += 1
            self.dropped_samples = int(d.get("total_dropped_samples", self.dropped_samples + d.get("dropped_samples", 0)))
            self._log(event.t, f"overrun: {d.get('dropped_samples', 0)} samples dropped", "yellow")
        elif kind == "midi":
            self.midi = d.get("midi")
        elif kind == "stall":
            self._log(event.t, f"stall: no audio for {d.get('seconds')} s", "yellow")
        elif kind == "reconnect":
            status = d.get("status")
            if status == "recovered":
                self._log(event.t, f"reconnected (attempt {d.get('attempt')}, {d.get('missed_s', 0):.1f} s missed)", "green")
            else:
                self._log(event.t, f"stream {status}: {d.get('reason', '')}; retrying in {d.get('retry_in_s', 0):.1f} s", "yellow")
        elif kind == "error":
            style = "bold red" if d.get("fatal") else "red"
            entry = self._log(event.t, f"error {d.get('code', '?')}: {d.get('message', '')}", style)
            self.status, self.status_until = entry, math.inf
        elif kind == "stop":
            self.stopped = str(d.get("reason", "stopped"))
            self._log(event.t, f"stopped: {self.stopped}", "bold")

    def _on_start(self, event: Event, now: float) -> None:
        self.reset()
        self.now = now
        self.started_at = now
        self.start = dict(event.data)
        self.labels = {k: list(v) for k, v in self.start.get("labels", {}).items()}
        genres = self.labels.get("genre", [])
        self.colors = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(genres)}
        self.symbols = _symbols(genres)
        self.timeline = deque(maxlen=self._timeline_len(float(self.start.get("hop_s") or 0.5)))
        self._log(event.t, f"start: {self.start.get('source', '?')}")
        notice = self.start.get("engine_notice")
        if notice:
            self.status = self._log(event.t, f"notice: {notice}", "yellow")
            self.status_until = event.t + NOTICE_S

    def _on_prediction(self, event: Event, now: float) -> None:
        d = event.data
        self.predictions += 1
        self.content = d.get("content")
        self.talking = self.content is not None and not d.get("heads")  # talk: the music heads are held, not reported
        if not self.talking:
            self.heads = dict(d.get("heads", {}))
        self.level_dbfs, self.peak_dbfs = d.get("level_dbfs"), d.get("peak_dbfs")
        self.clipped = bool(d.get("clipped", False))
        if self.silent_since is not None:
            self._log(event.t, "sound again", "dim")
            self.silent_since = None
        if event.arrival is not None:
            self.latencies.append((now - event.arrival) * 1000.0)
        elif d.get("latency_ms") is not None:
            self.latencies.append(float(d["latency_ms"]))
        if "midi" in d:
            self.midi = d["midi"]
        if "similar" in d:
            self.similar = d["similar"]
        genre = self.heads.get("genre")
        self.timeline.append(TALK if self.talking else genre.get("top") if genre else None)

    def _log(self, t: float, text: str, style: str = "") -> LogEntry:
        entry = LogEntry(t, text, style)
        self.log.append(entry)
        return entry

    def top(self, name: str) -> tuple[str, float] | None:
        """A single-label head's label and smoothed probability as the event log has it.

        The label is the decided one (the last ``change`` event's ``to``: the
        smoother's hysteresis), not the window's argmax; before the first
        ``change`` it is the prediction's ``top``.  ``None`` before any prediction.
        """
        head = self.heads.get(name)
        if head is None:
            return None
        label = self.decided.get(name) or str(head.get("top", "?"))
        return label, float(head.get("probs", {}).get(label, head.get("p", 0.0)))

    def latency_percentiles(self) -> tuple[float, float] | None:
        """p50 and p99 of the recent latencies in ms, or ``None`` before the first prediction."""
        if not self.latencies:
            return None
        p50, p99 = np.percentile(np.fromiter(self.latencies, float), [50, 99])
        return float(p50), float(p99)

    @property
    def uptime(self) -> float:
        """Seconds from the ``start`` event to the latest event."""
        return 0.0 if self.started_at is None else self.now - self.started_at

    def color(self, genre: str | None) -> str:
        """The genre's colour: fixed by its index in the model's genre labels."""
        return self.colors.get(genre or "", "white")


@dataclass(frozen=True)
class _Plan:
    """Row sizes of one size class (0 = section left out)."""

    size: str          # "tiny", "compact" or "large"
    main: int          # genre | mood + instruments
    mood: int
    timeline_rows: int
    meters: int
    bottom: int        # MIDI | sounds like | event log
    midi: bool
    similar: bool = False


def _plan(width: int, height: int, has_midi: bool, has_similar: bool = False) -> _Plan:
    """Choose the sections that fit ``width`` × ``height``."""
    if width < 60 or height < 20:
        return _Plan("tiny", 0, 0, 0, 0, 0, has_midi, has_similar)
    if width >= 100 and height >= 32:
        main = min(18, 12 + (height - 32) // 2)
        rows = max(1, min(6, (height - 30) // 2))
        meters = 6
        bottom = height - 2 - main - (rows + 3) - meters
        return _Plan("large", main, 6, rows, meters, bottom, has_midi, has_similar)
    spare = height - 24
    rows = 1 + max(0, min(2, spare // 3))
    bottom = height - 2 - 8 - (rows + 3) - 4
    if bottom < 3:  # no room for the event log: the timeline takes the rows
        rows, bottom = rows + bottom, 0
    return _Plan("compact", 8, 3, rows, 4, bottom, has_midi, has_similar)


class DashboardView:
    """Turns a :class:`DashboardState` into a renderable for a terminal size.

    Parameters
    ----------
    console : Console
        The dashboard's console; its ``no_color`` decides timeline symbols vs colours.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._layouts: dict[_Plan, Layout] = {}

    @property
    def colorless(self) -> bool:
        """True when the console shows no colours (``--no-color``, ``NO_COLOR``, dumb terminal)."""
        return self.console.no_color or self.console.color_system is None

    def render(self, s: DashboardState, width: int, height: int) -> RenderableType:
        """One frame for a ``width`` × ``height`` terminal."""
        plan = _plan(width, height, s.midi is not None, s.similar is not None)
        if plan.size == "tiny":
            return self._tiny(s, width)
        layout = self._layouts.get(plan)
        if layout is None:
            layout = self._layouts[plan] = self._build(plan)
        large = plan.size == "large"
        inner_main = plan.main - 2
        genre_w = width * 11 // 20 - 4
        side_w = width - width * 11 // 20 - 4
        half_w = width // 2 - 4
        layout["header"].update(self._header(s))
        layout["genre"].update(self._genre(s, inner_main, genre_w, large))
        layout["mood"].update(self._mood(s, plan.mood - 2, side_w))
        layout["instruments"].update(self._instruments(s, plan.main - plan.mood - 2, side_w))
        layout["timeline"].update(self._timeline(s, width - 4, plan.timeline_rows))
        layout["level"].update(self._level(s, plan.meters - 2, half_w))
        layout["health"].update(self._health(s, plan.meters - 2, width - width // 2 - 4))
        if plan.bottom:
            if plan.midi:
                layout["midi"].update(self._midi(s, plan.bottom - 2))
            if plan.similar:
                layout["similar"].update(self._similar(s, plan.bottom - 2))
            layout["log"].update(self._log(s, plan.bottom - 2))
        layout["status"].update(self._status(s))
        return layout

    # -- layout -------------------------------------------------------------

    @staticmethod
    def _build(plan: _Plan) -> Layout:
        root = Layout(name="root")
        main = Layout(name="main", size=plan.main)
        main.split_row(Layout(name="genre", ratio=11), Layout(name="side", ratio=9))
        main["side"].split_column(Layout(name="mood", size=plan.mood), Layout(name="instruments"))
        meters = Layout(name="meters", size=plan.meters)
        meters.split_row(Layout(name="level", ratio=1), Layout(name="health", ratio=1))
        bottom = Layout(name="bottom", size=plan.bottom)
        bottom.split_row(*[Layout(name=n, ratio=1) for n, shown in (("midi", plan.midi), ("similar", plan.similar), ("log", True)) if shown])
        rows = [Layout(name="header", size=1), main, Layout(name="timeline", size=plan.timeline_rows + 3), meters]
        root.split_column(*rows, *([bottom] if plan.bottom else []), Layout(name="status", size=1))
        return root

    # -- sections -----------------------------------------------------------

    def _header(self, s: DashboardState) -> RenderableType:
        st = s.start
        parts = ["[b]rtgenre[/]"]
        if "model" in st:
            parts.append(f"{st['model']} {st.get('model_version', '')}".strip())
            parts.append(str(st.get("engine", "?")))
            parts.append(f"{float(st.get('sample_rate') or 0) / 1000:g} kHz")
        elif st:
            parts.append("MIDI only")
        if st:
            parts.append(f"hop {st.get('hop_s', 0):g} s")
        parts.append(f"up {_clock(s.uptime)}")
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(Text.from_markup(" · ".join(parts)), Text(" q quit", style="dim"))
        return grid

    def _genre(self, s: DashboardState, rows: int, width: int, large: bool) -> RenderableType:
        head = s.heads.get("genre")
        lines: list[RenderableType] = []
        if head is None:
            if "genre" in s.labels or not s.start:
                waiting = "waiting for the first window…"
            else:
                waiting = "no audio input (MIDI only)" if "model" not in s.start else "model has no genre head"
            lines.append(Text(waiting, style="dim"))
        else:
            top, p = s.top("genre")
            big = Text(f" {' '.join(top.upper())} ", style=f"bold black on {s.color(top)}" if not self.colorless else "bold reverse")
            big.append(f"  {p:.0%}", style="bold")
            if s.silent_since is not None:
                big.append("  (silence)", style="dim")
            elif s.talking:
                big.append("  (talk)", style="dim")
            if large:
                pad = Text(" " * (len(top) * 2 + 1), style=f"on {s.color(top)}" if not self.colorless else "reverse")
                lines += [pad, big, pad, Text("")]
            else:
                lines.append(big)
            n = max(0, rows - len(lines))
            lines += self._bars(head.get("probs", {}), n, width, s.color, label_w=12)
        return Panel(Group(*lines), title=self._content_title(s), title_align="left", padding=(0, 1))

    @staticmethod
    def _content_title(s: DashboardState) -> str:
        """``genre``, with the content state when the model has a content head (``genre · TALK speech 91%``)."""
        c = s.content
        if c is None or s.silent_since is not None:
            return "genre"
        return f"genre · {'TALK ' if s.talking else ''}{c.get('top', '?')} {float(c.get('p', 0.0)):.0%}"

    def _bars(self, probs: dict[str, float], n: int, width: int, color: Callable[[str], str] | None, label_w: int, present: list[str] | None = None) -> list[Text]:
        """The ``n`` most probable labels as ``label ████▌ 62%`` lines, ``width`` cells wide.

        With ``present`` (a multilabel head), labels over the threshold are marked ``●`` and bold.
        """
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])[:n]
        bar_w = max(4, width - label_w - 6 - (0 if present is None else 2))
        out = []
        for label, p in ranked:
            line = Text(no_wrap=True, overflow="crop")
            mark = "" if present is None else ("● " if label in present else "○ ")
            style = "bold" if present and label in present else ("dim" if present is not None else "")
            line.append(f"{mark}{label[:label_w]:<{label_w}} ", style=style)
            line.append(_bar(p, bar_w), style=color(label) if color else ("green" if style == "bold" else "grey50"))
            line.append(f" {p:4.0%}")
            out.append(line)
        return out

    def _mood(self, s: DashboardState, rows: int, width: int) -> RenderableType:
        head = s.heads.get("mood")
        combined = (s.midi or {}).get("combined_mood")
        lines: list[RenderableType] = []
        line = Text(no_wrap=True, overflow="ellipsis")
        if head is not None:
            label, p = s.top("mood")
            line.append(label, style="bold")
            line.append(f" {p:.0%}")
        elif s.midi and (s.midi.get("mood") or {}).get("top"):
            line.append(str(s.midi["mood"].get("top", "?")), style="bold")
            line.append(f" {float(s.midi['mood'].get('p', 0.0)):.0%} (MIDI)")
        else:
            line.append("—", style="dim")
        if combined and combined.get("top"):
            line.append("  audio+MIDI ", style="dim")
            line.append(str(combined.get("top", "?")), style="bold")
            line.append(f" {float(combined.get('p', 0.0)):.0%}")
        lines.append(line)
        if head is not None and rows > 1:
            lines += self._bars(head.get("probs", {}), rows - 1, width, None, label_w=10)
        return Panel(Group(*lines), title="mood", title_align="left", padding=(0, 1))

    def _instruments(self, s: DashboardState, rows: int, width: int) -> RenderableType:
        head = s.heads.get("instruments")
        if head is None:
            body: RenderableType = Text("—", style="dim")
        else:
            body = Group(*self._bars(head.get("probs", {}), rows, width, None, label_w=10, present=list(head.get("present", []))))
        return Panel(body, title="instruments", title_align="left", padding=(0, 1))

    def _timeline(self, s: DashboardState, width: int, rows: int) -> RenderableType:
        width = max(1, width)
        cells = list(s.timeline)[-width * rows:]
        hop = float(s.start.get("hop_s") or 0.5)
        strip = Text(no_wrap=True, overflow="crop")
        for r in range(rows):
            for genre, run in groupby(cells[r * width:(r + 1) * width]):
                strip.append(self._cells(s, genre, sum(1 for _ in run)))
            if r < rows - 1:
                strip.append("\n")
        legend = Text(no_wrap=True, overflow="ellipsis")
        seen = [g for g in dict.fromkeys(reversed(cells)) if g is not None and g != TALK]
        for g in seen:
            legend.append(self._cells(s, g, 1))
            legend.append(f" {g}  ")
        if any(c is None for c in cells):
            legend.append(self._cells(s, None, 1))
            legend.append(" silence")
        if TALK in cells:
            legend.append(self._cells(s, TALK, 1))
            legend.append(" talk")
        title = f"timeline · last {_clock(len(cells) * hop)}"
        return Panel(Group(strip, legend), title=title, title_align="left", padding=(0, 1))

    def _cells(self, s: DashboardState, genre: str | None, n: int) -> Text:
        if genre is None:
            return Text("·" * n, style="dim")
        if genre == TALK:
            return Text(("~" if self.colorless else "░") * n, style="dim")
        if self.colorless:
            return Text(s.symbols.get(genre, "?") * n)
        return Text("█" * n, style=s.color(genre))

    def _level(self, s: DashboardState, rows: int, width: int) -> RenderableType:
        """RMS and peak meters; clipping and silence as badges in the title."""
        bar_w = max(6, width - 17)
        lines: list[Text] = []
        for name, db in (("RMS ", s.level_dbfs), ("peak", s.peak_dbfs)):
            line = Text(no_wrap=True, overflow="crop")
            line.append(f"{name} ")
            if db is None:
                line.append("—", style="dim")
            else:
                frac = (float(db) - METER_FLOOR_DB) / -METER_FLOOR_DB
                style = "red" if float(db) >= -1.0 else "yellow" if float(db) >= -12.0 else "green"
                line.append(_bar(frac, bar_w), style=style)
                line.append(f" {float(db):6.1f} dBFS")
            lines.append(line)
        if rows >= 3:
            lines.append(Text(" " * 5 + _scale(bar_w), style="dim", no_wrap=True, overflow="crop"))
        title = Text("level")
        if s.clipped:
            title.append(" ")
            title.append(" CLIP ", style="bold white on red" if not self.colorless else "bold reverse")
        if s.silent_since is not None:
            title.append(f" silence since {_clock(s.silent_since)}", style="bold")
        return Panel(Group(*lines[:max(rows, 1)]), title=title, title_align="left", padding=(0, 1))

    def _health(self, s: DashboardState, rows: int, width: int) -> RenderableType:
        st = s.start
        lat = s.latency_percentiles()
        lat_text = "latency —" if lat is None else f"latency p50 {lat[0]:.0f} ms · p99 {lat[1]:.0f} ms"
        if len(lat_text) > width:
            lat_text = lat_text.replace("latency ", "")
        over = f"overruns {s.overruns} ({s.dropped_samples} samples)"
        lines = [lat_text, over]
        if rows >= 3:
            rate = st.get("source_rate")
            lines.append(f"{st.get('engine_detail') or st.get('engine', '?')}")
            lines.append(f"{rate or '?'} Hz → {st.get('sample_rate', '?')} Hz · {st.get('channels', '?')} ch · hop {st.get('hop_s', 0):g} s")
        text = Text("\n".join(lines[:max(rows, 1)]), no_wrap=True, overflow="ellipsis")
        style = "yellow" if s.overruns else ""
        return Panel(text, title="health", title_align="left", padding=(0, 1), border_style=style)

    def _midi(self, s: DashboardState, rows: int) -> RenderableType:
        m = s.midi or {}
        key = m.get("key")
        key_t = f"key {key} {float(m.get('key_confidence') or 0):.0%}" if key else "key —"
        tempo = m.get("tempo_bpm")
        tempo_t = f"{float(tempo):.0f} bpm ({m.get('tempo_source')})" if tempo else "tempo —"
        rng = m.get("pitch_range")
        rng_t = f" · {_note(int(rng[0]))}–{_note(int(rng[1]))}" if rng else ""
        fam = sorted((m.get("families") or {}).items(), key=lambda kv: -kv[1])[:3]
        mood = m.get("mood") or {}
        lines = [
            f"{key_t} · {tempo_t}",
            f"{float(m.get('notes_per_s') or 0):.1f} notes/s · poly {float(m.get('polyphony_mean') or 0):.1f}/{m.get('polyphony_max', 0)}{rng_t}",
            "families " + (" ".join(f"{f} {v:.0%}" for f, v in fam) or "—"),
            f"mood {mood.get('top') or '—'} {float(mood.get('p') or 0):.0%} · sustain {float(m.get('sustain') or 0):.0%}",
            f"vel {float(m.get('velocity_mean') or 0):.0f}±{float(m.get('velocity_std') or 0):.0f} · notes {m.get('notes', 0)} · bad {m.get('malformed', 0)} · lost {m.get('dropped', 0)}",
        ]
        text = Text("\n".join(lines[:max(rows, 1)]), no_wrap=True, overflow="ellipsis")
        return Panel(text, title=f"MIDI {m.get('port') or ''}".strip(), title_align="left", padding=(0, 1))

    def _similar(self, s: DashboardState, rows: int) -> RenderableType:
        text = Text(no_wrap=True, overflow="ellipsis")
        entries = (s.similar or [])[:max(rows, 1)]
        for i, m in enumerate(entries):
            genre = (m.get("labels") or {}).get("genre") or ""
            text.append(f"{m.get('distance', '?'):>3} ", style="dim")
            text.append(Path(str(m.get("path", "?"))).name, style="bold" if i == 0 else "")
            text.append(f" {_clock(float(m.get('segment') or 0))} {genre}", style="dim")
            if i < len(entries) - 1:
                text.append("\n")
        if not entries:
            text.append("— (empty library)", style="dim")
        return Panel(text, title="sounds like", title_align="left", padding=(0, 1))

    def _log(self, s: DashboardState, rows: int) -> RenderableType:
        text = Text(no_wrap=True, overflow="ellipsis")
        entries = list(s.log)[-max(rows, 1):]
        for i, e in enumerate(entries):
            text.append(f"{_clock(e.t):>7} ", style="dim")
            text.append(e.text, style=e.style)
            if i < len(entries) - 1:
                text.append("\n")
        return Panel(text, title="events", title_align="left", padding=(0, 1))

    def _status(self, s: DashboardState) -> RenderableType:
        if s.stopped is not None:
            return Text(f" stopped: {s.stopped}", style="bold", no_wrap=True, overflow="ellipsis")
        if s.status is not None and s.t <= s.status_until:
            return Text(f" {s.status.text}", style=s.status.style, no_wrap=True, overflow="ellipsis")
        st = s.start
        if not st:
            return Text(" starting…", style="dim")
        fmt = f" ({st['source_rate']} Hz, {st.get('channels', '?')} ch)" if "source_rate" in st else ""
        src = f" listening: {st.get('source', '?')}{fmt} · t {_clock(s.t)}"
        return Text(src, style="dim", no_wrap=True, overflow="ellipsis")

    def _tiny(self, s: DashboardState, width: int) -> RenderableType:
        """Terminals under 60×20: one line per essential."""
        def top(name: str) -> str:
            h = s.heads.get(name)
            if h is None:
                return "—"
            if "present" in h:
                return ", ".join(h["present"]) or "none"
            label, p = s.top(name)
            return f"{label} {p:.0%}"
        lat = s.latency_percentiles()
        level = f"{_db(s.level_dbfs)}/{_db(s.peak_dbfs)} dBFS"
        lines = [
            Text("rtgenre · q quit", style="bold"),
            Text(f"genre {top('genre')}" + (" (talk)" if s.talking else ""), style="bold"),
            Text(f"mood {top('mood')}"),
            Text(f"instruments {top('instruments')}"),
            Text(f"level {level}" + (" CLIP" if s.clipped else "") + (" silence" if s.silent_since is not None else "")),
            Text("latency —" if lat is None else f"latency {lat[0]:.0f}/{lat[1]:.0f} ms · overruns {s.overruns}"),
            *([Text(f"like {Path(str(s.similar[0].get('path'))).name} ({s.similar[0].get('distance')})")] if s.similar else []),
            self._status(s),
        ]
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
        return Group(*lines)


class KeyReader:
    """Reads keys from a terminal; calls ``on_quit`` on ``q`` and ``on_key`` with any other key.

    While running, the terminal is in cbreak mode (keys arrive unbuffered and
    are not echoed; Ctrl-C still raises SIGINT).  :meth:`stop` restores the
    saved settings.  Does nothing when ``fd`` is not a terminal.

    Parameters
    ----------
    on_quit : callable
        Called (from the reader thread) each time ``q`` or ``Q`` is pressed.
    fd : int, optional
        File descriptor to read; defaults to standard input.
    on_key : callable, optional
        Called (from the reader thread) with the bytes of any other key, an
        escape sequence such as ``b"\\x1b[A"`` (arrow up) in one piece.
    """

    def __init__(self, on_quit: Callable[[], None], fd: int | None = None, on_key: Callable[[bytes], None] | None = None) -> None:
        self.on_quit = on_quit
        self.on_key = on_key
        self.fd = fd
        self._saved: list[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Enter cbreak mode and start the reader thread (no-op without a terminal)."""
        try:
            import termios
            import tty
        except ImportError:  # not a POSIX terminal: no key reading
            return
        fd = self.fd
        if fd is None:
            try:
                fd = sys.stdin.fileno()
            except (AttributeError, ValueError, OSError):
                return
        if not os.isatty(fd):
            return
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._run, name="dashboard-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.fd is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                key = os.read(self.fd, 16) if ready else b""
            except OSError:  # the terminal went away
                return
            if key in (b"q", b"Q"):
                self.on_quit()
            elif key and self.on_key is not None:
                self.on_key(key)

    def stop(self) -> None:
        """Stop the thread and restore the terminal settings."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:  # the terminal went away
                pass
            self._saved = None


class Dashboard(Sink):
    """Full-screen live dashboard of one stream's events.

    The ``Live`` display starts with the first event.  :meth:`handle` only
    updates the state; a painter thread redraws when new data arrived or the
    terminal was resized, at most ``refresh_per_second`` times a second.

    Parameters
    ----------
    console : Console
        Where to draw (built by the CLI with ``no_color`` from ``--no-color`` / ``NO_COLOR``).
    on_quit : callable
        Called when the user presses ``q``.
    history_s : float
        Seconds of genre history in the timeline.
    refresh_per_second : float
        Upper bound on redraws per second.
    clock : callable
        Seconds now, for uptime and latency (default ``time.monotonic``; a
        replay of recorded events passes their audio time).
    """

    def __init__(self, console: Console, *, on_quit: Callable[[], None], history_s: float = 300.0, refresh_per_second: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self.state = DashboardState(history_s)
        self.view = DashboardView(console)
        self.period = 1.0 / refresh_per_second
        self.keys = KeyReader(on_quit)
        self.frames = 0
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._live: Live | None = None
        self._painter: threading.Thread | None = None

    def handle(self, event: Event) -> None:
        with self._lock:
            self.state.process(event, self.clock())
        self._dirty.set()
        if self._live is None and not self._closed.is_set():
            self._start()

    def render(self) -> RenderableType:
        """One frame for the console's current size (also used by tests, without ``Live``)."""
        width, height = self.console.size
        with self._lock:
            return self.view.render(self.state, width, height)

    def _start(self) -> None:
        self._live = Live(console=self.console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        self.keys.start()
        self._painter = threading.Thread(target=self._paint, name="dashboard-paint", daemon=True)
        self._painter.start()

    def _paint(self) -> None:
        assert self._live is not None
        size = None
        while not self._closed.wait(self.period):
            if self._dirty.is_set() or self.console.size != size:
                self._dirty.clear()
                size = self.console.size
                self._live.update(self.render(), refresh=True)
                self.frames += 1

    def close(self) -> None:
        """Stop redrawing, leave the alternate screen, restore the terminal, print one summary line."""
        self._closed.set()
        try:
            if self._painter is not None:
                self._painter.join()
            if self._live is not None:
                self._live.stop()
        finally:
            self.keys.stop()
        if self._live is not None:
            self.console.print(self._farewell(), highlight=False, soft_wrap=True)

    def _farewell(self) -> Text:
        s = self.state
        genre = (s.top("genre") or (None,))[0]
        text = Text(f"rtgenre: {s.stopped or 'stopped'} after {_clock(s.uptime)} · {s.predictions} predictions")
        if genre:
            text.append(f" · last genre {genre}")
        if s.overruns:
            text.append(f" · {s.overruns} overruns ({s.dropped_samples} samples dropped)")
        return text
