"""The ``rtgenre`` command line: argument parsing and subcommand dispatch only.

Subcommands: ``listen`` (live feed), ``classify`` (files, offline), ``devices``,
``eval``, ``train``, ``engine build|info``, ``midi-ports``, ``analyze-midi``,
``index``, ``similar``, ``eval-similar``.
User mistakes end with one line on stderr and the error's exit code
(:mod:`rtgenre.errors`); Ctrl-C ends ``listen`` cleanly with a ``stop`` event.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Sequence

from rtgenre import __version__
from rtgenre.errors import ExitCode, RtgenreError, UsageError

Handler = Callable[[argparse.Namespace], int]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from rtgenre.inference import ENGINE_CHOICES

    g = p.add_argument_group("model and engine")
    g.add_argument("--model", default=None, help="model name in engines/, or path to its card (.json) or ONNX file (default: the shipped rtgenre-crnn)")
    g.add_argument("--engine", default="auto", choices=ENGINE_CHOICES, help="inference engine; auto = TensorRT when usable, else ONNX Runtime (default: auto)")
    g.add_argument("--threads", type=int, default=1, help="CPU threads for ONNX Runtime (default: 1)")
    g.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="TensorRT precision (default: fp16)")
    g.add_argument("--max-batch", type=int, default=256, help="largest batch of windows per engine call (default: 256)")


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis")
    g.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default: 0.5)")
    g.add_argument("--smooth", type=float, default=3.0, help="smoothing time constant in seconds, 0 = off (default: 3.0)")
    g.add_argument("--silence-db", type=float, default=-50.0, help="windows below this RMS level (dBFS) are silence (default: -50)")
    g.add_argument("--change-margin", type=float, default=0.1, help="lead a new top genre needs over the current one (default: 0.1)")
    g.add_argument("--change-hops", type=int, default=3, help="consecutive hops the lead must hold (default: 3)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="JSON Lines events on stdout (default when stdout is not a terminal)")
    g.add_argument("--no-dashboard", action="store_true", help="never show the terminal dashboard")
    g.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    g.add_argument("--stream-name", default="main", help="name carried by every event (default: main)")
    g.add_argument("--event-queue", type=int, default=256, help="events buffered per output before old predictions are dropped (default: 256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtgenre", description="Real-time genre, mood and instrument-family classification of live audio.")
    parser.add_argument("--version", action="version", version=f"rtgenre {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("listen", help="classify a live feed (sound card, file, stdin or URL)", description="Classify the last window of a live feed every hop.")
    src = p.add_argument_group("input (one of --device / --input; MIDI alone is allowed)")
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
    _add_model_options(p)
    _add_analysis_options(p)
    _add_output_options(p)
    p.set_defaults(handler=_cmd_listen)

    p = sub.add_parser("classify", help="classify audio files offline, with a per-file summary")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    _add_model_options(p)
    _add_analysis_options(p)
    _add_output_options(p)
    p.set_defaults(handler=_cmd_classify)

    p = sub.add_parser("devices", help="list audio input devices")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=_cmd_devices)

    from rtgenre.inference.commands import add_engine_arguments
    from rtgenre.midi.commands import add_midi_arguments
    from rtgenre.similarity.commands import add_similarity_arguments
    from rtgenre.training.commands import add_eval_arguments, add_train_arguments, run_eval, run_train

    p = sub.add_parser("eval", help="evaluate a model on a labelled folder (accuracy, F1, confusion)")
    add_eval_arguments(p)
    p.set_defaults(handler=run_eval)
    p = sub.add_parser("train", help="train the model (needs the [train] extra: torch)")
    add_train_arguments(p)
    p.set_defaults(handler=run_train)
    add_engine_arguments(sub)
    add_midi_arguments(sub)
    add_similarity_arguments(sub)
    return parser


def _console(stream, no_color: bool):
    from rich.console import Console

    return Console(file=stream, no_color=no_color or "NO_COLOR" in os.environ, stderr=stream is sys.stderr)


def _attach_sinks(args: argparse.Namespace, bus, on_gone: Callable[[], None], on_quit: Callable[[], None], human: Callable[[], object] | None = None) -> None:
    """Choose outputs: JSON Lines (``--json`` or stdout not a terminal) and/or the dashboard.

    The dashboard goes to stdout when that is a terminal and JSON was not asked
    for, or to stderr when JSON goes to a pipe and stderr is a terminal.
    """
    from rtgenre.sinks.jsonl import JsonLinesSink

    json_mode = args.json or not sys.stdout.isatty()
    if json_mode:
        bus.add(JsonLinesSink(), on_gone, capacity=args.event_queue)
    dash_stream = None
    if not getattr(args, "no_dashboard", False) and human is None:
        if not json_mode:
            dash_stream = sys.stdout
        elif not sys.stdout.isatty() and sys.stderr.isatty():
            dash_stream = sys.stderr
    if dash_stream is not None:
        from rtgenre.sinks.dashboard import Dashboard

        bus.add(Dashboard(_console(dash_stream, args.no_color), on_quit=on_quit), on_gone, capacity=args.event_queue)
    elif human is not None and not json_mode:
        bus.add(human(), on_gone, capacity=args.event_queue)


def _engine(args: argparse.Namespace, card):
    from rtgenre.inference import create_engine

    if args.threads < 0 or args.max_batch < 1:
        raise UsageError(f"Invalid --threads {args.threads} or --max-batch {args.max_batch}", "Use --threads >= 0 and --max-batch >= 1")
    engine = create_engine(args.engine, card, threads=args.threads, precision=args.precision, max_batch=args.max_batch)
    if engine.notice:
        print(f"rtgenre: notice: {engine.notice}", file=sys.stderr)
    return engine


def _smoother(args: argparse.Namespace, card):
    from rtgenre.smoothing import Smoother

    return Smoother(card.heads, args.hop, args.smooth, args.silence_db, args.change_margin, args.change_hops)


def _run(runner, bus, summaries: bool = False) -> int:
    """Run with SIGINT/SIGTERM mapped to a clean stop; always drain the sinks.

    At the end of the input the sinks are drained completely (a slow reader
    still gets every remaining event, ``stop`` last); after an interruption or
    an error they get a few seconds.
    """
    def on_signal(signum, frame):
        runner.request_stop("interrupted")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.run(summaries=summaries)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bus.finish(timeout=None if runner.stop_reason == "end of input" else 3.0)
    return ExitCode.OK


def _cmd_listen(args: argparse.Namespace) -> int:
    from rtgenre.card import load_card
    from rtgenre.pipeline import Feed, MidiRunner, Runner
    from rtgenre.similarity.commands import live_hooks
    from rtgenre.sinks.base import EventBus
    from rtgenre.sources import open_source

    card = load_card(args.model)
    midi = None
    if args.midi_port is not None or args.midi_file is not None:
        from rtgenre.midi import open_midi

        mood = [h.labels for h in card.heads if h.name == "mood"]
        midi = open_midi(args.midi_port, args.midi_file, window_s=card.window_seconds, **({"mood_labels": mood[0]} if mood else {}))
    bus = EventBus()
    if midi is not None and args.device is None and args.input is None:
        runner = MidiRunner(midi, bus, args.hop, args.stream_name)
    else:
        source = open_source(args.input, args.device, realtime=args.realtime, fmt=args.format, rate=args.rate, channels=args.channels)
        feed = Feed(args.stream_name, source, card, _smoother(args, card), args.hop, midi=midi, midi_weight=args.midi_weight, hooks=live_hooks(args, card))
        feed.open()
        runner = Runner([feed], _engine(args, card), bus)
    _attach_sinks(args, bus, on_gone=lambda: runner.request_stop("reader gone"), on_quit=lambda: runner.request_stop("quit"))
    return _run(runner, bus)


def _cmd_classify(args: argparse.Namespace) -> int:
    from rtgenre.card import load_card
    from rtgenre.pipeline import Feed, Runner
    from rtgenre.sinks.base import EventBus
    from rtgenre.sinks.summary import SummarySink
    from rtgenre.sources.file import FileSource

    card = load_card(args.model)
    engine = _engine(args, card)
    code = ExitCode.OK
    for path in args.files:
        bus = EventBus()
        try:
            feed = Feed(path, FileSource(path), card, _smoother(args, card), args.hop)
            feed.open()
            runner = Runner([feed], engine, bus)
            _attach_sinks(args, bus, on_gone=lambda: runner.request_stop("reader gone"), on_quit=lambda: runner.request_stop("quit"), human=lambda: SummarySink(_console(sys.stdout, args.no_color)))
            _run(runner, bus, summaries=True)
            if runner.stop_reason in ("interrupted", "reader gone"):
                break
        except RtgenreError as e:
            bus.finish()
            _report(e)
            code = code or e.code
    return code


def _cmd_devices(args: argparse.Namespace) -> int:
    import json

    from rtgenre.sources.device import format_device_table, list_input_devices

    devices = list_input_devices()
    print(json.dumps(devices, indent=2) if args.json else format_device_table(devices))
    return ExitCode.OK


def _report(e: RtgenreError) -> None:
    print(f"rtgenre: error: {e}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtgenre`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except RtgenreError as e:
        _report(e)
        return int(e.code)
    except KeyboardInterrupt:
        return 130
