"""Build the ``music21`` corpus: scores from music21's bundled corpus, rendered with FluidSynth.

Composers' works (Bach, Palestrina, Monteverdi, Beethoven, Mozart, Haydn...)
are labelled ``classical``; the folk-tune collections (Ryan's Mammoth, O'Neill,
Essen, Aird) ``folk``.  Every part is given a General MIDI program drawn from a
genre-appropriate set, so the instrument families are exact labels::

    python tools/corpus_music21.py [--out corpora/music21] [--scores 150] [--max-seconds 180] [--seed 0]

Needs ``pip install music21``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtgenre.errors import DependencyMissingError
from rtgenre.progress import WorkProgress
from rtgenre.training.corpus import Track, gm_family, render_midi, write_manifest

FOLK = {"ryansMammoth", "oneills1850", "essenFolksong", "airdsAirs", "miscFolk", "nottingham-dataset"}
SKIP = {"demos", "theoryExercises", "leadSheet"}
VOCAL = {"palestrina", "trecento", "monteverdi", "josquin", "ciconia", "luca", "lusitano"}
PROGRAMS = {
    "classical": (0, 6, 19, 40, 41, 42, 43, 48, 52, 60, 68, 70, 71, 73),
    "vocal": (52, 52, 53, 19, 48),
    "folk": (21, 22, 24, 25, 40, 73, 75, 105, 110),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("corpora/music21"))
    ap.add_argument("--scores", type=int, default=150, help="scores to render (default: 150)")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="keep at most this much of each rendering")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        from music21 import corpus, instrument, stream
    except ImportError:
        raise DependencyMissingError("music21 is not installed", "pip install music21") from None
    rng = np.random.default_rng(args.seed)
    by_collection: dict[str, list[Path]] = {}
    for p in map(Path, corpus.getPaths()):
        coll = p.parts[p.parts.index("corpus") + 1]
        if coll not in SKIP:
            by_collection.setdefault(coll, []).append(p)
    # round-robin over collections so that the small ones are not drowned by Palestrina
    order = {c: list(rng.permutation(len(ps))) for c, ps in by_collection.items()}
    picks: list[tuple[str, Path]] = []
    while len(picks) < args.scores and any(order.values()):
        for c in sorted(order):
            if order[c] and len(picks) < args.scores:
                picks.append((c, by_collection[c][order[c].pop()]))
    tracks = []
    t0 = time.time()
    with WorkProgress("music21 corpus", len(picks), "scores") as bar:
        for i, (coll, path) in enumerate(bar.track(picks)):
            try:
                score = corpus.parse(str(path))
            except Exception as e:  # noqa: BLE001 - music21 raises many parser-specific types on odd files
                print(f"skip {path.name}: {type(e).__name__}")
                continue
            if isinstance(score, stream.Opus):
                score = score.scores[0]
            genre = "folk" if coll in FOLK else "classical"
            choices = PROGRAMS["vocal" if coll in VOCAL else genre]
            families = set()
            for part in score.parts:
                for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
                    old.activeSite.remove(old)
                inst = instrument.Instrument()
                inst.midiProgram = int(rng.choice(choices))
                part.insert(0, inst)
                families.add(gm_family(inst.midiProgram))
            stem = args.out / genre / f"{coll}-{i:03d}-{path.stem}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            try:
                score.write("midi", fp=str(stem.with_suffix(".mid")))
            except Exception as e:  # noqa: BLE001 - music21 export errors on malformed scores
                print(f"skip {path.name}: {type(e).__name__}")
                continue
            wav = stem.with_suffix(".wav")
            seconds = render_midi(stem.with_suffix(".mid"), wav)
            if seconds > args.max_seconds:
                audio, rate = sf.read(str(wav), frames=int(args.max_seconds * 16000), dtype="int16")
                sf.write(str(wav), audio, rate, subtype="PCM_16")
                seconds = len(audio) / rate
            if seconds < 8.0:
                wav.unlink()
                continue
            tracks.append(Track(wav, seconds, genre, sorted(f for f in families if f), {"source": f"music21:{coll}/{path.name}"}))
            bar.add_audio(seconds)
            write_manifest(args.out, tracks)  # after every score, so that an interrupted build is usable
            if i % 10 == 0:
                print(f"{i}/{len(picks)} scores, {time.time() - t0:.0f} s", flush=True)
    print(f"music21 corpus: {len(tracks)} scores, {sum(t.seconds for t in tracks) / 3600:.2f} h -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
