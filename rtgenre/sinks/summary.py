"""Human-readable sink for ``rtgenre classify``: one line per file summary."""

from __future__ import annotations

from rich.console import Console

from rtgenre.events import Event
from rtgenre.sinks.base import Sink


class SummarySink(Sink):
    """Prints each ``summary`` event as ``FILE  40 windows  dominant (share of windows): [talk 30% · music 70%]  genre rock 62%  mood calm 80%``.

    The percentage is the share of the file's windows whose top label is the
    dominant one, not a confidence.  Other events are ignored.
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    def handle(self, event: Event) -> None:
        if event.kind != "summary":
            return
        d = event.data
        parts = [f"{head} [bold]{label}[/] {d['share'][head][label]:.0%}" for head, label in d["dominant"].items()]
        if "talk_share" in d:
            parts.insert(0, f"talk {d['talk_share']:.0%} · music {d['music_share']:.0%}")
        self.console.print(f"[cyan]{d['file']}[/]  {d['windows']} windows  dominant (share of windows): " + "  ".join(parts), highlight=False)
