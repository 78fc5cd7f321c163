"""Feed lists for ``rtgenre monitor``: FEEDS.toml and ``--feed NAME=SPEC`` → validated feed specs.

The file holds an optional ``[defaults]`` table and one ``[[feed]]`` table per
feed::

    [defaults]          # optional
    hop = 0.5
    engine = "onnxruntime"
    [[feed]]
    name = "radio1"
    input = "http://127.0.0.1:8000/radio1.mp3"
    [[feed]]
    name = "studio"
    device = "pulse"

Every mistake (TOML syntax, an unknown key or table, a duplicate name, a value
of the wrong type or out of range, a feed with no or two inputs) is a
:class:`~rtgenre.errors.UsageError` (exit code 2) naming the file and the line
it is on.  The standard library's :mod:`tomllib` parses the file; it reports
positions only for syntax errors, so :func:`key_lines` finds the line of each
table and key with a small scan of the text (enough for the flat tables this
format uses; a key written in another form, e.g. a dotted or inline table, is
reported at its table's header line).  Value ranges are those of the
command-line options of the same names (:data:`rtgenre.options.LIMITS`).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from rtgenre.dsp.window import feed_phase
from rtgenre.errors import UsageError
from rtgenre.inference import ENGINE_CHOICES
from rtgenre.options import LIMITS, STALL_TIMEOUT_S

#: A feed name: used as the event ``stream``, a file name under ``--out-dir`` and a metric label.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"

Check = Callable[[Any], Any]


def _ranged(option: str, integer: bool = False) -> Check:
    """A number within the range the command-line option ``option`` accepts (:data:`rtgenre.options.LIMITS`)."""
    _, low, high, what, _ = LIMITS[option]

    def check(v: Any) -> float | int:
        kind = int if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or not low <= v <= high:
            raise ValueError(f"{'an integer' if integer else 'a number'} from {low:g} to {high:g} ({what})")
        return v if integer else float(v)
    return check


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a non-empty string")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str) or not NAME.match(v):
        raise ValueError(f"a feed name of {_NAME_RULE}")
    return v


def _input(v: Any) -> str:
    v = _text(v)
    if v == "-":
        raise ValueError("a file or URL (standard input cannot be a monitor feed)")
    return v


def _device(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or (isinstance(v, str) and not v.strip()):
        raise ValueError("a device index or name")
    return str(v)


def _engine(v: Any) -> str:
    if v not in ENGINE_CHOICES:
        raise ValueError("one of " + ", ".join(ENGINE_CHOICES))
    return v


#: Analysis and stream-handling settings: allowed in [defaults] and in each [[feed]].  Key → (check, default).
FEED_SETTINGS: dict[str, tuple[Check, Any]] = {
    "hop": (_ranged("--hop"), 0.5),
    "smooth": (_ranged("--smooth"), 3.0),
    "silence_db": (_ranged("--silence-db"), -50.0),
    "change_margin": (_ranged("--change-margin"), 0.1),
    "change_hops": (_ranged("--change-hops", integer=True), 3),
    "realtime": (_boolean, True),
    "reconnect": (_boolean, None),
    "max_reconnects": (_ranged("--max-reconnects", integer=True), None),
    "stall_timeout": (_ranged("--stall-timeout"), STALL_TIMEOUT_S),
}
#: Engine-wide settings: [defaults] only (one process, one engine).  Key → (check, default).
ENGINE_SETTINGS: dict[str, tuple[Check, Any]] = {
    "model": (_text, None),
    "engine": (_engine, "auto"),
    "threads": (_ranged("--threads", integer=True), 1),
}
#: Keys that only a [[feed]] has.
FEED_KEYS: dict[str, Check] = {"name": _name, "input": _input, "device": _device}


@dataclass(frozen=True)
class FeedSpec:
    """One validated feed.

    Attributes
    ----------
    name : str
        Stream name of its events.
    input, device : str or None
        Exactly one is set: a file or URL, or a capture device index or name.
    hop, smooth, silence_db, change_margin, change_hops
        Analysis settings, as the ``listen`` options of the same names.
    realtime : bool
        Pace a file input at its own rate (ignored for URLs and devices).
    reconnect : bool or None
        URL feeds: None reopens a stream that ends, fails or stalls once it
        played; True also retries one that cannot be opened at start; False
        never reopens (as ``listen --reconnect``).
    max_reconnects : int or None
        URL feeds: consecutive failed reconnects before the feed ends (None: never).
    stall_timeout : float
        URL feeds: seconds without audio after which the feed counts as stalled and is reopened.
    origin : str
        Where it was defined (``feeds.toml:7`` or ``--feed``), for messages.
    phase : float
        Delay of its window grid, a fraction of a hop (:func:`rtgenre.dsp.window.feed_phase`
        of its place in the whole run, so that it stays the same whichever process or node runs it).
    """

    name: str
    input: str | None
    device: str | None
    hop: float
    smooth: float
    silence_db: float
    change_margin: float
    change_hops: int
    realtime: bool
    reconnect: bool | None
    max_reconnects: int | None
    stall_timeout: float
    origin: str = "--feed"
    phase: float = 0.0


@dataclass(frozen=True)
class MonitorConfig:
    """Feeds and the engine-wide settings of one ``monitor`` run.

    ``defaults`` holds the file's validated [defaults] feed settings (for ``--feed`` feeds).
    """

    feeds: tuple[FeedSpec, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    engine: str = "auto"
    threads: int = 1


def key_lines(text: str) -> dict[tuple[str, int, str | None], int]:
    """Line numbers (1-based) of tables and keys in a flat TOML text.

    Keys: ``(table, index, key)``; ``table`` is ``""`` for the top level,
    ``index`` counts ``[[table]]`` entries from 0 (0 for plain tables), and
    ``key`` is ``None`` for the table's header line.
    """
    out: dict[tuple[str, int, str | None], int] = {}
    counts: dict[str, int] = {}
    table, index = "", 0
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
    for n, line in enumerate(text.splitlines(), 1):
        if m := header.match(line):
            table = m.group(2).strip("\"'")
            if m.group(1) == "[[":
                index = counts.get(table, -1) + 1
                counts[table] = index
            else:
                index = 0
            out.setdefault((table, index, None), n)
        elif m := key.match(line):
            out.setdefault((table, index, m.group(1).strip("\"'")), n)
    return out


class _Where:
    """Formats ``FILE:LINE`` for a table or key of one config file."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)

    def __call__(self, table: str, index: int = 0, key: str | None = None) -> str:
        n = self.lines.get((table, index, key)) or self.lines.get((table, index, None))
        return f"{self.path}:{n}" if n else self.path


def _checked(where: str, owner: str, key: str, value: Any, check: Check) -> Any:
    try:
        return check(value)
    except ValueError as e:
        raise UsageError(f"{where}: {key} = {value!r} in {owner} is invalid", f"Use {e}") from None


def _settings(table: dict[str, Any], owner: str, where: Callable[[str], str], allowed: dict[str, tuple[Check, Any]]) -> dict[str, Any]:
    return {k: _checked(where(k), owner, k, v, allowed[k][0]) for k, v in table.items() if k in allowed}


def _unknown(table: dict[str, Any], owner: str, where: Callable[[str], str], known: list[str]) -> None:
    for k in table:
        if k not in known:
            if k in ENGINE_SETTINGS:
                raise UsageError(f"{where(k)}: {k} in {owner} applies to every feed (one engine per process)", "Move it to [defaults]")
            raise UsageError(f"{where(k)}: unknown key {k!r} in {owner}", "Known keys: " + ", ".join(known))


def _feed(values: dict[str, Any], base: dict[str, Any], origin: str, owner: str) -> FeedSpec:
    """A FeedSpec from a feed's own values over ``base`` (the [defaults] settings)."""
    if "name" not in values:
        raise UsageError(f"{origin}: {owner} has no name", 'Add name = "..." to it')
    has_input, has_device = values.get("input") is not None, values.get("device") is not None
    if has_input == has_device:
        raise UsageError(
            f"{origin}: feed {values['name']!r} has {'both input and device' if has_input else 'no input'}",
            "Give exactly one of input = FILE|URL and device = INDEX|NAME",
        )
    settings = {**{k: d for k, (_, d) in FEED_SETTINGS.items()}, **base}
    settings.update({k: values[k] for k in FEED_SETTINGS if k in values})
    return FeedSpec(name=values["name"], input=values.get("input"), device=values.get("device"), origin=origin, **settings)


def load_config(path: str | Path) -> MonitorConfig:
    """Read and validate a FEEDS.toml file.

    Raises
    ------
    UsageError
        With ``FILE:LINE`` for every problem (exit code 2).
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"Cannot read feed list {path} ({getattr(e, 'strerror', None) or e})", "Pass a readable FEEDS.toml file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        loc = f"{path}:{m.group(1)}" if m else path
        raise UsageError(f"{loc}: not valid TOML ({re.sub(r' ?[(]at line.*', '', str(e))})", "Fix the syntax (see https://toml.io)") from None
    where = _Where(path, text)
    for key in doc:
        if key not in ("defaults", "feed"):
            at = where("", 0, key) if ("", 0, key) in where.lines else where(key)
            raise UsageError(f"{at}: unknown table or key {key!r}", "The file holds [defaults] and [[feed]] tables only")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{where('', 0, 'defaults')}: defaults must be a table", "Write it as [defaults]")
    _unknown({k: v for k, v in defaults.items() if k not in ENGINE_SETTINGS}, "[defaults]", lambda k: where("defaults", 0, k), list(FEED_SETTINGS) + list(ENGINE_SETTINGS))
    base = _settings(defaults, "[defaults]", lambda k: where("defaults", 0, k), FEED_SETTINGS)
    engine = _settings(defaults, "[defaults]", lambda k: where("defaults", 0, k), ENGINE_SETTINGS)
    feeds_raw = doc.get("feed", [])
    if not isinstance(feeds_raw, list):
        raise UsageError(f"{where('feed')}: feed must be an array of tables", "Write each feed as [[feed]]")
    feeds: list[FeedSpec] = []
    for i, table in enumerate(feeds_raw):
        if not isinstance(table, dict):
            raise UsageError(f"{where('', 0, 'feed')}: feed must be an array of tables", "Write each feed as [[feed]]")
        at = lambda k, i=i: where("feed", i, k)  # noqa: E731
        owner = f"[[feed]] #{i + 1}" if not isinstance(table.get("name"), str) else f"feed {table['name']!r}"
        _unknown(table, owner, at, list(FEED_KEYS) + list(FEED_SETTINGS))
        values = _settings(table, owner, at, FEED_SETTINGS)
        values.update({k: _checked(at(k), owner, k, table[k], check) for k, check in FEED_KEYS.items() if k in table})
        feeds.append(_feed(values, base, at("name"), owner))
    check_unique(tuple(feeds))
    return MonitorConfig(feeds=tuple(feeds), defaults=base, **engine)


def parse_feed_option(option: str, base: dict[str, Any] | None = None) -> FeedSpec:
    """One ``--feed NAME=SPEC``: SPEC is a file, a URL, or ``device:INDEX|NAME``.

    ``base`` holds the settings of a file's [defaults] (built-in defaults otherwise).
    """
    name, sep, spec = option.partition("=")
    if not sep or not spec:
        raise UsageError(f"--feed {option!r} is not NAME=SPEC", "Use e.g. --feed radio1=http://host/radio1.mp3, --feed song=song.wav or --feed desk=device:2")
    try:
        values: dict[str, Any] = {"name": _name(name)}
        if spec.startswith("device:"):
            values["device"] = _device(spec[len("device:"):])
        else:
            values["input"] = _input(spec)
    except ValueError as e:
        raise UsageError(f"--feed {option!r} is invalid", f"Use {e}") from None
    return _feed(values, base or {}, "--feed", f"--feed {name}")


def build_config(path: str | Path | None, options: list[str]) -> MonitorConfig:
    """The feeds of a FEEDS.toml file (if given) followed by the ``--feed`` options.

    ``--feed`` feeds take the file's [defaults].  Duplicate names across both
    are an error naming both places.  Each feed gets the phase of its place in
    the run (:func:`~rtgenre.dsp.window.feed_phase`).
    """
    config = load_config(path) if path is not None else MonitorConfig(feeds=())
    extra = tuple(parse_feed_option(o, config.defaults) for o in options)
    feeds = tuple(replace(f, phase=feed_phase(i)) for i, f in enumerate(config.feeds + extra))
    if not feeds:
        raise UsageError("No feeds given", "Pass a FEEDS.toml file with [[feed]] tables and/or --feed NAME=SPEC")
    check_unique(feeds)
    return replace(config, feeds=feeds)


def check_unique(feeds: tuple[FeedSpec, ...]) -> None:
    """UsageError naming both places when two feeds share a name."""
    seen: dict[str, FeedSpec] = {}
    for f in feeds:
        if f.name in seen:
            raise UsageError(f"{f.origin}: feed name {f.name!r} is already used at {seen[f.name].origin}", "Give every feed its own name")
        seen[f.name] = f
