"""The ``rtgenre`` command line: argument parsing and subcommand dispatch only.

Subcommands: ``listen`` (live feed), ``classify`` (files, offline), ``devices``,
``eval``, ``train``, ``engine build|info``, ``midi-ports``, ``analyze-midi``,
``monitor`` (many live feeds, see :mod:`rtgenre.monitor`).
``index``, ``similar``, ``eval-similar``.
User mistakes end with one line on stderr and the error's exit code
(:mod:`rtgenre.errors`); Ctrl-C ends ``listen`` cleanly with a ``stop`` event.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from rtgenre import __version__
from rtgenre.errors import ExitCode, RtgenreError, UsageError
from rtgenre.options import add_stream_options, check_options, stream_options

Handler = Callable[[argparse.Namespace], int]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from rtgenre.inference import ENGINE_CHOICES
    from rtgenre.inference.streaming import add_streaming_arguments

    g = p.add_argument_group("model and engine")
    g.add_argument("--model", default=None, help="model name in rtgenre/models/, or path to its card (.json) or ONNX file (default: the shipped rtgenre)")
    g.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="inference engine; auto = TensorRT when usable, else ONNX Runtime (default: auto)")
    g.add_argument("--threads", type=int, default=1, help="CPU threads for ONNX Runtime (default: 1)")
    g.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="TensorRT precision (default: fp16)")
    g.add_argument("--max-batch", type=int, default=256, help="largest batch of windows per engine call (default: 256)")
    g.add_argument("-v", "--verbose", action="store_true", help="also print notices (e.g. why TensorRT is not used) on stderr; they are always in the start event")
    add_streaming_arguments(g)


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    from rtgenre.gate import TALK_HOLD_S, TALK_TAU_S

    g = p.add_argument_group("analysis")
    g.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default: 0.5)")
    g.add_argument("--smooth", type=float, default=3.0, help="smoothing time constant in seconds, 0 = off (default: 3.0)")
    g.add_argument("--silence-db", type=float, default=-50.0, help="windows below this RMS level (dBFS) are silence (default: -50)")
    g.add_argument("--change-margin", type=float, default=0.1, help="lead a new top genre needs over the current one (default: 0.1)")
    g.add_argument("--change-hops", type=int, default=3, help="consecutive hops the lead must hold (default: 3)")
    g.add_argument("--talk-hold", type=float, default=TALK_HOLD_S, help=f"seconds talk or music must lead before a talk/music event (models with a content head; default: {TALK_HOLD_S:g})")
    g.add_argument("--talk-smooth", type=float, default=TALK_TAU_S, help=f"smoothing time constant of the content (talk/music) in seconds, 0 = off (default: {TALK_TAU_S:g})")


def _add_output_options(p: argparse.ArgumentParser, dashboard: bool) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="JSON Lines events on stdout (default when stdout is not a terminal)")
    if dashboard:
        d = g.add_mutually_exclusive_group()
        d.add_argument("--dashboard", action="store_true", help="show the dashboard even when stdout is not a terminal (it then draws on stderr)")
        d.add_argument("--no-dashboard", action="store_true", help="never show the terminal dashboard")
    g.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    g.add_argument("--stream-name", default="main", help="name carried by every event (default: main)")
    g.add_argument("--event-queue", type=int, default=256, help="events buffered per output before old predictions are dropped (default: 256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtgenre", description="Real-time genre, mood and instrument-family classification of live audio.")
    parser.add_argument("--version", action="version", version=f"rtgenre {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("listen", help="classify a live feed (sound card, file, stdin or URL)", description="Classify the last window of a live feed every hop.")
    p.add_argument("file", nargs="?", metavar="FILE", help="audio file, '-' for stdin, or a URL: the same as --input FILE")
    src = p.add_argument_group("input (one of FILE / --device / --input; MIDI alone is allowed)")
    src.add_argument("--device", help="input device index or name (see `rtgenre devices`)")
    src.add_argument("--input", help="audio file, '-' for stdin, or a URL (decoded by ffmpeg)")
    src.add_argument("--realtime", action="store_true", help="pace a file like a live feed (default: as fast as possible)")
    src.add_argument("--format", choices=("s16le", "s24le", "s32le", "f32le"), help="raw PCM sample format on stdin (omit for a WAV stream)")
    src.add_argument("--rate", type=int, help="sample rate of raw stdin PCM, or the device rate to open")
    src.add_argument("--channels", type=int, help="channels of raw stdin PCM, or the device channels to open")
    midi = p.add_argument_group("MIDI")
    midi.add_argument("--midi-port", help="analyse a MIDI input port too (index or name; see `rtgenre midi-ports`)")
    midi.add_argument("--midi-file", help="replay a MIDI file in real time through the MIDI analysis")
    midi.add_argument("--midi-weight", type=float, default=1.0, help="weight of the MIDI mood in the combined mood (product of experts; 0 = audio only; default: 1)")
    add_stream_options(p)
    _add_model_options(p)
    _add_analysis_options(p)
    _add_output_options(p, dashboard=True)
    p.set_defaults(handler=_cmd_listen)

    p = sub.add_parser("classify", help="classify audio files offline, with a per-file summary",
                       description="Classify audio files as fast as the CPU allows and summarise each file: its dominant label per head "
                                   "and that label's share of the file's windows. JSON Lines events instead with --json or when stdout is not a terminal.")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    _add_model_options(p)
    _add_analysis_options(p)
    _add_output_options(p, dashboard=False)
    p.set_defaults(handler=_cmd_classify)

    p = sub.add_parser("devices", help="list audio input devices",
                       description="List the audio input devices (index, name, channels, default rate) that `listen --device` accepts.")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=_cmd_devices)

    from rtgenre.inference.commands import add_engine_arguments
    from rtgenre.midi.commands import add_midi_arguments
    from rtgenre.monitor import add_monitor_arguments
    from rtgenre.training.commands import (
        add_eval_arguments,
        add_train_arguments,
        run_eval,
        run_train,
    )
    from rtgenre.similarity.commands import add_similarity_arguments

    p = sub.add_parser("eval", help="evaluate a model on a labelled folder (accuracy, F1, confusion)",
                       description="Run a model over labelled audio files and report accuracy, per-class precision/recall/F1 and the "
                                   "confusion matrix, per window and per clip (majority of windows).")
    add_eval_arguments(p)
    p.set_defaults(handler=run_eval)
    p = sub.add_parser("train", help="train the model (needs the [train] extra: torch)",
                       description="Fit a new genre head on your own labelled audio (--data), or retrain the shipped model from the corpora; "
                                   "writes an ONNX model and its card. Needs the [train] extra (torch).")
    add_train_arguments(p)
    p.set_defaults(handler=run_train)
    add_engine_arguments(sub)
    add_midi_arguments(sub)
    for command in sub.choices.values():
        command.set_defaults(usage_parser=command)
        for nested in (a for a in command._actions if isinstance(a, argparse._SubParsersAction)):
            for leaf in nested.choices.values():
                leaf.set_defaults(usage_parser=leaf)
    add_monitor_arguments(sub)
    add_similarity_arguments(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown option is reported with the usage of the subcommand it was given to, and a close match."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        command = getattr(args, "usage_parser", parser)
        options = [o for a in command._actions for o in a.option_strings]
        hints = [m for x in extra if x.startswith("-") for m in difflib.get_close_matches(x.split("=")[0], options, n=1)]
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {', '.join(hints)}?)" if hints else ""))
    return args


def _console(stream, no_color: bool):
    from rich.console import Console

    return Console(file=stream, no_color=no_color or "NO_COLOR" in os.environ, stderr=stream is sys.stderr)


def _json_mode(args: argparse.Namespace) -> bool:
    """JSON Lines on stdout: asked for with ``--json``, or stdout is not a terminal."""
    return args.json or not sys.stdout.isatty()


def _attach_sinks(args: argparse.Namespace, bus, on_gone: Callable[[], None], on_quit: Callable[[], None], human: Callable[[], object] | None = None) -> None:
    """Choose outputs: JSON Lines (``--json`` or stdout not a terminal), the dashboard or ``human``.

    The dashboard draws only on a terminal that nothing else writes to: on
    stdout when that is a terminal and JSON was not asked for.  When stdout is
    a pipe or a file the terminal belongs to whoever reads it (``| jq``), so
    there is no dashboard unless ``--dashboard`` puts it on stderr.
    """
    from rtgenre.sinks.jsonl import JsonLinesSink

    json_mode = _json_mode(args)
    if json_mode:
        bus.add(JsonLinesSink(), on_gone, capacity=args.event_queue)
    dash_stream = None
    if human is None and not getattr(args, "no_dashboard", False):
        if not json_mode:
            dash_stream = sys.stdout
        elif getattr(args, "dashboard", False):
            dash_stream = sys.stderr
    if dash_stream is not None:
        from rtgenre.sinks.dashboard import Dashboard

        bus.add(Dashboard(_console(dash_stream, args.no_color), on_quit=on_quit), on_gone, capacity=args.event_queue)
    elif human is not None and not json_mode:
        bus.add(human(), on_gone, capacity=args.event_queue)


def _engine(args: argparse.Namespace, card):
    from rtgenre.inference import create_engine

    engine = create_engine(args.engine, card, threads=args.threads, precision=args.precision, max_batch=args.max_batch, stream=not args.recompute)
    if engine.notice and (args.verbose or args.engine != "auto"):  # always in the start event; on stderr when asked
        print(f"rtgenre: notice: {engine.notice}", file=sys.stderr)
    return engine


def _smoother(args: argparse.Namespace, card):
    from rtgenre.smoothing import Smoother

    return Smoother(card.heads, args.hop, args.smooth, args.silence_db, args.change_margin, args.change_hops, args.talk_hold, args.talk_smooth)


def _cmd_listen(args: argparse.Namespace) -> int:
    from rtgenre.card import load_card
    from rtgenre.pipeline import Feed
    from rtgenre.session import MidiSession, Session
    from rtgenre.similarity.commands import live_hooks
    from rtgenre.sinks.base import EventBus
    from rtgenre.sources import open_source

    check_options(args)
    if args.file is not None:
        if args.input is not None or args.device is not None:
            raise UsageError(f"Both FILE ({args.file}) and --input/--device name an input", "Give one input: FILE, --input or --device")
        args.input = args.file
    card = load_card(args.model)
    midi = None
    if args.midi_port is not None or args.midi_file is not None:
        from rtgenre.midi import open_midi

        mood = [h.labels for h in card.heads if h.name == "mood"]
        midi = open_midi(args.midi_port, args.midi_file, window_s=card.window_seconds, **({"mood_labels": mood[0]} if mood else {}))
    bus = EventBus()
    if midi is not None and args.device is None and args.input is None:
        session: Session = MidiSession(midi, bus, args.hop, args.stream_name)
    else:
        source = open_source(args.input, args.device, realtime=args.realtime, fmt=args.format, rate=args.rate, channels=args.channels, **stream_options(args))
        feed = Feed(args.stream_name, source, card, _smoother(args, card), args.hop, midi=midi, midi_weight=args.midi_weight,
                    reconnect=bool(args.reconnect), max_reconnects=args.max_reconnects, lookahead=args.lookahead,
                    hooks=live_hooks(args, card))
        session = Session([feed], lambda: _engine(args, card), bus)
    _attach_sinks(args, bus, on_gone=lambda: session.request_stop("reader gone"), on_quit=lambda: session.request_stop("quit"))
    session.run()
    return ExitCode.OK


def _cmd_classify(args: argparse.Namespace) -> int:
    from rtgenre.card import load_card
    from rtgenre.pipeline import OFFLINE_BLOCK_SECONDS, OFFLINE_READ_SECONDS, Feed
    from rtgenre.progress import WorkProgress, audio_seconds
    from rtgenre.session import Session
    from rtgenre.sinks.base import EventBus
    from rtgenre.sinks.summary import SummarySink
    from rtgenre.sources.file import FileSource

    check_options(args)
    card = load_card(args.model)
    code = ExitCode.OK
    several = len(args.files) > 1
    engines: list = []  # one engine for every file, made once the first file has opened (its errors come first)

    def engine():
        if not engines:
            engines.append(_engine(args, card))
        return engines[0]

    try:
        with WorkProgress("classify", len(args.files), seconds=(audio_seconds(f) for f in args.files), json_output=_json_mode(args),
                          enabled=None if several else False) as bar:
            for path in args.files:
                bus = EventBus()
                feed = Feed(path, FileSource(path, block_seconds=OFFLINE_BLOCK_SECONDS), card, _smoother(args, card), args.hop, lookahead=args.lookahead, read_seconds=OFFLINE_READ_SECONDS)
                session = Session([feed], engine, bus, summaries=True, close_engine=False)
                _attach_sinks(args, bus, on_gone=lambda s=session: s.request_stop("reader gone"), on_quit=lambda s=session: s.request_stop("quit"),
                              human=lambda: SummarySink(_console(sys.stdout, args.no_color)))
                try:
                    session.run()
                except RtgenreError as e:
                    _report(e)
                    code = code or e.code
                bar.advance()
                if session.stop_reason in ("interrupted", "reader gone", "quit", "output failed"):
                    break
    finally:
        for e in engines:
            e.close()
    return code


def _cmd_devices(args: argparse.Namespace) -> int:
    import json

    from rtgenre.sources.device import format_device_table, list_input_devices

    devices = list_input_devices()
    print(json.dumps(devices, indent=2) if args.json else format_device_table(devices))
    return ExitCode.OK


def _report(e: RtgenreError) -> None:
    line = f"rtgenre: error: {e}\n"
    try:  # any file name, in any encoding, ends up on one line of stderr
        os.write(2, line.encode(sys.getfilesystemencoding(), "backslashreplace"))
    except OSError:
        pass


def limit_blas_threads() -> None:
    """Run numpy's BLAS on one thread in this process.

    Its products here are small (the Mel filterbank on a block of frames, the
    models run in ONNX Runtime with their own ``--threads``), and OpenBLAS's
    threads spin while they wait: on a loaded 2-core machine the log-Mel of a
    file cost 8x the CPU of one thread.
    """
    import numpy  # noqa: F401  (threadpoolctl limits the libraries loaded so far)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtgenre`` console script; returns the exit code."""
    parser = build_parser()
    args = _parse(parser, argv)
    limit_blas_threads()
    try:
        return int(args.handler(args))
    except RtgenreError as e:
        _report(e)
        return int(e.code)
    except KeyboardInterrupt:
        return 130
