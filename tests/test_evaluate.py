"""rtgenre eval: data sets, genre mapping, scores, end to end on a small exported model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.card import load_card
from rtgenre.errors import DataInvalidError, UsageError
from rtgenre.evaluate import (
    Scores,
    add_eval_arguments,
    labelled_files,
    map_labels,
    run_eval,
)

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-music"


def _write(path: Path, seconds: float = 8.5, rate: int = 22050, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32), rate)
    return path


def test_labelled_files_gtzan_layout_and_csv(tmp_path):
    _write(tmp_path / "g" / "rock" / "a.wav")
    _write(tmp_path / "g" / "jazz" / "b.au")
    (tmp_path / "g" / "jazz" / "notes.txt").write_text("x")
    assert labelled_files(tmp_path / "g") == [(tmp_path / "g" / "jazz" / "b.au", "jazz"), (tmp_path / "g" / "rock" / "a.wav", "rock")]
    _write(tmp_path / "c" / "x.wav")
    (tmp_path / "l.csv").write_text("file,style,broad_genre\nx.wav,bossa nova,latin\n")
    assert labelled_files(tmp_path / "c", tmp_path / "l.csv") == [(tmp_path / "c" / "x.wav", "bossa nova")]
    assert labelled_files(tmp_path / "c", tmp_path / "l.csv", "broad_genre") == [(tmp_path / "c" / "x.wav", "latin")]
    with pytest.raises(DataInvalidError, match="no column 'mood'"):
        labelled_files(tmp_path / "c", tmp_path / "l.csv", "mood")
    (tmp_path / "m.csv").write_text("file,style\ngone.wav,x\n")
    with pytest.raises(DataInvalidError, match="missing"):
        labelled_files(tmp_path / "c", tmp_path / "m.csv")
    with pytest.raises(DataInvalidError, match="does not exist"):
        labelled_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataInvalidError, match="No labelled audio"):
        labelled_files(tmp_path / "empty")


def test_scores_of_a_known_confusion():
    s = Scores.of(["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"])
    assert s.accuracy == pytest.approx(4 / 6) and s.classes == ["a", "b", "c"]
    assert s.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s.per_class["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert s.per_class["c"]["precision"] == 0.5 and s.per_class["c"]["recall"] == 1.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from rtgenre.training.export import export_model
    from rtgenre.training.labels import GTZAN_MAP, HEADS
    from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec
    from rtgenre.training.musicnn import Musicnn

    torch.manual_seed(0)
    heads = tuple(HeadSpec(n, k, labels) for n, (k, labels) in HEADS.items())
    return export_model(CRNN(Musicnn(), Backend(BackendConfig(heads=heads))), tmp_path_factory.mktemp("engines"), "m", {"gtzan": GTZAN_MAP}, {})


def test_map_labels_sums_probabilities_onto_the_target_vocabulary(model):
    card = load_card(model)
    labels = list(card.head("genre").labels)
    p = np.zeros((1, len(labels)), np.float32)
    p[0, labels.index("rock")], p[0, labels.index("punk")], p[0, labels.index("ambient")] = 0.3, 0.3, 0.4
    targets, q = map_labels(card, "genre", p, "gtzan")
    assert q[0, targets.index("rock")] == pytest.approx(0.6) and q.sum() == pytest.approx(0.6)  # ambient maps to nothing
    assert map_labels(card, "genre", p, None)[0] == labels
    with pytest.raises(UsageError, match="no 'fma' mapping"):
        map_labels(card, "genre", p, "fma")


def _args(*argv):
    p = argparse.ArgumentParser()
    add_eval_arguments(p)
    return p.parse_args(list(argv))


def test_eval_end_to_end_json_plot_and_record(model, tmp_path, capsys):
    pytest.importorskip("rtgenre.pipeline")
    _write(tmp_path / "d" / "rock" / "r.wav", seed=1)
    _write(tmp_path / "d" / "jazz" / "j.wav", seed=2)
    assert run_eval(_args("--data", str(tmp_path / "d"), "--model", str(model), "--map", "gtzan", "--json", "--hop", "0.5",
                          "--plot", str(tmp_path / "cm.png"), "--record", "tiny")) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["file"] for c in out["clips"]] == ["j.wav", "r.wav"] and out["clip"]["n"] == 2
    # 8.5 s clips, 7.5 s windows every 0.5 s
    assert out["window"]["n"] == sum(c["windows"] for c in out["clips"]) and all(2 <= c["windows"] <= 4 for c in out["clips"])
    assert set(out["clip"]["classes"]) >= {"jazz", "rock"}
    assert (tmp_path / "cm.png").stat().st_size > 1000
    rec = load_card(model).raw["evaluation"]["tiny"]
    assert rec["clip_accuracy"] == out["clip"]["accuracy"] and len(rec["clips"]) == 2
    assert run_eval(_args("--data", str(tmp_path / "d"), "--model", str(model))) == 0
    assert "clip accuracy" in capsys.readouterr().out


def test_eval_rejects_bad_options(model, tmp_path):
    _write(tmp_path / "d" / "rock" / "r.wav")
    with pytest.raises(UsageError):
        run_eval(_args("--data", str(tmp_path / "d"), "--model", str(model), "--hop", "0"))
    with pytest.raises(UsageError):
        run_eval(_args("--data", str(tmp_path / "d"), "--model", str(model), "--label-column", "style"))


@pytest.mark.skipif(not (REAL / "LABELS.csv").is_file(), reason="../shared/data/real-music is not available")
def test_real_music_labels_resolve():
    files = labelled_files(REAL, REAL / "LABELS.csv", "broad_genre")
    assert len(files) == 18 and all(p.is_file() for p, _ in files)
