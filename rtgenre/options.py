"""Command-line option checks done before anything runs, and the stream (reconnect) options.

:func:`check_options` rejects numbers that cannot mean anything (NaN, Inf,
zero or negative where a positive value is needed, absurdly large values)
with a :class:`~rtgenre.errors.UsageError` (exit 2) that names the option, and
a closed standard output with an :class:`~rtgenre.errors.OutputFailedError`.
The value ranges live in :data:`LIMITS`, one row per option.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from rtgenre.errors import OutputFailedError, UsageError

#: option → (attribute, lowest, highest, what it is, example); bounds inclusive.
LIMITS: dict[str, tuple[str, float, float, str, str]] = {
    "--hop": ("hop", 0.01, 60.0, "seconds between windows", "--hop 0.5"),
    "--smooth": ("smooth", 0.0, 3600.0, "a smoothing time constant in seconds (0 = off)", "--smooth 3"),
    "--silence-db": ("silence_db", -200.0, 0.0, "a level in dBFS", "--silence-db -50"),
    "--change-margin": ("change_margin", 0.0, 1.0, "a probability margin", "--change-margin 0.1"),
    "--change-hops": ("change_hops", 1, 10000, "a count of hops", "--change-hops 3"),
    "--event-queue": ("event_queue", 1, 1_000_000, "a count of events", "--event-queue 256"),
    "--threads": ("threads", 0, 1024, "a thread count (0 = automatic)", "--threads 1"),
    "--max-batch": ("max_batch", 1, 65536, "a count of windows", "--max-batch 256"),
    "--workers": ("workers", 0, 64, "a count of engine threads (0 = the main thread)", "--workers 2"),
    "--processes": ("processes", 1, 1024, "a count of worker processes (1 = this process only)", "--processes 2"),
    "--midi-weight": ("midi_weight", 0.0, 100.0, "a weight (0 = audio only)", "--midi-weight 1"),
    "--stall-timeout": ("stall_timeout", 0.1, 3600.0, "seconds without audio", "--stall-timeout 10"),
    "--max-reconnects": ("max_reconnects", 0, 1_000_000_000, "a count of attempts", "--max-reconnects 100"),
}

#: Default seconds without audio on a live URL before it counts as stalled.
STALL_TIMEOUT_S = 10.0


def add_stream_options(p: argparse.ArgumentParser) -> None:
    """``--reconnect/--no-reconnect``, ``--max-reconnects``, ``--stall-timeout`` (live URLs)."""
    g = p.add_argument_group("live streams (URLs)")
    g.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=None,
                   help="reopen a live URL that ends, fails or stalls, with backoff (default: on once it played; "
                        "--reconnect also retries a URL that cannot be opened at start)")
    g.add_argument("--max-reconnects", type=int, default=None, help="give up after N consecutive failed reconnects (default: never)")
    g.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT_S,
                   help=f"seconds without audio after which a live URL counts as stalled and is reopened (default: {STALL_TIMEOUT_S:g})")


def stream_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`rtgenre.sources.open_source` for the stream options."""
    return {"reconnect": args.reconnect, "max_reconnects": args.max_reconnects, "stall_timeout": args.stall_timeout}


def check_options(args: argparse.Namespace) -> None:
    """Reject option values that cannot be meant, naming the option; reject a closed stdout.

    Raises
    ------
    UsageError
        A value is NaN, infinite or out of its range (see :data:`LIMITS`).
    OutputFailedError
        Standard output is closed.
    """
    for option, (attr, low, high, what, example) in LIMITS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if not math.isfinite(value) or not low <= value <= high:
            raise UsageError(f"{option} {value} is out of range: it is {what}, from {low:g} to {high:g}", f"Pass e.g. {example}")
    try:
        os.fstat(1)
    except OSError:
        raise OutputFailedError("Standard output is closed", "Run with stdout open (redirect it to a file or /dev/null)") from None
