"""What the teachers say about labelled files, in the student's vocabularies.

Runs both musicnn teachers on consecutive 187-frame patches of each file,
maps their tags to our labels (:class:`~rtgenre.training.labels.TagMapper`)
and prints the mean label scores per file, so that a student's result on a
data set (``rtgenre eval``) can be told apart from what it inherited::

    python -m rtgenre.training.teacher_report --data DIR [--labels CSV --label-column COL] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from rtgenre.dsp.mel import log_mel
from rtgenre.evaluate import labelled_files
from rtgenre.training.features import FRONTEND, ChunkedFeatures, TeacherTagger
from rtgenre.training.labels import TagMapper
from rtgenre.training.musicnn import TEACHERS, load_teacher, teacher_tags


def teacher_scores(files: list[tuple[Path, str]]) -> list[dict]:
    """Mean mapped teacher scores per file: ``{"file", "label", "genre": [[label, score] x3], "mood": ..., "instruments": [...]}``."""
    student, mtt = load_teacher(TEACHERS[0]), load_teacher(TEACHERS[1])
    features, tagger = ChunkedFeatures(student), TeacherTagger(student, mtt)
    mapper = TagMapper({t: teacher_tags(t) for t in TEACHERS})
    rows = []
    for path, label in files:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        x = soxr.resample(audio.mean(axis=1), rate, FRONTEND.sample_rate).astype(np.float32)
        mel = log_mel(x, FRONTEND)
        scores = {h: s.mean(0) for h, s in mapper.scores(tagger.process(mel, features.process(mel))).items()}
        row = {"file": path.name, "label": label}
        for head, s in scores.items():
            names = list(mapper.tag_map[head])
            order = np.argsort(-s)
            row[head] = [[names[i], round(float(s[i]), 3)] for i in order[:3]]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Mapped teacher scores per labelled file.")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--labels", type=Path, default=None)
    ap.add_argument("--label-column", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = teacher_scores(labelled_files(args.data, args.labels, args.label_column))
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            fmt = lambda v: ", ".join(f"{n} {p:.2f}" for n, p in v)
            print(f"{r['file'][:26]:26} {r['label'][:14]:14} genre: {fmt(r['genre'])} | mood: {fmt(r['mood'][:1])} | instruments: {fmt(r['instruments'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
