"""Style-conditioned MIDI generation: drums, bass line, chords and a melody per style.

Each :class:`Style` fixes a tempo range, a drum pattern, a bass rhythm, a way
of playing the chords, swing and the General MIDI programs each part may use.
:func:`generate` draws one song from a style and returns the MIDI file and its
exact labels: the style's genre and the instrument families of the programs
actually played (:func:`rtgenre.training.corpus.gm_family`).  Rendered with
FluidSynth these songs form the ``midi`` corpus (``tools/corpus_midi.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mido
import numpy as np

from rtgenre.training.corpus import gm_family

TPB = 480  # ticks per beat
KICK, SNARE, RIM, CLAP, HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE, TOM = 36, 38, 37, 39, 42, 44, 46, 49, 51, 45

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {
    "major": [(0, 4, 5, 3), (0, 3, 4, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 0, 4)],
    "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 0, 5, 4)],
    "jazz": [(1, 4, 0, 5), (0, 5, 1, 4), (2, 5, 1, 4)],
    "blues": [(0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4)],
}


@dataclass(frozen=True)
class Style:
    """How one style is played.

    Drum patterns are 16-step strings per instrument (``x`` loud hit, ``o``
    soft hit, ``.`` rest) over one 4/4 bar.
    """

    genre: str
    bpm: tuple[float, float]
    mode: str  # major | minor | jazz | blues | any
    drums: dict[int, str] = field(default_factory=dict)
    bass: str = "x.......x......."  # 16-step rhythm of the bass line
    chords: str = "block"  # block | strum8 | power8 | arp | stab | pad
    bass_walk: bool = False  # quarter-note walking line instead of roots/fifths
    swing: float = 0.0  # delay of off-beat 8ths, fraction of an 8th
    programs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # part -> GM programs to choose from
    lead_prob: float = 0.7
    lead_steps: tuple[int, ...] = (2, 4)  # note lengths of the melody in 16ths
    velocity: tuple[int, int] = (70, 105)


STYLES: dict[str, Style] = {
    "rock": Style("rock", (100, 140), "any", {KICK: "x.......x.x.....", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x.", CRASH: "x..............."},
                  "x.x.x.x.x.x.x.x.", "power8", programs={"chords": (29, 30, 27), "bass": (33, 34), "lead": (29, 30, 52, 53)}),
    "metal": Style("metal", (140, 190), "minor", {KICK: "xxxxxxxxxxxxxxxx", SNARE: "....x.......x...", CRASH: "x.......x.......", RIDE: "x.x.x.x.x.x.x.x."},
                   "xxxxxxxxxxxxxxxx", "power8", programs={"chords": (30,), "bass": (33, 34), "lead": (30, 29)}, lead_steps=(1, 2), velocity=(95, 127)),
    "punk": Style("punk", (165, 200), "major", {KICK: "x...x...x...x...", SNARE: "..x...x...x...x.", HAT: "x.x.x.x.x.x.x.x.", CRASH: "x..............."},
                  "x.x.x.x.x.x.x.x.", "power8", programs={"chords": (30, 29), "bass": (34, 33), "lead": (52, 53, 29)}, velocity=(95, 127)),
    "pop": Style("pop", (95, 125), "major", {KICK: "x.....x.x.......", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x.", CLAP: "....x.......x..."},
                 "x.....x.x.......", "block", programs={"chords": (0, 4, 88, 89, 24), "bass": (33, 38), "lead": (52, 53, 54, 80)}, lead_prob=0.9),
    "electronic": Style("electronic", (110, 135), "minor", {KICK: "x...x...x...x...", HAT: "..x...x...x...x.", CLAP: "....x.......x..."},
                        "x.xx.x.xx.xx.x.x", "arp", programs={"chords": (81, 80, 84, 87), "bass": (38, 39), "lead": (80, 81, 82), "pad": (88, 89, 90, 94)}, lead_steps=(1, 2)),
    "dance": Style("dance", (120, 130), "minor", {KICK: "x...x...x...x...", CLAP: "....x.......x...", OPEN_HAT: "..x...x...x...x.", HAT: "x.x.x.x.x.x.x.x."},
                   "..x...x...x...x.", "stab", programs={"chords": (0, 16, 17, 81), "bass": (38, 39), "lead": (80, 81, 54)}),
    "hip-hop": Style("hip-hop", (80, 98), "minor", {KICK: "x......x..x.....", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."},
                     "x......x..x.....", "block", swing=0.35, programs={"chords": (4, 5, 0, 48), "bass": (38, 33), "lead": (54, 80, 11)}, lead_prob=0.5),
    "r&b/soul": Style("r&b/soul", (68, 98), "major", {KICK: "x.......x.x.....", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."},
                      "x..x..x.x.......", "block", swing=0.2, programs={"chords": (4, 16, 0), "bass": (33,), "lead": (52, 53, 65, 61), "pad": (48, 49)}, lead_prob=0.9),
    "funk": Style("funk", (95, 115), "minor", {KICK: "x..x..x...x..x..", SNARE: "....x..o.o..x..o", HAT: "xxxxxxxxxxxxxxxx"},
                  "x..x.xx...x.x.x.", "stab", programs={"chords": (27, 28, 4), "bass": (36, 37), "lead": (61, 62, 56)}, lead_steps=(1, 2)),
    "jazz": Style("jazz", (110, 200), "jazz", {RIDE: "x...x.x.x...x.x.", PEDAL_HAT: "....x.......x...", KICK: "x..............."},
                  "x...x...x...x...", "block", swing=0.5, bass_walk=True, programs={"chords": (0, 4, 26), "bass": (32,), "lead": (65, 66, 56, 64)}, lead_prob=0.85),
    "blues": Style("blues", (70, 110), "blues", {KICK: "x.......x.......", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."},
                   "x.x.x.x.x.x.x.x.", "strum8", swing=0.5, programs={"chords": (0, 25, 27, 16), "bass": (33, 32), "lead": (26, 27, 29, 65)}, lead_prob=0.9),
    "country": Style("country", (100, 140), "major", {KICK: "x.......x.......", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."},
                     "x.......x.......", "strum8", programs={"chords": (25, 24), "bass": (32, 33), "lead": (110, 105, 25, 52)}, lead_prob=0.9),
    "folk": Style("folk", (80, 120), "any", {}, "x.......x.......", "arp", programs={"chords": (24, 25, 46), "bass": (32,), "lead": (73, 40, 21, 52, 75)}, lead_prob=0.9, velocity=(55, 90)),
    "classical": Style("classical", (60, 120), "any", {}, "x...x...x...x...", "arp", programs={"chords": (48, 0, 6, 46), "bass": (42, 43, 48), "lead": (40, 73, 68, 71, 60, 41)},
                       lead_prob=1.0, lead_steps=(2, 4, 8), velocity=(50, 95)),
    "ambient": Style("ambient", (50, 80), "any", {}, "x...............", "pad", programs={"chords": (88, 89, 91, 94, 95, 52), "bass": (38, 88), "lead": (8, 9, 11, 79, 98)},
                     lead_prob=0.6, lead_steps=(4, 8), velocity=(40, 75)),
}


class _Song:
    """Collects notes per channel and writes a type-1 MIDI file."""

    def __init__(self, bpm: float, swing: float) -> None:
        self.bpm, self.swing = bpm, swing
        self.tracks: dict[int, list[tuple[int, mido.Message]]] = {}
        self.families: set[str] = set()

    def program(self, ch: int, program: int) -> None:
        self.tracks.setdefault(ch, []).append((0, mido.Message("program_change", channel=ch, program=program)))
        self.tracks[ch].append((0, mido.Message("control_change", channel=ch, control=91, value=60)))
        fam = gm_family(program)
        if fam:
            self.families.add(fam)

    def note(self, ch: int, pitch: int, step: float, steps: float, vel: int) -> None:
        """Add a note starting at 16th ``step`` lasting ``steps`` 16ths (swing applied)."""
        if not 0 <= pitch <= 127:
            return
        start = step + (self.swing * 1.0 if int(step) % 4 == 2 and step == int(step) else 0.0)
        t0 = int(start * TPB / 4)
        t1 = max(t0 + 1, int((start + steps) * TPB / 4) - 10)
        ev = self.tracks.setdefault(ch, [])
        ev.append((t0, mido.Message("note_on", channel=ch, note=pitch, velocity=int(np.clip(vel, 1, 127)))))
        ev.append((t1, mido.Message("note_off", channel=ch, note=pitch, velocity=0)))

    def midi(self) -> mido.MidiFile:
        mf = mido.MidiFile(type=1, ticks_per_beat=TPB)
        meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(self.bpm), time=0)])
        mf.tracks.append(meta)
        for ch in sorted(self.tracks):
            tr = mido.MidiTrack()
            now = 0
            for t, msg in sorted(self.tracks[ch], key=lambda e: (e[0], e[1].type != "note_off")):
                tr.append(msg.copy(time=t - now))
                now = t
            mf.tracks.append(tr)
        return mf


def _chord(scale: tuple[int, ...], degree: int, sevenths: bool) -> list[int]:
    notes = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4, 6)[: 4 if sevenths else 3]]
    return notes


def generate(style: Style, seconds: float, rng: np.random.Generator) -> tuple[mido.MidiFile, dict]:
    """Draw one song of ``style`` lasting about ``seconds``.

    Returns
    -------
    mido.MidiFile, dict
        The song and its labels: ``{"genre": style.genre, "instruments": [...], "bpm": float}``.
    """
    bpm = float(rng.uniform(*style.bpm))
    song = _Song(bpm, style.swing)
    mode = style.mode if style.mode != "any" else ("major" if rng.random() < 0.5 else "minor")
    scale = MINOR if mode == "minor" or (mode == "blues" and rng.random() < 0.3) else MAJOR
    prog = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
    root = 48 + int(rng.integers(-5, 7))
    bars = max(2, int(np.ceil(seconds * bpm / 240.0)))
    lo, hi = style.velocity
    vel = lambda: int(rng.integers(lo, hi + 1))
    pick = lambda part: int(rng.choice(style.programs[part]))

    if style.drums:
        song.families.add("drums")
    song.program(1, pick("bass"))
    song.program(2, pick("chords"))
    has_pad = "pad" in style.programs and rng.random() < 0.7
    has_lead = rng.random() < style.lead_prob
    if has_pad:
        song.program(3, pick("pad"))
    if has_lead:
        song.program(4, pick("lead"))
    sevenths = mode == "jazz" or style.genre in ("r&b/soul", "funk")
    mel = 7 + int(rng.integers(0, 5))  # melody position on the scale (index into two octaves)
    for bar in range(bars):
        deg = prog[bar % len(prog)]
        chord = [root + 12 + n for n in _chord(scale, deg, sevenths)]
        base = bar * 16
        for inst, pattern in style.drums.items():
            for s, c in enumerate(pattern):
                if c != "." and not (inst == CRASH and bar % 4):
                    song.note(9, inst, base + s, 1, vel() if c == "x" else vel() // 2)
        bass_root = root - 12 + scale[deg % 7]
        if style.bass_walk:
            for beat in range(4):
                step = scale[(deg + (0, 2, 4, 5)[beat]) % 7] - scale[deg % 7]
                song.note(1, bass_root + step % 12, base + 4 * beat, 4, vel())
        else:
            for s, c in enumerate(style.bass):
                if c != ".":
                    song.note(1, bass_root + (7 if s in (8, 12) and rng.random() < 0.3 else 0), base + s, 2 if style.bass.count("x") > 8 else 4, vel())
        if style.chords == "block":
            hits = (0, 8) if rng.random() < 0.5 else (0,)
            for s in hits:
                for n in chord:
                    song.note(2, n, base + s, 16 // len(hits), vel() - 10)
        elif style.chords == "pad":
            for n in chord:
                song.note(2, n, base, 16, vel())
        elif style.chords == "power8":
            for s in range(0, 16, 2):
                for n in (chord[0] - 12, chord[0] - 5, chord[0]):
                    song.note(2, n, base + s, 2, vel())
        elif style.chords == "strum8":
            for s in range(0, 16, 2):
                for k, n in enumerate(chord):
                    song.note(2, n, base + s + 0.1 * k, 2, vel() - 15)
        elif style.chords == "arp":
            order = chord + [chord[1] + 12]
            for s in range(0, 16, 2 if style.genre != "electronic" else 1):
                song.note(2, order[(s // (2 if style.genre != "electronic" else 1)) % len(order)], base + s, 2, vel() - 10)
        elif style.chords == "stab":
            for s, c in enumerate("..x...x...x..x.x" if style.genre == "funk" else "..x...x...x...x."):
                if c == "x":
                    for n in chord:
                        song.note(2, n, base + s, 1, vel())
        if has_pad:
            for n in chord:
                song.note(3, n - 12, base, 16, vel() - 25)
        if has_lead:
            s = 0
            while s < 16:
                length = int(rng.choice(style.lead_steps))
                mel = int(np.clip(mel + rng.integers(-2, 3), 0, 13))
                if rng.random() < 0.85:
                    pitch = root + 24 + scale[mel % 7] + 12 * (mel // 7) - 12
                    song.note(4, pitch, base + s, length, vel())
                s += length
    labels = {"genre": style.genre, "instruments": sorted(song.families), "bpm": round(bpm, 1)}
    return song.midi(), labels
