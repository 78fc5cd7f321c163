"""Sliding-window analysis of a MIDI message stream.

This module owns :class:`MidiAnalyzer` (messages in, one ``midi`` object per
window out), the message validation rules (what counts as ``malformed``),
key finding (Krumhansl–Schmuckler), tempo from MIDI clock and from note onsets,
and the General MIDI family tables.  It reads records as produced by
:mod:`rtgenre.midi.source` (:data:`RECORD`: arrival time, byte count, first
three bytes) and never touches a port, so live ports, real-time file replay and
offline ``analyze-midi`` share every line of it.

The ``midi`` object (the ``midi`` field of ``prediction`` and ``midi`` events)::

    {"port": str | None, "notes_per_s": float, "velocity_mean": float,
     "velocity_std": float, "polyphony_mean": float, "polyphony_max": int,
     "pitch_range": [lo, hi] | None, "key": "C major" | None,
     "key_confidence": float, "tempo_bpm": float | None,
     "tempo_source": "clock" | "onsets" | None, "families": {family: share},
     "sustain": float, "mood": {"top", "p", "probs"}, "notes": int,
     "malformed": int, "dropped": int}

Definitions, over the window ``(t_end - window_s, t_end]`` (clipped to the
time of the first message, so the first seconds of a stream are not diluted):

* ``notes``, ``notes_per_s``, ``velocity_*``: note-ons (velocity > 0) in the window.
* ``polyphony_*``: simultaneously sounding *pitched* notes (channel 10 excluded),
  time-weighted mean over the window and maximum.  A note sounds from its
  note-on to its note-off (or the window end; a note held longer than
  :data:`MAX_NOTE_S` is taken as stuck and ends there).
* ``pitch_range``: lowest and highest pitched note sounding in the window.
* ``key``/``key_confidence``: duration-weighted pitch-class histogram of the
  pitched notes, correlated with the 24 rotated Krumhansl–Kessler profiles;
  confidence ``(r1 - r2) / (1 - r2)`` from the best and second-best correlation.
* ``tempo_bpm``: from MIDI clock (24 ticks per quarter note, :func:`clock_tempo`)
  when the window holds at least one beat of clock;
  else from note onsets (:func:`onset_tempo`); else None.
* ``families``: share of the window's note-ons per General MIDI family
  (:data:`GM_FAMILIES`, by the channel's last program change; channel 10 is
  ``drums``).  :data:`AUDIO_FAMILY` maps them onto the audio model's
  instrument vocabulary.
* ``sustain``: fraction of the window with the sustain pedal (CC64 >= 64) down
  on any channel.
* ``malformed``: messages skipped since the last reset (see :func:`message_length`);
  ``dropped``: messages the source's queue had to drop (passed in by the owner).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from rtgenre.midi.mood import MOOD_LABELS, midi_mood

#: One received message: arrival time (s, the source's time base), byte count
#: (clipped to 255), first three bytes.
RECORD = np.dtype([("t", "<f8"), ("n", "u1"), ("b", "u1", (3,))])

#: General MIDI program families, 8 programs each (program // 8 → family).
GM_FAMILIES: tuple[str, ...] = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects",
)
#: Family of notes on MIDI channel 10 (index 9), whatever the program.
DRUM_FAMILY = "drums"
DRUM_CHANNEL = 9

#: GM family → the audio model's ``instruments`` vocabulary (None: no counterpart).
#: Ethnic programs (sitar, banjo, koto, bagpipe...) have no single counterpart;
#: sound effects (helicopter, applause...) are not instruments.
AUDIO_FAMILY: dict[str, str | None] = {
    "piano": "keys",
    "chromatic percussion": "keys",
    "organ": "keys",
    "guitar": "guitar",
    "bass": "bass",
    "strings": "strings",
    "ensemble": "strings",
    "brass": "winds",
    "reed": "winds",
    "pipe": "winds",
    "synth lead": "synth",
    "synth pad": "synth",
    "synth effects": "synth",
    "ethnic": None,
    "percussive": "drums",
    "sound effects": None,
    "drums": "drums",
}

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: Krumhansl–Kessler probe-tone profiles, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

CLOCK_PPQN = 24
#: Tempo search range of :func:`onset_tempo`, BPM.
TEMPO_RANGE = (60.0, 200.0)
#: A note sounding longer than this is taken as stuck (lost note-off).
MAX_NOTE_S = 30.0
#: Onsets closer than this are one event (chords, flams) for tempo.
_ONSET_MERGE_S = 0.05


def message_length(status: int) -> int:
    """Bytes of a MIDI message with this status byte; 0 for no valid message.

    Parameters
    ----------
    status : int
        First byte of the message.

    Returns
    -------
    int
        3 for note, aftertouch, control change and pitch bend (and song
        position), 2 for program change, channel pressure, time code and song
        select, 1 for tune request and real-time messages, 0 for data bytes
        (a message without status: running-status garbage), SysEx and the
        undefined status bytes 0xF4, 0xF5, 0xF9, 0xFD.
    """
    if status < 0x80:
        return 0
    if status < 0xF0:
        return 2 if 0xC0 <= status < 0xE0 else 3
    return {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFE: 1, 0xFF: 1}.get(status, 0)


def gm_family(program: int, channel: int) -> str:
    """GM family of a note played with ``program`` on ``channel`` (0-based)."""
    return DRUM_FAMILY if channel == DRUM_CHANNEL else GM_FAMILIES[program // 8]


def find_key(pc_hist: np.ndarray) -> tuple[str | None, float]:
    """Krumhansl–Schmuckler key of a pitch-class histogram.

    Parameters
    ----------
    pc_hist : ndarray, shape (12,)
        Weights (e.g. seconds sounding) of C, C#, ..., B.

    Returns
    -------
    (str or None, float)
        ``"<tonic> major|minor"`` and the confidence ``(r1 - r2) / (1 - r2)``
        (0..1); ``(None, 0.0)`` when fewer than three pitch classes sound.
    """
    pc_hist = np.asarray(pc_hist, dtype=float)
    if np.count_nonzero(pc_hist > 0) < 3:
        return None, 0.0
    rs = np.empty(24)
    for tonic in range(12):
        rot = np.roll(pc_hist, -tonic)
        rs[tonic] = np.corrcoef(rot, KK_MAJOR)[0, 1]
        rs[12 + tonic] = np.corrcoef(rot, KK_MINOR)[0, 1]
    order = np.argsort(rs)[::-1]
    r1, r2 = rs[order[0]], rs[order[1]]
    best = int(order[0])
    name = f"{PITCH_CLASSES[best % 12]} {'major' if best < 12 else 'minor'}"
    conf = float(np.clip((r1 - r2) / (1.0 - r2), 0.0, 1.0)) if r2 < 1.0 else 0.0
    return name, conf


def clock_tempo(ticks: np.ndarray) -> float | None:
    """Tempo from MIDI clock tick times (24 per quarter note).

    The tick period is the median of the slopes between each tick of the first
    half and its partner half the ticks later: each slope spans half the
    window, so timer quantisation (JACK delivers once per period) averages
    out, and the median ignores ticks that arrived late and in a burst (a
    sender or a receiver stalled for a moment), which pull a least-squares
    slope by several BPM.

    Returns None with fewer than one beat (25 ticks) of clock.

    Examples
    --------
    >>> ticks = np.arange(96) * 60.0 / (24 * 120)
    >>> ticks[80:88] = ticks[88]  # eight ticks held back and sent in a burst
    >>> round(clock_tempo(ticks), 3)
    120.0
    """
    n = len(ticks)
    if n < CLOCK_PPQN + 1:
        return None
    t = np.asarray(ticks, dtype=float)
    half = n // 2
    period = float(np.median(t[half : 2 * half] - t[:half])) / half
    return 60.0 / (CLOCK_PPQN * period) if period > 0 else None


def onset_tempo(onsets: np.ndarray, bpm_range: tuple[float, float] = TEMPO_RANGE) -> float | None:
    """Tempo from note onset times by an inter-onset-interval histogram.

    All intervals between onsets (after merging onsets closer than 50 ms) up to
    the longest beat period are smoothed into a histogram over candidate beat
    periods (Gaussian kernel, 15 ms), weighted by a log-normal tempo prior
    centred on 120 BPM (one octave wide) that settles the choice between a
    period and its multiples.  The winning period is then refined by a
    least-squares fit of all intervals near one of its multiples.

    Parameters
    ----------
    onsets : ndarray
        Onset times in seconds, any order.
    bpm_range : (float, float)
        Lowest and highest tempo considered.

    Returns
    -------
    float or None
        BPM, or None with fewer than four distinct onsets or no periodicity.
    """
    t = np.sort(np.asarray(onsets, dtype=float))
    if len(t) == 0:
        return None
    keep = np.concatenate([[True], np.diff(t) >= _ONSET_MERGE_S])
    t = t[keep]
    if len(t) < 4:
        return None
    lo_p, hi_p = 60.0 / bpm_range[1], 60.0 / bpm_range[0]
    iois = (t[None, :] - t[:, None])[np.triu_indices(len(t), 1)]
    iois = iois[iois <= 4 * hi_p]
    periods = np.arange(lo_p, hi_p + 1e-9, 0.002)
    near = iois[(iois >= lo_p - 0.05) & (iois <= hi_p + 0.05)]
    if len(near) == 0:
        return None
    hist = np.exp(-0.5 * ((near[None, :] - periods[:, None]) / 0.015) ** 2).sum(axis=1)
    prior = np.exp(-0.5 * np.log2(periods / 0.5) ** 2)
    period = float(periods[np.argmax(hist * prior)])
    k = np.round(iois / period)
    fit = (k >= 1) & (np.abs(iois - k * period) < 0.1 * period)
    if not fit.any():
        return None
    period = float(np.sum(k[fit] * iois[fit]) / np.sum(k[fit] ** 2))
    return 60.0 / period


def _coverage(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of intervals."""
    total, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class MidiAnalyzer:
    """Sliding-window MIDI analysis (processor: :meth:`process`, :meth:`snapshot`, :meth:`reset`).

    Parameters
    ----------
    window_s : float
        Window length in seconds (the audio window, 7.5 s).
    port : str or None
        Name reported in the ``port`` field (port name or file path).
    mood_labels : sequence of str
        Mood vocabulary (the model card's ``mood`` head labels).
    """

    def __init__(self, window_s: float = 7.5, *, port: str | None = None, mood_labels: Sequence[str] = MOOD_LABELS) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.port = port
        self.mood_labels = tuple(mood_labels)
        self.reset()

    def reset(self) -> None:
        """Forget all messages and counters."""
        #: [onset, offset | None, pitch, velocity, channel, family]
        self._notes: list[list[Any]] = []
        self._sounding: dict[tuple[int, int], deque[list[Any]]] = {}
        self._programs = [0] * 16
        self._pedal: list[list[float | None]] = []  # [down, up | None]
        self._pedal_down: dict[int, list[float | None]] = {}
        self._ticks: deque[float] = deque()
        self._t0: float | None = None
        self.malformed = 0

    def process(self, records: np.ndarray) -> None:
        """Feed new messages (a :data:`RECORD` array in arrival order)."""
        for t, n, b in zip(records["t"].tolist(), records["n"].tolist(), records["b"].tolist()):
            if n == 0:
                self.malformed += 1
                continue
            status = b[0]
            if status in (0xF0, 0xF7):  # SysEx: never analysed, not malformed
                continue
            want = message_length(status)
            if want == 0 or n != want or any(x >= 0x80 for x in b[1:want]):
                self.malformed += 1
                continue
            if self._t0 is None:
                self._t0 = t
            self._message(t, status, b[1], b[2])

    def _message(self, t: float, status: int, d1: int, d2: int) -> None:
        kind, ch = status & 0xF0, status & 0x0F
        if status == 0xF8:
            self._ticks.append(t)
        elif kind == 0x90 and d2 > 0:
            note = [t, None, d1, d2, ch, gm_family(self._programs[ch], ch)]
            self._notes.append(note)
            self._sounding.setdefault((ch, d1), deque()).append(note)
        elif kind == 0x80 or kind == 0x90:
            q = self._sounding.get((ch, d1))
            if q:
                q.popleft()[1] = t
        elif kind == 0xC0:
            self._programs[ch] = d1
        elif kind == 0xB0 and d1 == 64:
            down = self._pedal_down.get(ch)
            if d2 >= 64 and down is None:
                self._pedal_down[ch] = seg = [t, None]
                self._pedal.append(seg)
            elif d2 < 64 and down is not None:
                down[1] = t
                del self._pedal_down[ch]
        elif kind == 0xB0 and d1 in (120, 123):  # all sound off / all notes off
            for (c, _), q in self._sounding.items():
                if c == ch:
                    for note in q:
                        note[1] = t
                    q.clear()

    def _prune(self, lo: float) -> None:
        """Drop what ended before the window start (stuck notes included)."""
        self._notes = [n for n in self._notes if (n[0] + MAX_NOTE_S if n[1] is None else n[1]) > lo]
        for q in self._sounding.values():
            while q and q[0][0] + MAX_NOTE_S <= lo:
                q.popleft()
        self._pedal = [p for p in self._pedal if p[1] is None or p[1] > lo]
        while self._ticks and self._ticks[0] <= lo:
            self._ticks.popleft()

    def snapshot(self, t_end: float, *, dropped: int = 0) -> dict[str, Any]:
        """The ``midi`` object for the window ``(t_end - window_s, t_end]``.

        Parameters
        ----------
        t_end : float
            Window end in the records' time base; calls must not go back in time.
        dropped : int
            Messages the source dropped so far (reported as ``dropped``).

        Returns
        -------
        dict
            See the module docstring.
        """
        lo = t_end - self.window_s
        self._prune(lo)
        span = t_end - max(lo, self._t0) if self._t0 is not None else self.window_s
        span = span if span > 0 else self.window_s

        onsets, vels, fams = [], [], {}
        spans: list[tuple[float, float, int]] = []  # pitched notes: clipped start, end, pitch
        for on, off, pitch, vel, ch, fam in self._notes:
            if on > t_end:
                continue
            if on > lo:
                onsets.append(on)
                vels.append(vel)
                fams[fam] = fams.get(fam, 0) + 1
            end = min(t_end, on + MAX_NOTE_S) if off is None else min(off, on + MAX_NOTE_S)
            if ch != DRUM_CHANNEL and end > lo:
                a, b = max(on, lo), min(end, t_end)
                if b > a:
                    spans.append((a, b, pitch))

        n = len(onsets)
        pc = np.zeros(12)
        poly_mean, poly_max, prange = 0.0, 0, None
        if spans:
            for a, b, p in spans:
                pc[p % 12] += b - a
            pitches = [p for _, _, p in spans]
            prange = [min(pitches), max(pitches)]
            edges = sorted([(a, 1) for a, _, _ in spans] + [(b, -1) for _, b, _ in spans], key=lambda e: (e[0], e[1]))
            level = 0
            for _, d in edges:
                level += d
                poly_max = max(poly_max, level)
            poly_mean = sum(b - a for a, b, _ in spans) / span
        key, key_conf = find_key(pc)

        ticks = np.array([x for x in self._ticks if x <= t_end])
        tempo, source = clock_tempo(ticks), "clock"
        if tempo is None:
            tempo, source = onset_tempo(np.array(onsets)), "onsets"
        if tempo is None:
            source = None

        pedal = [(max(a, lo), min(t_end if b is None else b, t_end)) for a, b in self._pedal if a <= t_end]
        vel_mean = float(np.mean(vels)) if vels else 0.0
        nps = n / span
        return {
            "port": self.port,
            "notes_per_s": nps,
            "velocity_mean": vel_mean,
            "velocity_std": float(np.std(vels)) if vels else 0.0,
            "polyphony_mean": poly_mean,
            "polyphony_max": poly_max,
            "pitch_range": prange,
            "key": key,
            "key_confidence": key_conf,
            "tempo_bpm": tempo,
            "tempo_source": source,
            "families": {f: c / n for f, c in sorted(fams.items(), key=lambda kv: -kv[1])},
            "sustain": min(1.0, _coverage(pedal) / span),
            "mood": midi_mood(
                mode=key.split()[1] if key else None, key_confidence=key_conf, tempo_bpm=tempo,
                velocity_mean=vel_mean, notes_per_s=nps, notes=n, labels=self.mood_labels,
            ),
            "notes": n,
            "malformed": self.malformed,
            "dropped": int(dropped),
        }
