"""Control-room dashboard of ``rtgenre monitor``: one row per feed, and any feed's detail view.

The overview shows, per feed: name, state (live / reconnecting / stalled /
ended, see :mod:`rtgenre.sinks.feedstate`), current genre and its smoothed
probability, mood, instrument families present (for a feed that ended with
an error: that error), a level meter, latency p99,
overruns and uptime; sorted by name or by state (trouble first), scrolled by
the selection and paged when the feeds do not fit.  Enter opens the selected
feed's detail view, which is the single-feed dashboard of ``listen``
(:class:`~rtgenre.sinks.dashboard.DashboardView` over that feed's own
:class:`~rtgenre.sinks.dashboard.DashboardState`); Esc goes back.

Keys: ``↑``/``↓`` or ``k``/``j`` select (in the detail view: previous / next
feed), ``PgUp``/``PgDn`` or ``space`` page, ``Enter`` detail, ``Esc``/``b``/
``Backspace`` back, ``s`` sort by name / state, ``q`` quit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.text import Text

from rtgenre.events import Event
from rtgenre.sinks.dashboard import METER_FLOOR_DB, Dashboard, DashboardState, DashboardView, KeyReader, _bar, _clock
from rtgenre.sinks.feedstate import STATES, next_state

#: Row style per state.
STATE_STYLE = {"live": "green", "starting": "cyan", "reconnecting": "bold yellow", "stalled": "bold red", "ended": "dim"}
#: Short state names for narrow terminals.
STATE_SHORT = {"live": "live", "starting": "start", "reconnecting": "recon", "stalled": "stall", "ended": "ended"}

KEYS_DOWN = {b"j", b"\x1b[B", b"\x1bOB"}
KEYS_UP = {b"k", b"\x1b[A", b"\x1bOA"}
KEYS_PAGE_DOWN = {b" ", b"\x1b[6~"}
KEYS_PAGE_UP = {b"\x1b[5~"}
KEYS_OPEN = {b"\r", b"\n"}
KEYS_BACK = {b"\x1b", b"b", b"\x7f", b"\x08"}
KEYS_SORT = {b"s"}


@dataclass
class FeedView:
    """One feed as the control room sees it: its single-feed state and its operational state."""

    name: str
    dash: DashboardState
    state: str = "starting"
    since: float = 0.0  # monotonic time the state was entered
    error: str | None = None  # the latest error event, shown in the row once the feed ended


class ControlRoomState:
    """All feeds' states, plus the selection, sort order and view (overview or detail)."""

    def __init__(self) -> None:
        self.feeds: dict[str, FeedView] = {}
        self.now = 0.0
        self.sort = "name"
        self.selected: str | None = None  # the top row until a key moves it
        self._moved = False
        self.detail = False
        self.top = 0  # first overview row shown

    def process(self, event: Event, now: float) -> None:
        """Take one event (of any feed) into account; ``now`` is ``time.monotonic()`` at receipt."""
        self.now = max(self.now, now)
        feed = self.feeds.get(event.stream)
        if feed is None:
            feed = self.feeds[event.stream] = FeedView(event.stream, DashboardState(), since=now)
            if not self._moved:  # feeds start in any order (workers, slow URLs): keep the top row selected
                self.selected = self.ordered()[0].name
        feed.dash.process(event, now)
        if event.kind == "error":
            feed.error = f"error {event.data.get('code', '?')}: {event.data.get('message', '')}"
        state = next_state(feed.state, event)
        if state != feed.state:
            feed.state, feed.since = state, now

    def ordered(self) -> list[FeedView]:
        feeds = sorted(self.feeds.values(), key=lambda f: f.name)
        if self.sort == "state":
            feeds.sort(key=lambda f: STATES.index(f.state))
        return feeds

    def key(self, key: bytes, page: int) -> None:
        """Apply one key; ``page`` is the number of overview rows on the screen."""
        order = [f.name for f in self.ordered()]
        if not order:
            return
        i = order.index(self.selected) if self.selected in order else 0
        self._moved = True
        if key in KEYS_DOWN:
            i += 1
        elif key in KEYS_UP:
            i -= 1
        elif key in KEYS_PAGE_DOWN:
            i += max(1, page)
        elif key in KEYS_PAGE_UP:
            i -= max(1, page)
        elif key in KEYS_OPEN:
            self.detail = True
        elif key in KEYS_BACK:
            self.detail = False
        elif key in KEYS_SORT:
            self.sort = "state" if self.sort == "name" else "name"
        self.selected = order[min(max(i, 0), len(order) - 1)]

    def uptime(self, feed: FeedView) -> float:
        """Seconds since the feed's ``start`` (to its last event once it ended)."""
        d = feed.dash
        if d.started_at is None:
            return 0.0
        return (d.now if feed.state == "ended" else self.now) - d.started_at


@dataclass(frozen=True)
class _Columns:
    """Cell widths of one overview row."""

    name: int
    state: int
    genre: int
    mood: int
    instruments: int
    level: int
    latency: int = 6
    overruns: int = 4
    uptime: int = 7

    @classmethod
    def fit(cls, width: int) -> "_Columns":
        """Widths for a terminal ``width`` cells wide (>= 80 shows every column in full)."""
        extra = max(0, width - 80)
        name = 10 + min(extra, 8)
        extra -= name - 10
        state = 12 if extra >= 5 else 5
        extra -= state - 5
        level = 6 + min(max(extra, 0) // 3, 6)
        extra -= level - 6
        fixed = 1 + name + state + 14 + 9 + level + 6 + 4 + 7 + 8  # cursor, cells, gaps
        return cls(name, state, 14, 9, max(4, width - fixed - 1), level)


class ControlRoomView:
    """Renders a :class:`ControlRoomState`: the overview, or one feed's single-feed dashboard."""

    HEADER_ROWS = 2  # title line, column titles
    FOOTER_ROWS = 1

    def __init__(self, console: Console) -> None:
        self.console = console
        self.detail_view = DashboardView(console)
        self._detail_layout = Layout()
        self._detail_layout.split_column(Layout(name="hint", size=1), Layout(name="feed"))

    def rows(self, height: int) -> int:
        """Overview rows that fit a terminal ``height`` lines tall."""
        return max(1, height - self.HEADER_ROWS - self.FOOTER_ROWS)

    def render(self, s: ControlRoomState, width: int, height: int) -> RenderableType:
        """One frame for a ``width`` × ``height`` terminal."""
        feed = s.feeds.get(s.selected or "")
        if s.detail and feed is not None:
            return self._detail(s, feed, width, height)
        return self._overview(s, width, height)

    def _detail(self, s: ControlRoomState, feed: FeedView, width: int, height: int) -> RenderableType:
        order = [f.name for f in s.ordered()]
        hint = Text(no_wrap=True, overflow="ellipsis")
        hint.append(f" {feed.name}", style="bold")
        hint.append(f" ({order.index(feed.name) + 1}/{len(order)}) ", style="dim")
        hint.append(feed.state, style=STATE_STYLE[feed.state])
        hint.append(" · Esc back · j/k next/previous feed", style="dim")
        self._detail_layout["hint"].update(hint)
        self._detail_layout["feed"].update(self.detail_view.render(feed.dash, width, height - 1))
        return self._detail_layout

    def _overview(self, s: ControlRoomState, width: int, height: int) -> RenderableType:
        cols = _Columns.fit(width)
        feeds = s.ordered()
        page = self.rows(height)
        sel = next((i for i, f in enumerate(feeds) if f.name == s.selected), 0)
        s.top = min(max(s.top, sel - page + 1), sel, max(0, len(feeds) - page))
        s.top = max(0, s.top)
        shown = feeds[s.top:s.top + page]
        counts = {st: sum(f.state == st for f in feeds) for st in STATES}
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(" rtgenre monitor", style="bold")
        title.append(f" · {len(feeds)} feeds · ")
        for st in ("live", "reconnecting", "stalled", "ended", "starting"):
            if counts[st]:
                title.append(f"{counts[st]} {st} ", style=STATE_STYLE[st])
        title.append(f"· sort {s.sort}", style="dim")
        lines: list[RenderableType] = [title, self._titles(cols)]
        for f in shown:
            lines.append(self._row(s, f, cols, f.name == s.selected))
        lines += [Text("")] * (page - len(shown))
        footer = Text(no_wrap=True, overflow="ellipsis", style="dim")
        span = f"{s.top + 1}–{s.top + len(shown)} of {len(feeds)}" if feeds else "no feeds yet"
        footer.append(f" {span} · ↑↓ select · Enter detail · s sort · PgUp/PgDn · q quit")
        lines.append(footer)
        return Group(*lines)

    @staticmethod
    def _titles(c: _Columns) -> Text:
        cells = [("feed", c.name), ("state", c.state), ("genre", c.genre), ("mood", c.mood), ("instruments", c.instruments),
                 ("level", c.level), ("p99", c.latency), ("ovr", c.overruns), ("uptime", c.uptime)]
        text = " " + " ".join(_cell(t, w, right=t in ("p99", "ovr", "uptime")) for t, w in cells)
        return Text(text, style="bold", no_wrap=True, overflow="crop")

    def _row(self, s: ControlRoomState, f: FeedView, c: _Columns, selected: bool) -> Text:
        d = f.dash
        row = Text(no_wrap=True, overflow="crop", style="reverse" if selected else "")
        row.append("▸" if selected else " ")
        row.append(_cell(f.name, c.name) + " ", style="bold")
        state = f.state if c.state >= len(f.state) else STATE_SHORT[f.state]
        row.append(_cell(state, c.state) + " ", style=STATE_STYLE[f.state])
        genre = d.heads.get("genre")
        if f.state == "ended" and f.error:  # why it ended, across the genre, mood and instruments cells
            row.append(_cell(f.error, c.genre + c.mood + c.instruments + 2) + " ", style="red")
        elif genre:
            p = f" {float(genre.get('p', 0.0)):3.0%}"
            row.append(_cell(str(genre.get("top", "?")), c.genre - len(p)), style=f"bold {d.color(genre.get('top'))}" if not self._plain else "bold")
            row.append(p + " ")
        else:
            row.append(_cell("—", c.genre) + " ", style="dim")
        if not (f.state == "ended" and f.error):
            mood = d.heads.get("mood")
            row.append(_cell(str(mood.get("top", "?")) if mood else "—", c.mood) + " ")
            inst = d.heads.get("instruments")
            present = ",".join(str(x)[:4] for x in inst.get("present", [])) if inst else "—"
            row.append(_cell(present or "none", c.instruments) + " ")
        self._meter(row, d, c.level, silent=d.silent_since is not None)
        lat = d.latency_percentiles()
        row.append(_cell("—" if lat is None else _ms(lat[1]), c.latency, right=True) + " ")
        row.append(_cell(str(d.overruns), c.overruns, right=True) + " ", style="yellow" if d.overruns else "")
        row.append(_cell(_clock(s.uptime(f)), c.uptime, right=True))
        return row

    @property
    def _plain(self) -> bool:
        return self.console.no_color or self.console.color_system is None

    @staticmethod
    def _meter(row: Text, d: DashboardState, width: int, silent: bool) -> None:
        if d.level_dbfs is None:
            row.append(_cell("—", width) + " ", style="dim")
            return
        db = float(d.level_dbfs)
        style = "dim" if silent else "red" if db >= -1.0 else "yellow" if db >= -12.0 else "green"
        row.append(_bar((db - METER_FLOOR_DB) / -METER_FLOOR_DB, width), style=style)
        row.append(" ")


def _cell(text: str, width: int, right: bool = False) -> str:
    """``text`` cut with an ellipsis or padded to exactly ``width`` cells."""
    if len(text) > width:
        text = text[:max(0, width - 1)] + "…"
    return text.rjust(width) if right else text.ljust(width)


def _ms(ms: float) -> str:
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


class ControlRoom(Dashboard):
    """The control-room sink: a :class:`Dashboard` whose state holds every feed.

    Parameters
    ----------
    console : Console
    on_quit : callable
        Called when the user presses ``q``.
    refresh_per_second : float
        Upper bound on redraws per second.
    """

    def __init__(self, console: Console, *, on_quit: Callable[[], None], refresh_per_second: float = 4.0) -> None:
        super().__init__(console, on_quit=on_quit, refresh_per_second=refresh_per_second)
        self.state = ControlRoomState()  # type: ignore[assignment]
        self.view = ControlRoomView(console)  # type: ignore[assignment]
        self.keys = KeyReader(on_quit, on_key=self.key)

    def key(self, key: bytes) -> None:
        """One key from the terminal (reader thread)."""
        with self._lock:
            self.state.key(key, self.view.rows(self.console.size.height))
        self._dirty.set()

    def _farewell(self) -> Text:
        feeds = self.state.feeds.values()
        predictions = sum(f.dash.predictions for f in feeds)
        overruns = sum(f.dash.overruns for f in feeds)
        ended = sum(f.state == "ended" for f in feeds)
        return Text(f"rtgenre monitor: {len(self.state.feeds)} feeds ({ended} ended) · {predictions} predictions · {overruns} overruns")
