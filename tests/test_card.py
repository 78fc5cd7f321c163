"""The shipped default model: its card loads and agrees with its ONNX graph."""

from __future__ import annotations

import pytest

from rtgenre.card import ENGINES_DIR, load_card

CARD = ENGINES_DIR / "rtgenre-crnn.json"
pytestmark = pytest.mark.skipif(not CARD.is_file(), reason="the default model is not exported yet (rtgenre/models/rtgenre-crnn.json)")

GTZAN = {"blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"}


def test_card_loads_and_label_sets_are_sane():
    card = load_card()  # verifies the ONNX checksum too
    assert card.name == "rtgenre-crnn"
    assert [h.name for h in card.heads] == ["genre", "mood", "instruments"]
    for h in card.heads:
        assert h.labels and len(set(h.labels)) == len(h.labels)
    assert card.onnx_path.stat().st_size < 10 * 1024 * 1024


def test_onnx_outputs_match_heads():
    onnx = pytest.importorskip("onnx")
    card = load_card()
    m = onnx.load(str(card.onnx_path))
    assert [i.name for i in m.graph.input] == [card.input_name]
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert set(dims) == {h.output for h in card.heads}
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


def test_training_record_is_complete():
    raw = load_card().raw
    t = raw["training"]
    assert t["command"].startswith("rtgenre train") and t["epochs"] >= 1
    assert all(c["hours"] > 0 for c in t["corpora"].values())
    assert raw["teacher"]["tag_map"].keys() == {"genre", "mood", "instruments"}
    held = raw["evaluation"]["held_out_agreement_runtime"]
    corpora = [v for k, v in held.items() if k != "windows_hop_frames"]
    assert corpora and all(0.0 <= c["genre_top1"] <= 1.0 and c["windows"] > 0 for c in corpora)
