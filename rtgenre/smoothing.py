"""Temporal post-processing of per-window probabilities, per stream.

Owns three things: exponential smoothing of each head's probabilities with a
time constant in seconds, the silence gate (a window whose RMS level is below
a threshold is reported as silence and leaves the smoothing state untouched)
and change detection with hysteresis (a new top label of a single-label head
must lead the current one by a margin for N consecutive hops).  When the model
has a ``content`` head, the speech/music gate (:mod:`rtgenre.gate`) runs first
(with its own, shorter time constant) and, while the content is speech, the
music heads' state is held the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rtgenre.card import Head
from rtgenre.errors import UsageError
from rtgenre.gate import (
    CONTENT_HEAD,
    TALK_HOLD_S,
    TALK_TAU_S,
    ContentDecision,
    ContentGate,
)


def ema_alpha(hop_s: float, tau_s: float) -> float:
    """Weight of the newest window for a time constant ``tau_s`` at one update per ``hop_s``.

    ``alpha = 1 - exp(-hop/tau)``: after ``tau`` seconds an old value has decayed to 1/e.
    ``tau_s == 0`` disables smoothing (alpha 1).
    """
    if tau_s < 0 or hop_s <= 0:
        raise UsageError(f"Invalid smoothing: time constant {tau_s} s at hop {hop_s} s", "Use --smooth >= 0 and --hop > 0")
    return 1.0 if tau_s == 0 else 1.0 - math.exp(-hop_s / tau_s)


@dataclass
class Change:
    """A confirmed change of a single-label head's top label."""

    head: str
    old: str | None
    new: str
    p: float


@dataclass
class Decision:
    """What the smoother concluded about one window.

    ``content`` is the speech/music gate's decision (models with a content
    head, sounding windows); when it says ``talk``, ``smoothed`` is empty.
    """

    silent: bool
    smoothed: dict[str, np.ndarray] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    content: ContentDecision | None = None


class Smoother:
    """Smooths probabilities, gates silence and detects changes for one stream.

    Parameters
    ----------
    heads : sequence of Head
        The model's heads (from the card).  A head named ``content`` becomes
        the speech/music gate; the others are the music heads.
    hop_s : float
        Seconds between windows.
    tau_s : float
        Smoothing time constant in seconds (0 disables smoothing).
    silence_db : float
        Windows with an RMS level below this (dBFS) are silence.
    margin : float
        Lead (in smoothed probability) a new top label needs over the current one.
    hops : int
        Consecutive windows the lead must hold before a change is confirmed.
    talk_hold_s : float
        Seconds talk or music must lead before the gate confirms a transition.
    talk_tau_s : float
        Smoothing time constant of the gate's content probabilities (0: none).

    Attributes
    ----------
    heads : tuple of Head
        The music heads (every head but the content head).
    gate : ContentGate or None
        The speech/music gate, when the model has a content head.
    """

    def __init__(self, heads: tuple[Head, ...], hop_s: float, tau_s: float = 3.0, silence_db: float = -50.0, margin: float = 0.1, hops: int = 3, talk_hold_s: float = TALK_HOLD_S,
                 talk_tau_s: float = TALK_TAU_S) -> None:
        if hops < 1 or not 0.0 <= margin < 1.0:
            raise UsageError(f"Invalid change hysteresis: margin {margin}, hops {hops}", "Use --change-margin in [0, 1) and --change-hops >= 1")
        self.alpha = ema_alpha(hop_s, tau_s)
        if not talk_tau_s >= 0:
            raise UsageError(f"Invalid --talk-smooth {talk_tau_s}", "Use --talk-smooth >= 0 (seconds)")
        self.heads = tuple(h for h in heads if h.name != CONTENT_HEAD)
        content = [h for h in heads if h.name == CONTENT_HEAD]
        self.gate = ContentGate(content[0], hop_s, ema_alpha(hop_s, talk_tau_s), talk_hold_s) if content else None
        self.silence_db = silence_db
        self.margin = margin
        self.hops = hops
        self.reset()

    def reset(self) -> None:
        self._state: dict[str, np.ndarray] = {}
        self._current: dict[str, int] = {}
        self._candidate: dict[str, tuple[int, int]] = {}
        if self.gate is not None:
            self.gate.reset()

    def process(self, probs: dict[str, np.ndarray], level_dbfs: float) -> Decision:
        """Update with one window's raw probabilities and level.

        Parameters
        ----------
        probs : dict of str to ndarray
            Head name → raw probabilities of this window, shape ``(n_labels,)``.
        level_dbfs : float
            RMS level of the window in dBFS.

        Returns
        -------
        Decision
            ``silent`` windows, and windows the gate says are talk, carry no
            smoothed values and never change labels.
        """
        if level_dbfs < self.silence_db:
            return Decision(silent=True)
        decision = Decision(silent=False)
        if self.gate is not None:
            decision.content = self.gate.process(probs[self.gate.head.name])
            if decision.content.talk:
                return decision
        for head in self.heads:
            raw = np.asarray(probs[head.name], dtype=np.float64)
            prev = self._state.get(head.name)
            state = raw.copy() if prev is None else prev + self.alpha * (raw - prev)
            self._state[head.name] = state
            decision.smoothed[head.name] = state
            if head.kind == "multiclass":
                change = self._track(head, state)
                if change is not None:
                    decision.changes.append(change)
        return decision

    def _track(self, head: Head, state: np.ndarray) -> Change | None:
        top = int(np.argmax(state))
        cur = self._current.get(head.name)
        if cur is None:
            self._current[head.name] = top
            return Change(head.name, None, head.labels[top], float(state[top]))
        if top == cur or state[top] - state[cur] < self.margin:
            self._candidate.pop(head.name, None)
            return None
        cand, count = self._candidate.get(head.name, (top, 0))
        count = count + 1 if cand == top else 1
        if count < self.hops:
            self._candidate[head.name] = (top, count)
            return None
        self._candidate.pop(head.name, None)
        self._current[head.name] = top
        return Change(head.name, head.labels[cur], head.labels[top], float(state[top]))
