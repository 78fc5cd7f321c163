"""Export: ONNX Runtime output equals torch; back-end weights round-trip; the card describes the graph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from rtgenre.card import file_sha256, load_card
from rtgenre.errors import ModelCorruptError, ModelMissingError
from rtgenre.training.export import export_model, load_backend, load_torch_model, save_backend
from rtgenre.training.labels import GTZAN_MAP, HEADS
from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec
from rtgenre.training.musicnn import Musicnn


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "teacher_prior"])
def exported(tmp_path_factory, request):
    torch.manual_seed(0)
    heads = tuple(HeadSpec(n, k, labels) for n, (k, labels) in HEADS.items())
    teacher = Musicnn().eval()  # one network: front/mid end and, with the prior, its own back end
    model = CRNN(teacher, Backend(BackendConfig(heads=heads, teacher_prior=request.param), teacher)).eval()
    folder = tmp_path_factory.mktemp("engines")
    card = export_model(model, folder, "m", {"gtzan": GTZAN_MAP}, {"training": {"note": "test"}})
    return model, card


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_runtime_matches_torch(exported, batch):
    model, card = exported
    sess = ort.InferenceSession(str(card.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(batch).random((batch, 469, 96)) * 4).astype(np.float32)
    got = sess.run(None, {"mel": x})
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    assert [o.name for o in sess.get_outputs()] == [h.name for h in model.backend.config.heads]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-4)
    np.testing.assert_allclose(got[0].sum(1), 1.0, atol=1e-5)  # genre: softmax
    assert ((got[2] >= 0) & (got[2] <= 1)).all()  # instruments: sigmoid


def test_shipped_graph_matches_its_weights_rebuilt_in_torch():
    """``load_torch_model`` (the torch peer of tools/bench_engine.py) is the shipped ``rtgenre.onnx``: every output, hash included."""
    card = load_card(None)
    model = load_torch_model(card)
    sess = ort.InferenceSession(str(card.onnx_path), providers=["CPUExecutionProvider"])
    x = np.log10(1 + 1e4 * np.random.default_rng(3).random((2, card.window_frames, card.frontend.n_mels)) ** 4).astype(np.float32)
    got = sess.run(None, {card.input_name: x})
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    assert [o.name for o in sess.get_outputs()][: len(want)] == [*(h.output for h in card.heads), *(["hash"] if card.raw.get("hash") else [])]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


def test_card_matches_the_graph(exported):
    _, path = exported
    card = load_card(path)
    assert card.onnx_sha256 == file_sha256(card.onnx_path)
    assert card.window_frames == 469 and card.input_name == "mel"
    assert card.frontend.n_mels == 96 and card.frontend.hop_length == 256 and card.frontend.sample_rate == 16000
    assert [h.name for h in card.heads] == list(HEADS) and card.raw["training"] == {"note": "test"}
    import onnx

    m = onnx.load(str(card.onnx_path))
    assert m.opset_import[0].version == 17
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    for h in card.heads:
        assert dims[h.output] == ["batch", len(h.labels)]


def test_backend_weights_round_trip(exported, tmp_path):
    model, _ = exported
    save_backend(model.backend, tmp_path / "b.npz")
    # the saved weights hold the prior's scales and tag map, not the teacher (here a random one, not the shipped checkpoint)
    back = load_backend(tmp_path / "b.npz", getattr(model.backend, "teacher", None))
    assert len(back.priors) == (3 if model.backend.config.teacher_prior else 0)
    assert back.config == model.backend.config
    feats = torch.randn(2, 469, 753)
    with torch.no_grad():
        a, b = model.backend.eval()(feats), back(feats)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelCorruptError):
        load_backend(tmp_path / "bad.npz")
    with pytest.raises(ModelMissingError):
        load_backend(tmp_path / "absent.npz")
