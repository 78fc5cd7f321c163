"""The shipped default model: its card loads and agrees with its ONNX graph."""

from __future__ import annotations

import pytest

from rtgenre.card import ENGINES_DIR, load_card

CARD = ENGINES_DIR / "rtgenre.json"
pytestmark = pytest.mark.skipif(not CARD.is_file(), reason="the default model is not exported yet (rtgenre/models/rtgenre.json)")

GTZAN = {"blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"}


def test_card_loads_and_label_sets_are_sane():
    card = load_card()  # verifies the ONNX checksum too
    assert card.name == "rtgenre"
    assert [h.name for h in card.heads] == ["genre", "mood", "instruments", "content"]
    assert {"reggae", "latin"} <= set(card.head("genre").labels) and "voice" in card.head("instruments").labels
    for h in card.heads:
        assert h.labels and len(set(h.labels)) == len(h.labels)
    assert card.onnx_path.stat().st_size < 10 * 1024 * 1024


def test_onnx_outputs_match_heads():
    onnx = pytest.importorskip("onnx")
    card = load_card()
    m = onnx.load(str(card.onnx_path))
    assert [i.name for i in m.graph.input] == [card.input_name]
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert set(dims) == {h.output for h in card.heads} | ({card.hash.output} if card.hash else set())
    for h in card.heads:
        assert dims[h.output][1] == len(h.labels)
    mel = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert mel[1:] == [card.window_frames, card.frontend.n_mels] and isinstance(mel[0], str)


def test_gtzan_mapping_targets_are_gtzan_genres():
    card = load_card()
    gtzan = card.mappings["gtzan"]
    assert set(gtzan) == set(card.head("genre").labels)
    targets = {v for v in gtzan.values() if v is not None}
    assert targets <= GTZAN and len(targets) >= 5


def test_quadrant_mapping_names_every_quadrant_once():
    card = load_card()
    quadrant = card.mappings["quadrant"]
    assert set(quadrant) == set(card.head("mood").labels) and sorted(quadrant.values()) == ["Q1", "Q2", "Q3", "Q4"]
    assert set(card.mappings["broad"]) == set(card.head("genre").labels)


def test_training_and_evaluation_record_is_complete():
    raw = load_card().raw
    assert raw["training"]["fit_command"] and raw["training"]["cv_command"] and raw["training"]["epochs"] >= 1
    names = " ".join(d["name"] for d in raw["data"])
    assert all(k in names for k in ("4q", "GTZAN", "Medley", "Freesound", "LibriSpeech"))
    assert all(d["citation"] for d in raw["data"])
    cv = raw["evaluation"]["cross_validation"]
    assert "grouped 5-fold" in cv["protocol"]
    for key in ("genre_gtzan", "mood_quadrant"):
        assert 0.0 <= cv[key]["clip_accuracy"] <= 1.0 and 0.0 <= cv[key]["clip_macro_f1"] <= 1.0 and cv[key]["n"] > 100
    assert 0.0 <= cv["voice"]["singer_detected"] <= 1.0 and 0.0 <= cv["content"]["speech_windows_gated"] <= 1.0
    assert raw["split"]["encoder"]["feature_dim"] == 753  # the default model streams
