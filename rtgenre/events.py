"""Event types emitted by the pipeline and their JSON form (the documented schema).

Every event is one :class:`Event`: a kind, the stream it belongs to, ``t``
(seconds of audio since the stream started, at the end of the window it
describes) and ``wall`` (ISO 8601 UTC when it was made), plus kind-specific
fields.  Sinks (JSON Lines, dashboard) read these objects and nothing else.

Kinds and their fields (see README "Event schema"):

``start``       model, model_version, engine, engine_detail, sample_rate,
                source_rate, channels, source, window_s, hop_s, labels
``prediction``  heads{name: {top, p, raw_top, probs{label: p}, [present]}},
                level_dbfs, peak_dbfs, clipped, latency_ms, [content{top, p, state, probs}], [midi]
``change``      head, from, to, p
``talk``        since, from, previous_s, content, p   (models with a content head)
``music``       since, from, previous_s, content, p
``silence``     level_dbfs, since
``overrun``     dropped_samples, total_dropped_samples
``midi``        midi (analysis without audio)
``stall``       seconds, attempt (a live URL sent no audio for ``seconds``)
``reconnect``   status (lost|failed|recovered), attempt, reason,
                retry_in_s (lost, failed), missed_s (recovered)
``error``       code, message, fatal
``summary``     file, windows, dominant{head: label}, share{head: {label: share}},
                [content{state: share}, talk_share, music_share]
``stop``        reason, counts{...}, [signal]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

KINDS = ("start", "prediction", "change", "talk", "music", "silence", "overrun", "midi", "stall", "reconnect", "error", "summary", "stop")
#: Kinds that a full event queue may drop (oldest first); all others are always delivered.
DROPPABLE = frozenset({"prediction", "silence", "midi"})


def iso_now(ts: float | None = None) -> str:
    """ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-23T10:55:11.123Z``."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class Event:
    """One pipeline event.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    stream : str
        Name of the feed (``--stream-name``, default ``main``; the file path in ``classify``).
    t : float
        Seconds of audio since the stream started, at the end of the described window.
    data : dict
        Kind-specific fields, JSON-serialisable.
    wall : str
        ISO 8601 UTC time the event was made.
    arrival : float or None
        ``time.monotonic()`` when the last sample of the described window arrived;
        sinks derive ``latency_ms`` from it.  Not serialised.
    """

    kind: str
    stream: str
    t: float
    data: dict[str, Any] = field(default_factory=dict)
    wall: str = field(default_factory=iso_now)
    arrival: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")

    def with_data(self, **extra: Any) -> "Event":
        """A copy with extra fields (events are shared between sinks: never mutate one)."""
        return Event(self.kind, self.stream, self.t, {**self.data, **extra}, self.wall, self.arrival)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "stream": self.stream, "t": round(self.t, 4), "wall": self.wall, **self.data}

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        d = dict(d)
        kind, stream, t, wall = d.pop("event"), d.pop("stream"), float(d.pop("t")), d.pop("wall")
        return cls(kind=kind, stream=stream, t=t, data=d, wall=wall)


def _finite(x: Any) -> Any:
    """Replace NaN/Inf (not valid JSON) by None, recursively; round floats to 6 digits."""
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
