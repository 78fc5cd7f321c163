"""The speech/music gate: what a stream is carrying, and when talk starts and ends.

Owns the model's ``content`` head at run time.  :class:`ContentGate` smooths
the head's probabilities (exponential smoothing with its own time constant,
:data:`TALK_TAU_S` by default; the content comes from the short-window
classifier of :mod:`rtgenre.content` when the model has one),
says per window whether the music heads may be updated (not while the smoothed
content is ``speech``) and confirms transitions between *talk* (smoothed top
``speech``) and *music* (any other content label, e.g. ``music`` or ``speech
over music``) with hysteresis: the other side must lead for ``hold_s``
seconds of consecutive windows.  Silence is decided by the level gate before
the model (:class:`rtgenre.smoothing.Smoother`); silent windows leave the
gate's state as it is.

The content head is found in the model card by name (:data:`CONTENT_HEAD`);
its labels must include :data:`SPEECH` and :data:`MUSIC`.  A model without a
content head has no gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rtgenre.card import Head
from rtgenre.errors import ModelCorruptError, UsageError

#: Name of the content head in the model card.
CONTENT_HEAD = "content"
#: Content label during which the music heads are held.
SPEECH = "speech"
#: Content label of music without speech.
MUSIC = "music"
#: Content state of windows below the level gate (not a label of the head).
SILENCE = "silence/noise"
#: The two states whose transitions are events.
TALK_STATE, MUSIC_STATE = "talk", "music"
#: Default seconds the other side must lead before a transition (``--talk-hold``).
TALK_HOLD_S = 0.5
#: Default smoothing time constant of the content probabilities (``--talk-smooth``).
TALK_TAU_S = 2.0


@dataclass
class Transition:
    """A confirmed change between talk and music.

    Attributes
    ----------
    state : str
        :data:`TALK_STATE` or :data:`MUSIC_STATE` (the event kind).
    previous : str or None
        The state that ended; ``None`` for the stream's first state.
    hops_ago : int
        Windows between the first window of the confirming run and this one
        (the new state began ``hops_ago`` hops before the confirmation).
    """

    state: str
    previous: str | None
    hops_ago: int


@dataclass
class ContentDecision:
    """The gate's view of one sounding window.

    ``probs`` is the gate's smoothing state itself: read it before the next
    :meth:`ContentGate.process`.
    """

    top: str
    p: float
    probs: np.ndarray
    talk: bool
    transition: Transition | None = None


class ContentGate:
    """Smooths the content head and confirms talk/music transitions with hysteresis.

    Parameters
    ----------
    head : Head
        The card's content head (multiclass, labels including ``speech`` and ``music``).
    hop_s : float
        Seconds between windows.
    alpha : float
        Weight of the newest window in the exponential smoothing
        (:func:`rtgenre.smoothing.ema_alpha`).
    hold_s : float
        Seconds the other side must lead, in consecutive windows, before a
        transition is confirmed (rounded up to whole hops, at least one).

    Raises
    ------
    ModelCorruptError
        The head is not a multiclass head with ``speech`` and ``music`` labels.
    UsageError
        A negative ``hold_s``.
    """

    def __init__(self, head: Head, hop_s: float, alpha: float, hold_s: float = TALK_HOLD_S) -> None:
        if head.kind != "multiclass" or SPEECH not in head.labels or MUSIC not in head.labels:
            raise ModelCorruptError(
                f"The model's '{head.name}' head must be multiclass with labels '{SPEECH}' and '{MUSIC}' (it has {head.kind} {list(head.labels)})",
                "Re-export the model with a content head as the card format describes, or use a model without one",
            )
        if hold_s < 0 or not math.isfinite(hold_s):
            raise UsageError(f"Invalid --talk-hold {hold_s}", "Use --talk-hold >= 0 (seconds)")
        self.head = head
        self.alpha = alpha
        self.hold_hops = max(1, math.ceil(hold_s / hop_s - 1e-9))
        self.speech = head.labels.index(SPEECH)
        self._state = np.zeros(len(head.labels), np.float64)
        self._scratch = np.zeros(len(head.labels), np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the smoothing state and the current talk/music state (a new stream)."""
        self._started = False
        self.current: str | None = None
        self._run = 0

    def process(self, raw: np.ndarray) -> ContentDecision:
        """Update with one sounding window's raw content probabilities.

        Parameters
        ----------
        raw : ndarray
            Shape ``(n_labels,)``, the content head's output for the window.

        Returns
        -------
        ContentDecision
            ``talk`` is true when the smoothed top label is ``speech`` (the
            music heads are then held); ``transition`` is set on the window
            that confirms a change, and on the stream's first window.
        """
        state = self._state
        if self._started:
            np.subtract(raw, state, out=self._scratch)
            self._scratch *= self.alpha
            state += self._scratch
        else:
            state[:] = raw
            self._started = True
        top = int(state.argmax())
        talk = top == self.speech
        side = TALK_STATE if talk else MUSIC_STATE
        transition = None
        if self.current is None:
            self.current = side
            transition = Transition(side, None, 0)
        elif side == self.current:
            self._run = 0
        else:
            self._run += 1
            if self._run >= self.hold_hops:
                transition = Transition(side, self.current, self._run - 1)
                self.current, self._run = side, 0
        return ContentDecision(self.head.labels[top], float(state[top]), state, talk, transition)
