"""The short-window content classifier: its weights file, its outputs, and the gate's timing on real talk and music."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.card import load_card
from rtgenre.content import SUFFIX, ContentClassifier, for_card, frame_stats
from rtgenre.errors import ModelCorruptError

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RTGENRE_SHARED", ROOT.parent / "shared" / "data"))
LABELS = ("music", "speech", "speech over music")


def write_weights(path: Path, labels=LABELS, dim: int = 4, hidden: int = 3, frames: int = 5, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"labels": np.array(labels), "frames": np.int64(frames), "mean": rng.random(2 * dim, np.float32), "scale": rng.random(2 * dim, np.float32) + 0.5,
              "w1": rng.standard_normal((2 * dim, hidden)).astype(np.float32), "b1": rng.standard_normal(hidden).astype(np.float32),
              "w2": rng.standard_normal((hidden, len(labels))).astype(np.float32), "b2": rng.standard_normal(len(labels)).astype(np.float32)}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_outputs_are_the_network_of_the_newest_frames(tmp_path):
    path = write_weights(tmp_path / "m.content.npz")
    clf = ContentClassifier(path)
    z = np.load(path)
    feats = np.random.default_rng(1).random((20, 4), np.float32)
    p = clf.process(feats)
    x = (np.concatenate([feats[-5:].mean(0), feats[-5:].std(0)]) - z["mean"]) / z["scale"]
    logits = np.maximum(x @ z["w1"] + z["b1"], 0) @ z["w2"] + z["b2"]
    np.testing.assert_allclose(p, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    assert p.dtype == np.float32 and p.shape == (3,)
    feats[:-5] = 100.0  # frames older than the newest 5 do not matter
    np.testing.assert_allclose(clf.process(feats), p, rtol=1e-6)
    np.testing.assert_allclose(clf.process(np.stack([feats, feats])), np.stack([p, p]), rtol=1e-6)  # batched
    assert frame_stats(feats[-5:]).shape == (8,)


def test_labels_follow_the_heads_order(tmp_path):
    path = write_weights(tmp_path / "m.content.npz")
    feats = np.random.default_rng(2).random((6, 4), np.float32)
    p = ContentClassifier(path).process(feats)
    q = ContentClassifier(path, ("speech over music", "music", "speech")).process(feats)
    np.testing.assert_allclose(q, p[[2, 0, 1]], rtol=1e-6)


@pytest.mark.parametrize("override, labels", [
    ({"labels": np.array(["music", "talk", "speech over music"])}, LABELS),
    ({"w2": np.zeros((2, 3), np.float32)}, LABELS),
    ({"scale": np.ones(5, np.float32)}, LABELS),
    ({}, ("music", "speech")),
])
def test_a_file_that_does_not_fit_is_refused(tmp_path, override, labels):
    with pytest.raises(ModelCorruptError, match="does not fit"):
        ContentClassifier(write_weights(tmp_path / "m.content.npz", **override), labels)


def test_an_unreadable_file_is_refused(tmp_path):
    bad = tmp_path / "m.content.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(ModelCorruptError, match="unreadable"):
        ContentClassifier(bad)
    np.savez(bad, labels=np.array(LABELS))
    with pytest.raises(ModelCorruptError, match="unreadable"):
        ContentClassifier(bad)


@pytest.mark.parametrize("model", ["rtgenre", "rtgenre-duo"])
def test_the_shipped_models_have_one_and_their_cards_record_it(model):
    card = load_card(model)
    clf = for_card(card)
    assert clf is not None and clf.labels == card.head("content").labels and clf.feature_dim == 753
    assert (card.onnx_path.parent / f"{card.name}{SUFFIX}").is_file()
    assert "content_classifier" in card.raw and card.raw["content_classifier"]["frames"] == clf.frames
    # the duo's encoder is a stack (MSD_musicnn, then MTT_musicnn): its classifier reads the first encoder's features only
    feats = np.random.default_rng(0).standard_normal((2, clf.frames, card.split.encoder.feature_dim)).astype(np.float32)
    other = feats.copy()
    other[..., 753:] = 0.0
    np.testing.assert_array_equal(clf.process(feats), clf.process(other))
    assert card.split.encoder.feature_dim == 753 * len(card.raw["encoder"]["name"].split("+"))


def test_a_classifier_that_reads_no_whole_encoder_is_refused(tmp_path):
    import dataclasses

    card = load_card("rtgenre-duo")
    write_weights(tmp_path / f"{card.name}{SUFFIX}", dim=1000)  # found beside the graph: only the folder matters here
    with pytest.raises(ModelCorruptError, match="reads 1000 features, the encoder gives 1506"):
        for_card(dataclasses.replace(card, onnx_path=tmp_path / card.onnx_path.name))


def test_models_without_a_file_or_split_keep_the_content_head(tmp_path):
    pytest.importorskip("onnx")
    from content_model import build_content_model

    assert for_card(load_card(build_content_model(tmp_path))) is None  # no split, no file


# -- the gate on real recordings: music, then talk never trained on, then music --

MUSIC_FILE = SHARED / "real-music" / "indie_rock.mp3"
TALK_FILE = SHARED / "train" / "speech" / "asr_testclips" / "speech" / "apollo11.ogg"


@pytest.mark.skipif(not (MUSIC_FILE.is_file() and TALK_FILE.is_file()), reason="../shared/data is not available")
def test_listen_turns_to_talk_and_back_within_3_s_on_real_recordings(tmp_path):
    from rtgenre.training.realdata import read_audio

    level = lambda x: x * np.float32(0.1 / (np.sqrt(np.mean(x**2)) + 1e-9))
    music, talk = read_audio(MUSIC_FILE), read_audio(TALK_FILE)
    r = 16000
    # the talk is Apollo 11 air-to-ground radio after the 30 s that training saw of it
    audio = np.concatenate([level(music[: 15 * r]), level(talk[40 * r : 55 * r]), level(music[15 * r : 29 * r])])
    sf.write(tmp_path / "programme.wav", audio, r)
    proc = subprocess.run([sys.executable, "-m", "rtgenre", "listen", "--input", str(tmp_path / "programme.wav"), "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    gate = [(e["event"], e["t"]) for e in events if e["event"] in ("talk", "music")]
    assert [k for k, _ in gate] == ["music", "talk", "music"], gate
    assert 15.0 <= gate[1][1] <= 18.0 and 30.0 <= gate[2][1] <= 33.0, gate  # window end of the confirming event, within 3 s
    preds = [e for e in events if e["event"] == "prediction"]
    assert all(p["heads"] == {} for p in preds if gate[1][1] <= p["t"] < gate[2][1] and p["content"]["top"] == "speech")
    assert not [e for e in events if e["event"] == "change" and e["t"] > gate[1][1] and e["t"] < gate[2][1]]  # no genre from talk


CODEC2 = SHARED / "train" / "speech" / "codec2_samples" / "speech"


@pytest.mark.skipif(not CODEC2.is_dir(), reason="../shared/data is not available")
def test_the_clips_reported_as_not_speech_are_the_constant_envelope_ones():
    pytest.importorskip("torch")
    from rtgenre.training.content import NOT_SPEECH

    def spread_db(path: Path) -> float:  # 5th to 95th percentile of 20 ms levels: speech pauses, a modem does not
        x, sr = sf.read(str(path), dtype="float32")
        n = int(0.02 * sr)
        rms = np.sqrt(np.mean(x[: len(x) // n * n].reshape(-1, n) ** 2, axis=1)) + 1e-9
        return float(np.diff(np.percentile(20 * np.log10(rms), [5, 95]))[0])

    spreads = {f"codec2_samples/speech/{p.name}": spread_db(p) for p in sorted(CODEC2.glob("*.ogg"))}
    modem = {k for k in spreads if k in NOT_SPEECH}
    assert modem == set(NOT_SPEECH)
    assert all(spreads[k] < 8 for k in modem) and all(v > 15 for k, v in spreads.items() if k not in modem), spreads


def test_a_modem_clip_and_a_mix_holding_one_are_recognised():
    pytest.importorskip("torch")
    from rtgenre.training.content import is_modem
    from rtgenre.training.realdata import Clip

    speech = "/data/train/speech/codec2_samples/speech/"
    assert is_modem(Clip("a", "speech", speech + "vk2tpm_004.ogg", "g"))
    assert is_modem(Clip("m", "mix", speech + "david4.ogg+/data/train/4q/x.mp3", "g|h"))
    assert not is_modem(Clip("b", "speech", speech + "ve9qrp.ogg", "g"))
    assert not is_modem(Clip("c", "speech", speech + "not_david4.ogg", "g"))
