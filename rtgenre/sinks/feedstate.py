"""A feed's operational state as the events tell it: live, reconnecting, stalled or ended.

Shared by the control-room dashboard and the Prometheus metrics so that both
name the same state for the same events.
"""

from __future__ import annotations

from rtgenre.events import Event

#: Every state, in the order the control room sorts by (trouble first).
STATES = ("reconnecting", "stalled", "ended", "starting", "live")


def next_state(state: str, event: Event) -> str:
    """The state after ``event``.

    ``start`` → starting; audio (``prediction``, ``silence``) and
    ``reconnect`` with status ``recovered`` → live; other ``reconnect`` events
    (``lost``, ``failed``) → reconnecting; ``stall`` → stalled; ``stop`` →
    ended (final).
    """
    if state == "ended":
        return state
    kind = event.kind
    if kind == "start":
        return "starting"
    if kind in ("prediction", "silence"):
        return "live"
    if kind == "reconnect":
        return "live" if event.data.get("status") == "recovered" else "reconnecting"
    if kind == "stall":
        return "stalled"
    if kind == "stop":
        return "ended"
    return state
