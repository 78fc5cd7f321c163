"""Build the ``midi`` corpus: generated songs per style, rendered with FluidSynth.

Every song has exact labels (its style's genre and the instrument families it
plays; see :mod:`rtgenre.training.midigen`)::

    python tools/corpus_midi.py [--out corpora/midi] [--per-style 24] [--seconds 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtgenre.progress import WorkProgress
from rtgenre.training.corpus import Track, render_midi, write_manifest
from rtgenre.training.midigen import STYLES, generate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("corpora/midi"))
    ap.add_argument("--per-style", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tracks = []
    with WorkProgress("midi corpus", len(STYLES) * args.per_style, "songs") as bar:
        for name, style in STYLES.items():
            slug = name.replace("/", "-").replace("&", "n")
            for i in bar.track(range(args.per_style)):
                mid, labels = generate(style, args.seconds, rng)
                stem = args.out / slug / f"{slug}-{i:03d}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                mid.save(str(stem.with_suffix(".mid")))
                seconds = render_midi(stem.with_suffix(".mid"), stem.with_suffix(".wav"))
                tracks.append(Track(stem.with_suffix(".wav"), seconds, labels["genre"], labels["instruments"], {"bpm": labels["bpm"], "source": "midigen"}))
                bar.add_audio(seconds)
            print(f"{name}: {args.per_style} songs", flush=True)
    write_manifest(args.out, tracks)
    print(f"midi corpus: {len(tracks)} songs, {sum(t.seconds for t in tracks) / 3600:.2f} h -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
