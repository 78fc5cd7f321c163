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
    file_groups,
    labelled_files,
    map_labels,
    run_eval,
)

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-music"
SPEECH_DATA = REAL.parent / "train" / "speech"


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


# -- every head, on a tiny model whose outputs follow the band energies (tests/content_model.py) --

@pytest.fixture(scope="module")
def content_model(tmp_path_factory):
    pytest.importorskip("onnx")
    from content_model import build_content_model

    d = tmp_path_factory.mktemp("content-model")
    return {"gated": build_content_model(d / "gated"), "plain": build_content_model(d / "plain", content=False)}


def _program(path: Path, parts, rate: int = 22050) -> Path:
    from content_model import render_program

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, render_program(parts, rate), rate)
    return path


def _eval_json(capsys, *argv) -> dict:
    assert run_eval(_args(*argv, "--json")) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_content_confusion_silence_and_short_files(content_model, tmp_path, capsys):
    d = tmp_path / "d"
    _program(d / "music" / "rock.wav", [("rock", 12)])
    _program(d / "music" / "mislabelled.wav", [("talk", 12)])
    _program(d / "speech" / "talk.wav", [("talk", 12)])
    _program(d / "mixed" / "dj.wav", [("talk+pop", 12)])
    quiet = _program(d / "speech" / "quiet.wav", [("talk", 12)])
    x, rate = sf.read(quiet)
    sf.write(quiet, x * 1e-3, rate)  # about -80 dBFS: below the level gate
    _program(d / "speech" / "short.wav", [("talk", 3)])
    out = _eval_json(capsys, "--data", str(d), "--model", str(content_model["gated"]), "--head", "content")
    assert out["head"] == "content" and [s["file"] for s in out["skipped"]] == [str(d / "speech" / "short.wav")]
    w = out["window"]
    assert w["classes"] == ["music", "silence/noise", "speech", "speech over music"]  # 'mixed' reads as speech over music
    n = out["clips"][0]["windows"]
    assert n == 5 and all(c["windows"] == n for c in out["clips"])  # 12 s clips, 7.5 s windows every 1 s
    assert w["confusion"] == [[n, 0, n, 0], [0, 0, 0, 0], [0, n, n, 0], [0, 0, 0, n]]
    assert w["accuracy"] == pytest.approx(3 / 5) and out["clip"]["accuracy"] == pytest.approx(3 / 5)
    assert out["clip"]["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.0, 0.5, 1.0]))
    assert run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--head", "content")) == 0
    report = capsys.readouterr().out
    assert "window confusion" in report and "skipped 1 file(s)" in report


def test_eval_content_per_source(content_model, tmp_path, capsys):
    d = tmp_path / "d"
    for i, (kind, label, source) in enumerate([("talk", "speech", "read"), ("talk", "speech", "read"), ("rock", "speech", "telephone"),
                                               ("talk", "speech", "telephone"), ("pop", "music", "")]):
        _program(d / f"c{i}.wav", [(kind, 9.5)])
    (d / "labels.csv").write_text("file,label,source\nc0.wav,speech,read\nc1.wav,speech,read\nc2.wav,speech,telephone\nc3.wav,speech,telephone\nc4.wav,music,\n")
    out = _eval_json(capsys, "--data", str(d), "--labels", str(d / "labels.csv"), "--column", "label", "--group-by", "source",
                     "--model", str(content_model["gated"]), "--head", "content")
    g = out["groups"]
    assert set(g) == {"read", "telephone", "(none)"}
    assert g["read"]["clip"]["accuracy"] == 1.0 and g["telephone"]["clip"]["accuracy"] == 0.5 and g["telephone"]["window"]["n"] == 4
    assert out["clip"]["accuracy"] == pytest.approx(4 / 5) and [c["group"] for c in out["clips"]] == ["read", "read", "telephone", "telephone", "(none)"]


def test_eval_mood_by_quadrant(content_model, tmp_path, capsys):
    d = tmp_path / "d"
    _program(d / "Q1" / "pop.wav", [("pop", 9.5)])
    _program(d / "Q2" / "rock.wav", [("rock", 9.5)])
    _program(d / "Q3" / "rock.wav", [("rock", 9.5)])
    out = _eval_json(capsys, "--data", str(d), "--model", str(content_model["gated"]), "--head", "mood", "--map", "quadrant")
    assert out["clip"]["classes"] == ["Q1", "Q2", "Q3"] and out["clip"]["accuracy"] == pytest.approx(2 / 3)
    assert out["clip"]["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["window"]["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(UsageError, match="does not map the genre head"):
        run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--map", "quadrant"))


def test_eval_instrument_families_and_voice_false_positives(content_model, tmp_path, capsys):
    d = tmp_path / "d"
    _program(d / "female singer" / "talk.wav", [("talk", 9.5)])
    _program(d / "piano" / "pop.wav", [("pop", 9.5)])
    _program(d / "acoustic guitar" / "rock.wav", [("rock", 9.5)])
    _program(d / "Acoustic_guitar" / "dj.wav", [("talk+pop", 9.5)])  # FSDKaggle2018 spelling  # voice and keys, no guitar
    out = _eval_json(capsys, "--data", str(d), "--model", str(content_model["gated"]), "--head", "instruments")
    c = out["clip"]
    assert c["accuracy"] == pytest.approx(3 / 4) and c["n"] == 4
    assert c["per_family"]["guitar"]["detection_rate"] == 0.5 and c["per_family"]["voice"]["detection_rate"] == 1.0
    assert c["per_family"]["voice"]["precision"] == 0.5 and c["per_family"]["keys"]["false_positive_rate"] == pytest.approx(1 / 3)
    assert c["voice_false_positive_rate"] == pytest.approx(1 / 3) and c["instrumental"] == 3
    assert c["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 2 / 3]))
    assert sorted(next(x for x in out["clips"] if x["file"] == "dj.wav")["prediction"]) == ["keys", "voice"]
    assert run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--head", "instruments")) == 0
    assert "voice on instrumental clips 33.3% of 3 clips" in capsys.readouterr().out
    with pytest.raises(UsageError, match="multi-label"):
        run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--head", "instruments", "--plot", str(tmp_path / "x.png")))
    _program(d / "clarinet" / "c.wav", [("pop", 9.5)])
    with pytest.raises(DataInvalidError, match="'clarinet' names no instrument family"):  # clarinet → winds: not a family of this model
        run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--head", "instruments"))


def test_eval_head_errors_and_short_files(content_model, tmp_path, capsys):
    d = tmp_path / "d"
    _program(d / "speech" / "t.wav", [("talk", 9.5)])
    with pytest.raises(UsageError, match="has no 'content' head"):
        run_eval(_args("--data", str(d), "--model", str(content_model["plain"]), "--head", "content"))
    with pytest.raises(UsageError, match="--group-by needs --labels"):
        run_eval(_args("--data", str(d), "--model", str(content_model["gated"]), "--head", "content", "--group-by", "source"))
    _program(d / "speech" / "short.wav", [("talk", 2)])
    (d / "l.csv").write_text("file,label\nspeech/short.wav,speech\n")
    with pytest.raises(DataInvalidError, match="None of the 1 file"):
        run_eval(_args("--data", str(d), "--labels", str(d / "l.csv"), "--model", str(content_model["gated"]), "--head", "content"))
    out = _eval_json(capsys, "--data", str(d), "--labels", str(d / "l.csv"), "--model", str(content_model["gated"]), "--head", "content", "--loop-short")
    assert out["skipped"] == [] and out["clips"][0]["looped"] and out["clips"][0]["windows"] >= 2 and out["clip"]["accuracy"] == 1.0


def test_eval_content_command_line(content_model, tmp_path):
    import os
    import subprocess
    import sys

    d = tmp_path / "d"
    _program(d / "music" / "m.wav", [("pop", 9.5)])
    _program(d / "speech" / "s.wav", [("talk", 9.5)])
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "eval", "--head", "content", "--data", str(d), "--model", str(content_model["gated"]), "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["window"]["accuracy"] == 1.0 and out["window"]["confusion"] == [[2, 0], [0, 2]] and out["clip"]["macro_f1"] == 1.0


@pytest.mark.skipif(not (SPEECH_DATA / "labels.csv").is_file(), reason="../shared/data/train/speech is not available")
def test_speech_labels_resolve_with_sources():
    files = labelled_files(SPEECH_DATA, SPEECH_DATA / "labels.csv", "label")
    groups = file_groups(SPEECH_DATA, SPEECH_DATA / "labels.csv", "source")
    assert {label for _, label in files} == {"speech", "music", "mixed"} and all(p in groups for p, _ in files)
    assert {"librispeech", "asterisk_ivr", "asr_testclips"} <= set(groups.values())
