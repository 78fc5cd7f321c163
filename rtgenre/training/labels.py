"""The label vocabularies of the default model and how teacher tags map onto them.

Owns the three heads' label sets, the tag→label mapping that turns the two
musicnn teachers' 50 tag probabilities (``MSD_musicnn``: Last.fm tags of the
Million Song Dataset; ``MTT_musicnn``: MagnaTagATune) into distillation
targets, and the mapping of our genres to the 10 GTZAN genres.  Both mappings
are written into the model card so that every label's meaning is on record, as
is a coarser ``broad`` mapping (sub-genres folded into their family).

A label's teacher score is the largest probability among its tags (over both
teachers): a soft OR.  ``multiclass`` targets are those scores raised to
:data:`SHARPEN` and normalised to sum to one; ``multilabel`` targets are the
scores times :data:`MULTILABEL_GAIN`, clipped to 1.  Labels without teacher tags (``bass``) are learned only
from exact labels (rendered MIDI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

GENRES = (
    "rock", "metal", "punk", "pop", "electronic", "dance", "hip-hop", "r&b/soul",
    "funk", "jazz", "blues", "country", "folk", "classical", "ambient",
)
MOODS = ("energetic", "happy", "calm", "sad", "aggressive")
INSTRUMENTS = ("voice", "guitar", "keys", "strings", "winds", "drums", "synth", "bass")

GTZAN = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

#: Our genre → GTZAN genre (``None`` where GTZAN has no counterpart).
GTZAN_MAP: dict[str, str | None] = {
    "rock": "rock", "metal": "metal", "punk": "rock", "pop": "pop", "electronic": None,
    "dance": "disco", "hip-hop": "hiphop", "r&b/soul": None, "funk": "disco", "jazz": "jazz",
    "blues": "blues", "country": "country", "folk": None, "classical": "classical", "ambient": None,
}

#: Our genre → broad family (rock, pop, electronic, hip-hop, soul, funk, jazz, blues,
#: country, folk, classical): sub-genres folded into their family, for data sets
#: labelled coarsely (e.g. ``broad_genre`` of ``../shared/data/real-music``).
BROAD_MAP: dict[str, str | None] = {
    "rock": "rock", "metal": "rock", "punk": "rock", "pop": "pop", "electronic": "electronic",
    "dance": "electronic", "hip-hop": "hip-hop", "r&b/soul": "soul", "funk": "funk", "jazz": "jazz",
    "blues": "blues", "country": "country", "folk": "folk", "classical": "classical", "ambient": "electronic",
}

MSD, MTT = "MSD_musicnn", "MTT_musicnn"

#: head → label → teacher → tags (names exactly as in ``rtgenre/models/musicnn/tags.json``).
TAG_MAP: dict[str, dict[str, dict[str, list[str]]]] = {
    "genre": {
        "rock": {MSD: ["rock", "classic rock", "hard rock", "alternative rock", "indie rock", "Progressive rock", "alternative"], MTT: ["rock"]},
        "metal": {MSD: ["metal", "heavy metal"], MTT: ["metal"]},
        "punk": {MSD: ["punk"], MTT: []},
        "pop": {MSD: ["pop", "indie pop"], MTT: ["pop"]},
        "electronic": {MSD: ["electronic", "electronica", "electro", "experimental"], MTT: ["electronic", "synth"]},
        "dance": {MSD: ["dance", "House", "party"], MTT: ["dance", "techno"]},
        "hip-hop": {MSD: ["Hip-Hop"], MTT: []},
        "r&b/soul": {MSD: ["soul", "rnb"], MTT: []},
        "funk": {MSD: ["funk"], MTT: []},
        "jazz": {MSD: ["jazz"], MTT: []},
        "blues": {MSD: ["blues"], MTT: []},
        "country": {MSD: ["country"], MTT: ["country"]},
        "folk": {MSD: ["folk", "acoustic"], MTT: []},
        "classical": {MSD: [], MTT: ["classical", "classic", "harpsichord", "opera", "choral"]},
        "ambient": {MSD: ["ambient", "chillout"], MTT: ["ambient", "new age"]},
    },
    "mood": {
        "energetic": {MSD: ["party", "dance"], MTT: ["fast", "loud", "beat", "beats"]},
        "happy": {MSD: ["happy", "catchy", "easy listening"], MTT: []},
        "calm": {MSD: ["Mellow", "chill", "chillout", "beautiful"], MTT: ["soft", "quiet", "slow", "ambient", "new age"]},
        "sad": {MSD: ["sad"], MTT: []},
        "aggressive": {MSD: ["metal", "heavy metal", "hard rock", "punk"], MTT: ["metal", "weird"]},
    },
    "instruments": {
        "voice": {MSD: ["female vocalists", "male vocalists", "female vocalist"],
                  MTT: ["vocal", "vocals", "voice", "singing", "female", "male", "woman", "man", "male vocal", "female vocal",
                        "male voice", "female voice", "choir", "choral", "opera"]},
        "guitar": {MSD: ["guitar"], MTT: ["guitar", "sitar"]},
        "keys": {MSD: [], MTT: ["piano", "harpsichord"]},
        "strings": {MSD: [], MTT: ["strings", "violin", "cello", "harp"]},
        "winds": {MSD: [], MTT: ["flute"]},
        "drums": {MSD: [], MTT: ["drums", "beat", "beats"]},
        "synth": {MSD: [], MTT: ["synth", "techno"]},
        "bass": {MSD: [], MTT: []},
    },
}

HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "genre": ("multiclass", GENRES),
    "mood": ("multiclass", MOODS),
    "instruments": ("multilabel", INSTRUMENTS),
}

#: Exponent applied to multiclass teacher scores before normalising (sharper targets).
SHARPEN = 2.0
#: Gain on multilabel teacher scores (clipped to 1): musicnn's tag probabilities are
#: calibrated to sparse human tags, where an audible instrument often scores 0.2-0.4;
#: with gain 2 a family counts as present (target >= 0.5) from a score of 0.25.
MULTILABEL_GAIN = 2.0


class TagMapper:
    """Teacher tag probabilities → per-head label scores and targets.

    Parameters
    ----------
    teacher_tags : mapping of str to sequence of str
        Each teacher's 50 tag names in output order (``tags.json``).
    tag_map : mapping
        ``head → label → teacher → tags``; :data:`TAG_MAP` by default.

    Raises
    ------
    ValueError
        When the mapping names a tag the teacher does not have.
    """

    def __init__(self, teacher_tags: Mapping[str, Sequence[str]], tag_map: Mapping = TAG_MAP) -> None:
        self.teachers = list(teacher_tags)
        self.tag_map = tag_map
        offsets, names = {}, []
        for t in self.teachers:
            offsets[t] = len(names)
            names += list(teacher_tags[t])
        self.n_tags = len(names)
        self.index: dict[str, list[list[int]]] = {}
        for head, labels in tag_map.items():
            rows = []
            for label, per_teacher in labels.items():
                idx = []
                for teacher, tags in per_teacher.items():
                    if teacher not in teacher_tags:
                        continue
                    for tag in tags:
                        if tag not in teacher_tags[teacher]:
                            raise ValueError(f"teacher {teacher} has no tag {tag!r} (mapped to {head}/{label})")
                        idx.append(offsets[teacher] + list(teacher_tags[teacher]).index(tag))
                rows.append(idx)
            self.index[head] = rows

    def has_teacher(self, head: str) -> np.ndarray:
        """Boolean mask of the head's labels that have at least one teacher tag."""
        return np.array([bool(i) for i in self.index[head]])

    def scores(self, tags: np.ndarray) -> dict[str, np.ndarray]:
        """Per-head label scores (soft OR of mapped tags).

        Parameters
        ----------
        tags : ndarray, shape (..., n_tags)
            Concatenated tag probabilities of the teachers, in constructor order.

        Returns
        -------
        dict of str to ndarray
            ``head → (..., n_labels)``; 0 for labels without tags.
        """
        tags = np.asarray(tags, dtype=np.float32)
        out = {}
        for head, rows in self.index.items():
            cols = [tags[..., i].max(axis=-1) if i else np.zeros(tags.shape[:-1], np.float32) for i in rows]
            out[head] = np.stack(cols, axis=-1)
        return out

    def targets(self, tags: np.ndarray) -> dict[str, np.ndarray]:
        """Distillation targets: normalised sharpened scores (multiclass) or amplified scores (multilabel)."""
        out = {}
        for head, s in self.scores(tags).items():
            if HEADS[head][0] == "multiclass":
                p = np.power(s, SHARPEN) + 1e-8
                out[head] = p / p.sum(axis=-1, keepdims=True)
            else:
                out[head] = np.minimum(1.0, MULTILABEL_GAIN * s)
        return out
