"""The torch port of musicnn against the original TensorFlow model.

``tests/data/musicnn_reference.npz`` holds log-Mel inputs and the original TF
musicnn outputs for both checkpoints, and the original VGG tagger's on the
patches for its two checkpoints (``tools/make_musicnn_reference.py``).
"""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the musicnn port needs torch (pip install rtgenre[train])")

from rtgenre.errors import ModelCorruptError, ModelMissingError, UsageError  # noqa: E402
from rtgenre.training import musicnn  # noqa: E402
from rtgenre.training.musicnn import FEATURE_DIM, RECEPTIVE_FIELD, load_teacher, load_vgg, teacher_tags  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "musicnn_reference.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module", params=musicnn.TEACHERS)
def teacher(request):
    return request.param, load_teacher(request.param)


@pytest.fixture(scope="module", params=musicnn.VGGS)
def vgg(request):
    return request.param, load_vgg(request.param)


def run(fn, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def test_probabilities_match_tf(ref, teacher):
    name, model = teacher
    assert ref["patches"].shape == (5, musicnn.PATCH_FRAMES, musicnn.N_MELS)
    got = run(model, ref["patches"])
    want = ref[f"{name}/patch_probs"]
    assert got.shape == want.shape == (5, 50)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # the 7.5 s rtgenre window through the same network (original with open input length)
    np.testing.assert_allclose(run(model, ref["window"][None]), ref[f"{name}/window_probs"], rtol=0, atol=1e-4)


def test_frame_features_match_tf(ref, teacher):
    name, model = teacher
    feats = run(model.frame_features, ref["window"][None])
    assert feats.shape == (1, 469, FEATURE_DIM)
    np.testing.assert_allclose(feats[0, ref["window_frames"]], ref[f"{name}/window_features"], rtol=1e-4, atol=1e-3)
    feats = run(model.frame_features, ref["patches"][:1])
    np.testing.assert_allclose(feats[0, ref["patch_frames"]], ref[f"{name}/patch0_features"], rtol=1e-4, atol=1e-3)


def test_forward_is_backend_of_frame_features(ref, teacher):
    _, model = teacher
    x = ref["patches"]
    np.testing.assert_allclose(
        run(model, x), run(lambda t: model.tags_from_features(model.frame_features(t)), x), rtol=0, atol=1e-6
    )


def test_frame_features_depend_only_on_receptive_field(ref, teacher):
    _, model = teacher
    window = ref["window"]
    full = run(model.frame_features, window[None])[0]
    for t in (72, 200, 469 - 74):
        crop = window[t - 72 : t - 72 + RECEPTIVE_FIELD]
        np.testing.assert_allclose(run(model.frame_features, crop[None])[0, 72], full[t], rtol=1e-5, atol=1e-4)
    # one frame less of context and the edge padding shows
    short = run(model.frame_features, window[None, 200 - 71 : 200 + 74])[0, 71]
    assert np.abs(short - full[200]).max() > 1e-3


def test_batch_rows_are_independent_in_eval_mode(ref, teacher):
    _, model = teacher
    x = ref["patches"]
    single = np.concatenate([run(model, x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(run(model, x), single, rtol=0, atol=1e-6)


def test_vgg_probabilities_match_tf(ref, vgg):
    name, model = vgg
    got = run(model, ref["patches"])
    want = ref[f"{name}/patch_probs"]
    assert got.shape == want.shape == (5, 50)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_vgg_pool5_matches_tf(ref, vgg):
    name, model = vgg
    got = run(model.pool5, ref["patches"])
    want = ref[f"{name}/patch_pool5"]
    assert got.shape == want.shape == (5, musicnn.VGG_POOL5_DIM)
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5)


def test_vgg_embed_is_pool5_and_tags(ref, vgg):
    _, model = vgg
    x = ref["patches"]
    emb = run(model.embed, x)
    assert emb.shape == (5, musicnn.VGG_EMBED_DIM)
    np.testing.assert_array_equal(emb[:, : musicnn.VGG_POOL5_DIM], run(model.pool5, x))
    np.testing.assert_allclose(emb[:, musicnn.VGG_POOL5_DIM :], run(model, x), rtol=0, atol=1e-7)
    # batch rows independent (eval-mode batch norms); conv kernels differ by batch size in the last bits
    single = np.concatenate([run(model.embed, x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(emb, single, rtol=0, atol=1e-5)


def test_vgg_takes_only_whole_patches(ref, vgg):
    _, model = vgg
    with pytest.raises(ValueError, match="187"):
        run(model, ref["window"][None])


def test_log_compress_matches_numpy_and_torch():
    power = np.array([[0.0, 1e-4, 1.0, 30.0]], dtype=np.float32)
    want = np.log10(10000 * power + 1)
    np.testing.assert_allclose(musicnn.log_compress(power), want, rtol=1e-6)
    np.testing.assert_allclose(musicnn.log_compress(torch.from_numpy(power)).numpy(), want, rtol=1e-6)


def test_teacher_tags():
    msd, mtt = teacher_tags("MSD_musicnn"), teacher_tags("MTT_musicnn")
    assert len(msd) == len(mtt) == 50
    assert (msd[0], msd[-1], mtt[0], mtt[-1]) == ("rock", "happy", "guitar", "choral")
    # the wheel's extractor labels each VGG with its data set's list
    assert teacher_tags(musicnn.MSD_VGG) == msd and teacher_tags(musicnn.MTT_VGG) == mtt


@pytest.mark.parametrize(("load", "name", "other", "drop"), [
    (load_teacher, "MSD_musicnn", "GTZAN_musicnn", "pool_bn.running_var"),
    (load_vgg, "MSD_vgg", "MSD_musicnn", "blocks.4.bn.running_var"),
])
def test_user_mistakes(tmp_path, load, name, other, drop):
    """A name the loader does not know, missing weights, an unreadable file, an array missing: each its own error."""
    with pytest.raises(UsageError, match=name):
        load(other)
    with pytest.raises(ModelMissingError, match="import_musicnn"):
        load(name, folder=tmp_path)
    (tmp_path / f"{name}.npz").write_bytes(b"not a zip file")
    with pytest.raises(ModelCorruptError):
        load(name, folder=tmp_path)
    good = dict(np.load(musicnn.MUSICNN_DIR / f"{name}.npz"))
    del good[drop]
    np.savez(tmp_path / f"{name}.npz", **good)
    with pytest.raises(ModelCorruptError, match="architecture"):
        load(name, folder=tmp_path)


def test_musicnn_weights_under_a_vgg_name_and_a_broken_tag_list(tmp_path):
    (tmp_path / "MTT_vgg.npz").write_bytes((musicnn.MUSICNN_DIR / "MTT_musicnn.npz").read_bytes())
    with pytest.raises(ModelCorruptError, match="vgg architecture"):
        load_vgg("MTT_vgg", folder=tmp_path)
    (tmp_path / "tags.json").write_text(json.dumps({"MTT_musicnn": []}))
    with pytest.raises(ModelCorruptError):
        teacher_tags("MSD_musicnn", folder=tmp_path)


def test_onnx_export_round_trip(ref, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = load_teacher("MSD_musicnn")
    path = musicnn.export_onnx(model, tmp_path / "musicnn.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (ref["patches"], ref["window"][None]):
        np.testing.assert_allclose(sess.run(None, {"mel": x})[0], run(model, x), rtol=0, atol=1e-5)
