"""MIDI subcommands (``midi-ports``, ``analyze-midi``) and the pipeline's MIDI hook.

This module owns the command-line face of the MIDI analysis and the small
integration API the live pipeline uses: :func:`open_midi` gives a
:class:`MidiInput` (a port or a real-time file replay, plus its analyser) whose
:meth:`MidiInput.snapshot` is called once per audio hop (or per hop of a
MIDI-only ``listen``).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Iterator, Sequence

from rtgenre.errors import ExitCode, MidiInputError, UsageError
from rtgenre.events import Event
from rtgenre.midi.analysis import MidiAnalyzer
from rtgenre.midi.mood import MOOD_LABELS
from rtgenre.midi.source import MidiFileSource, MidiPortSource, format_midi_ports, list_midi_ports


class MidiInput:
    """A running MIDI source and its analyser, for the live pipeline.

    Parameters
    ----------
    source : MidiPortSource or MidiFileSource
        Real-time source; its records carry ``time.monotonic()`` arrival times.
    analyzer : MidiAnalyzer
        Window analysis.
    """

    def __init__(self, source: MidiPortSource | MidiFileSource, analyzer: MidiAnalyzer) -> None:
        self.source = source
        self.analyzer = analyzer

    @property
    def error(self) -> Exception | None:
        """The source's failure (e.g. :class:`~rtgenre.errors.MidiPortLostError`), None while healthy."""
        return self.source.error

    @property
    def done(self) -> bool:
        """True once a replayed file has delivered its last message (never for a port)."""
        return self.source.done

    @property
    def name(self) -> str:
        """Port name or file path (the ``port`` field of the snapshot)."""
        return self.source.name

    def start(self) -> None:
        """Open the port or start the file replay."""
        self.source.start()

    def stop(self) -> None:
        """Close the port or stop the replay."""
        self.source.stop()

    def check(self) -> None:
        """Raise the source's error, if any (port vanished, JACK server gone)."""
        self.source.check()

    def snapshot(self, now_monotonic: float) -> dict[str, Any]:
        """Drain new messages into the analyser; the ``midi`` object for the window ending now.

        Parameters
        ----------
        now_monotonic : float
            ``time.monotonic()`` at the end of the window (e.g. the arrival of the
            audio window's last sample).
        """
        self.analyzer.process(self.source.drain())
        return self.analyzer.snapshot(now_monotonic, dropped=self.source.dropped)


def open_midi(
    port: str | int | None = None,
    file: str | None = None,
    *,
    window_s: float = 7.5,
    mood_labels: Sequence[str] = MOOD_LABELS,
    api: str = "auto",
) -> MidiInput:
    """The pipeline's MIDI input: ``--midi-port`` or ``--midi-file`` (real-time replay).

    Parameters
    ----------
    port : str or int, optional
        Port index or name part (see ``rtgenre midi-ports``).
    file : str, optional
        MIDI file replayed in real time.
    window_s : float
        Analysis window (the audio window).
    mood_labels : sequence of str
        The model card's ``mood`` labels.
    api : str
        rtmidi API for ports (``auto``, ``jack``, ``alsa``).

    Raises
    ------
    UsageError
        Both or neither of ``port`` and ``file``.
    MidiPortNotFoundError, MidiInputError, DependencyMissingError
        From the sources.
    """
    if (port is None) == (file is None):
        raise UsageError("Give exactly one of --midi-port and --midi-file", "Drop one of them")
    source: MidiPortSource | MidiFileSource = MidiPortSource(port, api=api) if port is not None else MidiFileSource(file, realtime=True)
    return MidiInput(source, MidiAnalyzer(window_s, port=source.name, mood_labels=mood_labels))


#: Longest MIDI timeline ``analyze-midi`` accepts (seconds): a file's delta times can claim weeks.
MAX_FILE_SECONDS = 24 * 3600.0


def analyze_file(path: str, hop_s: float = 0.5, window_s: float = 7.5, mood_labels: Sequence[str] = MOOD_LABELS) -> Iterator[Event]:
    """Offline analysis of a MIDI file: one ``midi`` event per hop, made as they are consumed.

    Windows end at ``hop_s, 2 hop_s, ...`` up to the first hop at or after the
    last message (file time, seconds).  Memory stays bounded whatever the file
    says: events are generated one at a time and the timeline is capped at
    :data:`MAX_FILE_SECONDS`.

    Raises
    ------
    UsageError
        ``hop_s`` or ``window_s`` not positive.
    MidiInputError
        Unreadable or truncated file, or a timeline longer than :data:`MAX_FILE_SECONDS`.
    """
    if not (hop_s > 0 and window_s > 0 and math.isfinite(hop_s) and math.isfinite(window_s)):
        raise UsageError(f"Invalid --hop {hop_s} or --window {window_s}", "Both must be positive seconds")
    records = MidiFileSource(path, realtime=False).read_all()
    last = float(records["t"][-1]) if len(records) else 0.0
    if not last <= MAX_FILE_SECONDS:
        raise MidiInputError(
            f"MIDI file {path!r} spans {last / 3600:.0f} hours (its delta times say so); at most {MAX_FILE_SECONDS / 3600:.0f} hours are analysed",
            "Check the file: a damaged or hostile file can claim huge delta times",
        )
    return _analyze_records(path, records, last, hop_s, MidiAnalyzer(window_s, port=path, mood_labels=mood_labels))


def _analyze_records(path: str, records, last: float, hop_s: float, analyzer: MidiAnalyzer) -> Iterator[Event]:
    start, k = 0, 1
    while True:
        t_end = k * hop_s
        stop = int(records["t"].searchsorted(t_end, side="right"))
        analyzer.process(records[start:stop])
        start = stop
        yield Event("midi", path, t_end, {"midi": analyzer.snapshot(t_end)})
        if t_end >= last:
            return
        k += 1


def format_snapshot_row(t: float, m: dict[str, Any]) -> str:
    """One line of the ``analyze-midi`` table."""
    tempo = f"{m['tempo_bpm']:6.1f} {m['tempo_source']:<6}" if m["tempo_bpm"] else f"{'-':>6} {'':<6}"
    key = f"{m['key']} ({m['key_confidence']:.2f})" if m["key"] else "-"
    fams = ", ".join(f"{f} {s:.0%}" for f, s in list(m["families"].items())[:3]) or "-"
    mood = f"{m['mood']['top']} {m['mood']['p']:.0%}" if m["mood"]["top"] else "-"
    return f"{t:7.1f}  {key:<20} {tempo} {m['notes_per_s']:5.1f} {m['polyphony_mean']:4.1f}  {mood:<22} {fams}"


TABLE_HEADER = f"{'t (s)':>7}  {'key':<20} {'tempo':>6} {'from':<6} {'n/s':>5} {'poly':>4}  {'mood':<22} families"


def run_midi_ports(args: argparse.Namespace) -> int:
    """``rtgenre midi-ports [--json]``."""
    import json

    ports = list_midi_ports(getattr(args, "api", "auto"))
    print(json.dumps(ports, indent=2) if args.json else format_midi_ports(ports))
    return ExitCode.OK


def run_analyze_midi(args: argparse.Namespace) -> int:
    """``rtgenre analyze-midi FILE [--json] [--hop S] [--window S]``."""
    events = analyze_file(args.file, args.hop, args.window)
    if args.json or not sys.stdout.isatty():
        from rtgenre.sinks.jsonl import JsonLinesSink

        from rtgenre.sinks.base import output_error

        sink = JsonLinesSink()
        try:
            for e in events:
                sink.handle(e)
        except BrokenPipeError:
            pass
        except OSError as exc:  # disk full, I/O error, closed stdout
            raise output_error(exc) from None
        return ExitCode.OK
    print(TABLE_HEADER)
    for e in events:
        print(format_snapshot_row(e.t, e.data["midi"]))
    return ExitCode.OK


def add_midi_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Add ``midi-ports`` and ``analyze-midi`` to the ``rtgenre`` subparsers (handlers set as ``handler``)."""
    p = subparsers.add_parser("midi-ports", help="list MIDI input ports", description="List MIDI input ports (for --midi-port).")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--api", default="auto", help="rtmidi API: auto (default API, then JACK), jack, alsa (default: auto)")
    p.set_defaults(handler=run_midi_ports)

    p = subparsers.add_parser(
        "analyze-midi", help="analyse a MIDI file offline (key, tempo, density, families, mood)",
        description="Analyse a MIDI file offline: one window per hop, like `listen` does live.",
    )
    p.add_argument("file", help="Standard MIDI File (.mid)")
    p.add_argument("--json", action="store_true", help="JSON Lines `midi` events (default when stdout is not a terminal)")
    p.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default: 0.5)")
    p.add_argument("--window", type=float, default=7.5, help="window length in seconds (default: 7.5)")
    p.set_defaults(handler=run_analyze_midi)
