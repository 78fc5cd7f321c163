"""Label vocabularies of the real-data model and how each data set's labels map onto them.

Owns the four heads' label sets (``genre`` with reggae and latin, ``mood`` as
Russell quadrants with plain names, ``instruments``, ``content``), the card
mappings (``gtzan``, ``broad``, ``quadrant``), and the translation of every
data set's own labels (AllMusic genres of 4q, GTZAN genres, instrument names,
speech/music labels) into targets for those heads.
"""

from __future__ import annotations

from rtgenre.training import labels as v1

GENRES = v1.GENRES + ("reggae", "latin")
MOODS = ("happy", "tense", "sad", "calm")
INSTRUMENTS = v1.INSTRUMENTS
CONTENT = ("music", "speech", "speech over music")

HEADS: dict[str, tuple[str, tuple[str, ...]]] = {
    "genre": ("multiclass", GENRES),
    "mood": ("multiclass", MOODS),
    "instruments": ("multilabel", INSTRUMENTS),
    "content": ("multiclass", CONTENT),
}

#: Mood label → Russell quadrant of the 4q data (Q1 positive valence / high
#: arousal, Q2 negative / high, Q3 negative / low, Q4 positive / low).
QUADRANT_MAP: dict[str, str] = {"happy": "Q1", "tense": "Q2", "sad": "Q3", "calm": "Q4"}
GTZAN_MAP: dict[str, str | None] = {**v1.GTZAN_MAP, "reggae": "reggae", "latin": None}
BROAD_MAP: dict[str, str | None] = {**v1.BROAD_MAP, "reggae": "reggae", "latin": "latin"}
MAPPINGS = {"gtzan": GTZAN_MAP, "broad": BROAD_MAP, "quadrant": QUADRANT_MAP}

#: GTZAN genre → ours (the only many-to-one in GTZAN_MAP, disco, goes to dance).
FROM_GTZAN: dict[str, str] = {"blues": "blues", "classical": "classical", "country": "country", "disco": "dance", "hiphop": "hip-hop",
                              "jazz": "jazz", "metal": "metal", "pop": "pop", "reggae": "reggae", "rock": "rock"}
#: 4q ``genre_single`` → GTZAN vocabulary, for the genre evaluation (pop_rock, rnb, ... have no GTZAN genre).
SINGLE_TO_GTZAN: dict[str, str] = {"blues": "blues", "classical": "classical", "country": "country", "hiphop": "hiphop",
                                   "jazz": "jazz", "reggae": "reggae"}
#: AllMusic genre (4q ``allmusic_genres``) → the genres of ours it allows; genres not listed
#: (Holiday, Stage & Screen, Avant-Garde, Religious, Comedy/Spoken, Children's, International) say nothing.
ALLMUSIC: dict[str, tuple[str, ...]] = {
    "Pop/Rock": ("pop", "rock", "metal", "punk"), "Jazz": ("jazz",), "Electronic": ("electronic", "dance", "ambient"),
    "R&B": ("r&b/soul", "funk"), "Rap": ("hip-hop",), "Blues": ("blues",), "Country": ("country",), "Latin": ("latin",),
    "Folk": ("folk",), "New Age": ("ambient",), "Reggae": ("reggae",), "Classical": ("classical",), "Vocal": ("pop", "jazz"),
    "Easy Listening": ("pop", "ambient"),
}
#: Tags of the musicnn taggers for each label of ours (v1's map, plus the new genres, which have none).
TAG_MAP = {**v1.TAG_MAP, "genre": {**v1.TAG_MAP["genre"], "reggae": {}, "latin": {}}}
#: Genres no tagger tag speaks for: a multi-genre clip's tagger scores cannot share its target with them.
TAGLESS_GENRES: tuple[str, ...] = tuple(g for g in GENRES if not TAG_MAP["genre"].get(g))


def allowed_genres(allmusic: str) -> tuple[str, ...]:
    """Our genres a ``|``-separated AllMusic genre list allows (empty: it says nothing)."""
    out: list[str] = []
    for g in allmusic.split("|"):
        out += [x for x in ALLMUSIC.get(g.strip(), ()) if x not in out]
    return tuple(out)

