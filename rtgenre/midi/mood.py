"""Mood from MIDI features, and its combination with the audio model's mood.

This module owns two rules, both fixed (nothing is learned):

**MIDI mood** (:func:`midi_mood`).  Four window features are squashed onto
[-1, 1]:

==========  =====================================================  ==========
term        formula                                                 feeds
==========  =====================================================  ==========
tempo       ``tanh((bpm - 110) / 30)`` (0 when unknown)             arousal
velocity    ``tanh((velocity_mean - 70) / 25)``                     arousal
density     ``tanh(log2(notes_per_s / 4))``                         arousal
mode        ``+key_confidence`` major, ``-key_confidence`` minor    valence
==========  =====================================================  ==========

``arousal`` is the mean of the arousal terms, ``valence = mode + 0.25 * tempo``
(clipped to [-1, 1]).  Each label has a score ``w_a * arousal + w_v * valence``
with the weights of :data:`MOOD_WEIGHTS` (energetic: fast/loud/dense; happy:
major; calm: slow/soft/sparse; sad: minor and slow; dark/aggressive: minor and
loud/fast).  Every score is monotone in every feature.  Scores are scaled by
``GAIN * evidence`` with ``evidence = notes / (notes + 8)`` and turned into
probabilities with a softmax, so a window with few notes gets a flat
distribution: that flatness *is* the MIDI mood's confidence.  Labels missing
from :data:`MOOD_WEIGHTS` (a model card with other mood labels) score 0.  A
window without notes gives ``top: None``, ``p: 0.0`` and uniform ``probs``.

**Combined mood** (:func:`combine_mood`).  A product of experts::

    combined(label) ∝ p_audio(label) * p_midi(label) ** midi_weight

over the audio head's labels (a label the MIDI mood lacks gets the MIDI
factor 1).  The MIDI expert's confidence enters twice: through its own
sharpness (a flat MIDI distribution changes nothing, whatever the weight) and
through ``midi_weight`` (0 = audio only, 1 = equal say).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from rtgenre.errors import UsageError

#: The audio model's ``mood`` head labels (default when no card is given).
MOOD_LABELS: tuple[str, ...] = ("energetic", "happy", "calm", "sad", "dark/aggressive")

#: label → (arousal weight, valence weight).
MOOD_WEIGHTS: dict[str, tuple[float, float]] = {
    "energetic": (2.0, 0.5),
    "happy": (0.5, 2.0),
    "calm": (-2.0, 0.5),
    "sad": (-1.0, -2.0),
    "dark/aggressive": (1.5, -1.5),
}

#: Softmax gain applied to the scores at full evidence.
GAIN = 2.0
#: Notes in the window at which the evidence reaches one half.
EVIDENCE_NOTES = 8.0
#: Floor on probabilities before taking logarithms in :func:`combine_mood`.
_EPS = 1e-6


def mood_axes(
    *, mode: str | None, key_confidence: float, tempo_bpm: float | None, velocity_mean: float, notes_per_s: float
) -> tuple[float, float]:
    """Arousal and valence in [-1, 1] from the window features (see the module docstring).

    Parameters
    ----------
    mode : {"major", "minor"} or None
        Mode of the detected key; None when no key was found.
    key_confidence : float
        Confidence of the key, 0..1.
    tempo_bpm : float or None
        Tempo; None when unknown.
    velocity_mean : float
        Mean note-on velocity (1..127).
    notes_per_s : float
        Note onsets per second.

    Returns
    -------
    (float, float)
        ``(arousal, valence)``.
    """
    tempo = math.tanh((tempo_bpm - 110.0) / 30.0) if tempo_bpm else 0.0
    velocity = math.tanh((velocity_mean - 70.0) / 25.0)
    density = math.tanh(math.log2(notes_per_s / 4.0)) if notes_per_s > 0 else -1.0
    arousal = (tempo + velocity + density) / 3.0
    sign = {"major": 1.0, "minor": -1.0}.get(mode or "", 0.0)
    valence = max(-1.0, min(1.0, sign * key_confidence + 0.25 * tempo))
    return arousal, valence


def _softmax(scores: Sequence[float]) -> list[float]:
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return [v / z for v in e]


def _mood(labels: Sequence[str], probs: Sequence[float], evidence: bool = True) -> dict[str, Any]:
    best = max(range(len(labels)), key=lambda i: probs[i])
    return {
        "top": labels[best] if evidence else None,
        "p": float(probs[best]) if evidence else 0.0,
        "probs": {lab: float(p) for lab, p in zip(labels, probs)},
    }


def midi_mood(
    *,
    mode: str | None,
    key_confidence: float,
    tempo_bpm: float | None,
    velocity_mean: float,
    notes_per_s: float,
    notes: int,
    labels: Sequence[str] = MOOD_LABELS,
) -> dict[str, Any]:
    """Mood distribution of one MIDI window.

    Parameters
    ----------
    mode, key_confidence, tempo_bpm, velocity_mean, notes_per_s
        Window features, see :func:`mood_axes`.
    notes : int
        Note onsets in the window (the evidence).
    labels : sequence of str
        Mood vocabulary, normally the model card's ``mood`` head labels.

    Returns
    -------
    dict
        ``{"top": label | None, "p": float, "probs": {label: p}}``.
    """
    if not labels:
        raise ValueError("empty mood label list")
    if notes <= 0:
        return _mood(labels, [1.0 / len(labels)] * len(labels), evidence=False)
    arousal, valence = mood_axes(
        mode=mode, key_confidence=key_confidence, tempo_bpm=tempo_bpm, velocity_mean=velocity_mean, notes_per_s=notes_per_s
    )
    gain = GAIN * notes / (notes + EVIDENCE_NOTES)
    scores = []
    for lab in labels:
        wa, wv = MOOD_WEIGHTS.get(lab, (0.0, 0.0))
        scores.append(gain * (wa * arousal + wv * valence))
    return _mood(labels, _softmax(scores))


def combine_mood(audio_probs: Mapping[str, float], midi_mood: Mapping[str, Any], midi_weight: float) -> dict[str, Any]:
    """Product-of-experts combination of the audio mood and the MIDI mood.

    Parameters
    ----------
    audio_probs : mapping of str to float
        The audio model's (smoothed) mood probabilities; empty when there is no audio.
    midi_mood : mapping
        A :func:`midi_mood` result (``top``, ``p``, ``probs``).
    midi_weight : float
        Exponent of the MIDI expert, >= 0 (0 = audio only).

    Returns
    -------
    dict
        ``{"top", "p", "probs"}`` over the audio labels (the MIDI mood itself
        when there is no audio).

    Raises
    ------
    UsageError
        ``midi_weight`` is negative or not finite.
    """
    if not (math.isfinite(midi_weight) and midi_weight >= 0):
        raise UsageError(f"MIDI mood weight {midi_weight} is invalid", "Use a weight >= 0 (0 = audio only, 1 = equal say)")
    if not audio_probs:
        return {"top": midi_mood.get("top"), "p": float(midi_mood.get("p", 0.0)), "probs": dict(midi_mood.get("probs", {}))}
    labels = list(audio_probs)
    midi_probs = midi_mood.get("probs", {}) if midi_mood.get("top") is not None else {}
    logs = []
    for lab in labels:
        lp = math.log(max(float(audio_probs[lab]), _EPS))
        if lab in midi_probs:
            lp += midi_weight * math.log(max(float(midi_probs[lab]), _EPS))
        logs.append(lp)
    return _mood(labels, _softmax(logs))
