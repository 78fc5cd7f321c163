"""Similarity codes end to end: code arithmetic against brute force, the hash layer's export and training,
``rtgenre index`` / ``similar`` / ``listen --index`` on real files with a small exported model that has a
``hash`` output, and the evaluation's metrics on hand-computed cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rtgenre.errors import ExitCode
from rtgenre.similarity.codes import CodeIndex, group_min, hamming, mean_code, pack_codes, popcount, top_k, unpack_codes
from rtgenre.training.similar_eval import average_precision_at_k, part_of, retrieval_scores

ROOT = Path(__file__).resolve().parent.parent
BITS = 64


# -- codes ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [24, 64, 128, 192])
def test_hamming_matches_bit_by_bit_count(bits):
    rng = np.random.default_rng(bits)
    h = rng.standard_normal((500, bits))
    codes = pack_codes(h)
    assert codes.shape == (500, bits // 8) and codes.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(codes) > 0, h > 0)
    q = pack_codes(rng.standard_normal(bits))
    want = ((unpack_codes(codes) > 0) != (unpack_codes(q) > 0)).sum(axis=1)
    np.testing.assert_array_equal(hamming(q, codes), want)
    np.testing.assert_array_equal(CodeIndex(codes).distances(codes[7])[7], 0)


def test_popcount_table_matches_numpy():
    words = np.random.default_rng(0).integers(0, 2**63, size=1000, dtype=np.uint64)
    want = np.array([bin(int(w)).count("1") for w in words])
    np.testing.assert_array_equal(popcount(words), want)
    from rtgenre.similarity import codes

    table = codes._POPCOUNT8[words.view(np.uint8)].reshape(-1, 8).sum(axis=1)
    np.testing.assert_array_equal(table, want)


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_top_k_is_a_stable_sort_prefix(dtype):
    rng = np.random.default_rng(1)
    d = rng.integers(0, 20, size=5000).astype(dtype)  # many ties
    for k in (1, 10, 137, 5000, 9000):
        got = top_k(d, k)
        want = np.argsort(d, kind="stable")[:k]
        if dtype == np.uint16:
            np.testing.assert_array_equal(got, want)
        else:  # real distances: same distances in the same order (ties at the cut may differ)
            np.testing.assert_array_equal(d[got], d[want])
    assert len(top_k(d[:0], 3)) == 0


def test_group_min_finds_each_groups_first_nearest_row():
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 6, size=300)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    d = rng.integers(0, 8, size=sizes.sum()).astype(np.uint16)
    best, row = group_min(d, starts)
    for g, (s, n) in enumerate(zip(starts, sizes)):
        assert best[g] == d[s : s + n].min() and row[g] == s + int(np.argmin(d[s : s + n]))


def test_mean_code_is_the_sign_of_the_mean():
    h = np.array([[0.9, -0.2, 0.1, -1, 1, 1, -1, 0.5], [-0.5, -0.2, 0.3, 1, 1, -1, -1, -0.6]])
    np.testing.assert_array_equal(unpack_codes(mean_code(h)) > 0, [True, False, True, False, True, False, False, False])


# -- evaluation metrics -------------------------------------------------------


def test_average_precision_at_k_by_hand():
    # relevant at ranks 1 and 3 of 10, 2 relevant in the library: (1/1 + 2/3) / 2
    rel = np.zeros(10, bool)
    rel[[0, 2]] = True
    assert average_precision_at_k(rel, 2) == pytest.approx((1 + 2 / 3) / 2)
    # 20 relevant, all top 10 relevant: 1; none relevant: 0
    assert average_precision_at_k(np.ones(10, bool), 20) == pytest.approx(1.0)
    assert average_precision_at_k(np.zeros(10, bool), 0) == 0.0
    scores = retrieval_scores(np.array([[0, 1, 2], [2, 1, 0]]), np.array(["a", "b"]), np.array(["a", "b", "a"]), k=3)
    aps = [(1 + 2 / 3) / 2, 1 / 2]
    assert scores == {"map@3": pytest.approx(round(np.mean(aps), 4)), "p@3": pytest.approx(round(0.5 * (2 / 3 + 1 / 3), 4)),
                      "map@3_se": pytest.approx(round(np.std(aps) / np.sqrt(2), 4))}


def test_split_is_by_group_and_stable():
    groups = [f"artist:{i}" for i in range(2000)]
    parts = [part_of(g) for g in groups]
    assert parts == [part_of(g) for g in groups]
    share = {p: parts.count(p) / len(parts) for p in ("train", "query", "library")}
    assert share["train"] == pytest.approx(0.5, abs=0.05) and share["query"] == pytest.approx(0.15, abs=0.04)


# -- the hash layer ---------------------------------------------------------

torch = pytest.importorskip("torch")


def test_hash_training_separates_labelled_clusters():
    from rtgenre.training.hashing import HashSettings, fit_hash_layer, similarity_targets, window_labels
    from rtgenre.training.clip_embeddings import CachedClip

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 96)) * 0.5
    clips = [CachedClip(f"c{i}", "4q", "x.ogg", f"artist:{i}", {"quadrant": f"Q{i % 4 + 1}", "artist": f"a{i}"}) for i in range(80)]
    clip_of = np.repeat(np.arange(80), 3)
    emb = (centres[clip_of % 4] + rng.standard_normal((240, 96)) * 1.2).astype(np.float32)
    s, w = similarity_targets(window_labels(clips, clip_of[:6]))
    assert s[0, 1] == 1 and w[0, 0] == 0  # windows of one clip: similar; no self pairs
    assert s[0, 3] == -1 and w[0, 3] == 1  # other quadrant, other artist
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny problem: more threads only contend
    try:
        layers = {steps: fit_hash_layer(emb, clip_of, clips, BITS, HashSettings(0.3, steps)) for steps in (0, 200)}
    finally:
        torch.set_num_threads(threads)
    ratio = {}
    for steps, layer in layers.items():
        with torch.no_grad():
            codes = pack_codes(layer(torch.from_numpy(emb)).numpy())
        same, other = [], []
        for i in range(0, 240, 7):
            d = hamming(codes[i], codes)
            mask = (clip_of % 4) == (clip_of[i] % 4)
            same.append(d[mask].mean())
            other.append(d[~mask].mean())
        ratio[steps] = np.mean(same) / np.mean(other)
    # the label-guided fine-tuning pulls the clusters apart, further than the ITQ codes of the noisy embedding alone
    assert ratio[200] < 0.5 and ratio[200] < ratio[0] - 0.1, ratio


def test_itq_rotation_is_orthogonal_and_lowers_the_quantisation_error():
    from rtgenre.training.hashing import itq_rotation, pca_itq

    rng = np.random.default_rng(1)
    bits, dim = 16, 40
    corners = np.where(rng.random((64, bits)) < 0.5, -1.0, 1.0)  # 64 clusters at corners of the hypercube ...
    mix = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :bits]  # ... turned into a 16-dimensional subspace of 40
    x = (corners[rng.integers(0, 64, 2000)] + 0.2 * rng.standard_normal((2000, bits))) @ mix.T + 3.0
    v = (x - x.mean(0)) @ np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:bits].T

    def loss(r):
        return float(((np.sign(v @ r) - v @ r) ** 2).sum())

    r = itq_rotation(v)
    np.testing.assert_allclose(r.T @ r, np.eye(bits), atol=1e-8)
    random_losses = [loss(np.linalg.qr(rng.standard_normal((bits, bits)))[0]) for _ in range(5)]
    # ITQ finds a local minimum: about half the loss of a random rotation here (the generating one: 0.15 of it)
    assert loss(r) < 0.6 * min(random_losses), (loss(r), random_losses)
    assert loss(r) < loss(itq_rotation(v, iterations=2)) < loss(itq_rotation(v, iterations=0))
    # the layer's map: PCA + that rotation, centred, unit variance, orthogonal rows
    weight, bias = pca_itq(x, bits)
    out = x @ weight.T + bias
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-8)
    assert out.std() == pytest.approx(1.0)
    gram = weight @ weight.T
    np.testing.assert_allclose(gram, np.eye(bits) * gram[0, 0], atol=1e-8 * gram[0, 0])
    with pytest.raises(ValueError, match="bits"):
        pca_itq(x[:, :8], bits)


def test_group_out_scores_leave_the_query_group_out():
    from rtgenre.training.clip_embeddings import CachedClip
    from rtgenre.training.similar_eval import group_out_scores, rank_hamming

    # A1, A2: one group; B1 of the same genre far from them, C1 of another genre near
    clips = [CachedClip(n, "gtzan", "x.wav", g, {"genre": lab}) for n, g, lab in
             (("A1", "g1", "x"), ("A2", "g1", "x"), ("B1", "g2", "x"), ("C1", "g3", "y"))]
    codes = np.array([[0b00000000], [0b00000000], [0b00001111], [0b00000011]], dtype=np.uint8)
    scores = group_out_scores(clips, codes, rank_hamming)
    # A1, A2: C1, then B1 (A2 / A1 left out): 1/2; B1: C1, A1, A2: (1/2 + 2/3) / 2; C1 has nothing to find
    assert list(scores) == ["gtzan/genre"]
    assert scores["gtzan/genre"]["map@10"] == pytest.approx(round((0.5 + 0.5 + (1 / 2 + 2 / 3) / 2) / 3, 4))


def test_settings_are_chosen_on_a_grouped_validation_split():
    from rtgenre.training.hashing import HashSettings, select_and_fit, validation_clips
    from rtgenre.training.clip_embeddings import CachedClip

    rng = np.random.default_rng(2)
    clips = [CachedClip(f"c{i}", "gtzan", "x.wav", f"track:{i // 2}", {"genre": f"g{i % 3}"}) for i in range(120)]
    val = validation_clips(clips)
    assert 0.15 < val.mean() < 0.45 and all(val[i] == val[i ^ 1] for i in range(120))  # both clips of a track on one side
    clip_of = np.repeat(np.arange(120), 2)
    # the genres differ in 8 weak dimensions; 24 strong ones are noise, which is what PCA + ITQ alone codes
    genre = np.concatenate([rng.standard_normal((3, 8)), np.zeros((3, 24))], axis=1)
    noise = np.concatenate([0.5 * rng.standard_normal((240, 8)), 2.5 * rng.standard_normal((240, 24))], axis=1)
    emb = (genre[clip_of % 3] + noise).astype(np.float32)
    grid = (HashSettings(1.0, 0), HashSettings(0.0, 300))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layer, record = select_and_fit(emb, clip_of, clips, 16, grid=grid)
    finally:
        torch.set_num_threads(threads)
    assert layer.bits == 16
    assert record["fit"]["clips"] + record["validation"]["clips"] == 120 and record["validation"]["clips"] == int(val.sum())
    itq, tuned = (c["map@10"]["gtzan/genre"] for c in record["candidates"])
    assert tuned > itq + 0.2, (itq, tuned)  # the labels find the weak genre dimensions, on validation clips never trained on
    floats = record["validation"]["float-cosine"]["gtzan/genre"]
    assert [c["worst_minus_float"] for c in record["candidates"]] == [pytest.approx(itq - floats, abs=2e-4), pytest.approx(tuned - floats, abs=2e-4)]
    assert record["chosen"] == {"structure": 0.0, "steps": 300}


def test_cached_clips_are_cut_into_windows(tmp_path):
    from rtgenre.training.clip_embeddings import CachedClip, read_index, select, window_embeddings
    from rtgenre.training.model import Backend, BackendConfig

    rng = np.random.default_rng(0)
    records = [CachedClip("4q-a", "4q", "a.ogg", "artist:x", {"quadrant": "Q1"}, 1000), CachedClip("gtzan-b", "gtzan", "b.ogg", "gtzan:b", {"genre": "jazz"}, 300),
               CachedClip("speech-c", "speech", "c.ogg", "speaker:c", {"label": "speech"}, 600), CachedClip("4q-missing", "4q", "m.ogg", "artist:y", {}, 900)]
    for r in records[:3]:
        np.save(tmp_path / f"{r.id}.npy", rng.standard_normal((r.frames, 753)).astype(np.float16))
    lines = [json.dumps(r.__dict__) for r in records] + ['{"id": "4q-half", "dat']  # the last line is being written
    (tmp_path / "index.jsonl").write_text("\n".join(lines))
    assert [c.id for c in read_index(tmp_path)] == ["4q-a", "gtzan-b", "speech-c"]  # no features, half a line: left out
    clips = select(tmp_path, ("4q", "gtzan"))
    torch.manual_seed(0)
    backend = Backend(BackendConfig(projection=8, hidden=8, layers=1))
    emb, clip_of = window_embeddings(backend, tmp_path, clips, hop_frames=312)
    assert emb.shape == (3, 16) and clip_of.tolist() == [0, 0, 1]  # (1000 - 469) // 312 + 1 = 2 windows; 300 frames: one short window
    feats = torch.from_numpy(np.load(tmp_path / "4q-a.npy").astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(emb[1], backend.eval().embed(feats[None, 312:781])[0].numpy(), atol=1e-5)


class TinyFront(torch.nn.Module):
    """Stands in for MSD_musicnn: ``frame_features(mel) -> (B, T, 753)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(96, 753)

    def frame_features(self, mel):
        return torch.relu(self.lin(mel - 2.0))


def export_hashed(folder: Path, seed: int, name: str = "hashed") -> Path:
    from rtgenre.training.hashing import HashLayer, export_hashed_model
    from rtgenre.training.labels import HEADS
    from rtgenre.training.model import CRNN, Backend, BackendConfig, HeadSpec

    torch.manual_seed(seed)
    heads = tuple(HeadSpec(n, k, labels) for n, (k, labels) in HEADS.items())
    model = CRNN(TinyFront(), Backend(BackendConfig(projection=16, hidden=16, layers=1, heads=heads))).eval()
    layer = HashLayer(32, BITS)
    with torch.no_grad():
        layer.linear.weight.mul_(30.0)  # confident bits from small random embeddings
    return export_hashed_model(model, layer, folder, name, {}, {"training": {"note": "test"}})


@pytest.fixture(scope="module")
def hashed_model(tmp_path_factory) -> Path:
    return export_hashed(tmp_path_factory.mktemp("hashed"), seed=0)


def test_export_adds_the_hash_output(hashed_model):
    from rtgenre.card import load_card
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.training.export import load_backend
    from rtgenre.training.hashing import HashedBackend, load_hash_layer

    card = load_card(hashed_model)
    assert card.hash is not None and (card.hash.output, card.hash.bits) == ("hash", BITS)
    engine = OnnxRuntimeEngine(card)
    mel = np.random.default_rng(3).random((3, 469, 96)).astype(np.float32) * 4
    out = engine.run(mel)
    assert out["hash"].shape == (3, BITS) and set(out) == {h.name for h in card.heads} | {"hash"}
    backend = load_backend(hashed_model.with_name("hashed.backend.npz"))
    hashed = HashedBackend(backend, load_hash_layer(hashed_model.with_name("hashed.hash.npz"))[0]).eval()
    torch.manual_seed(0)
    front = TinyFront()  # made first after the same seed in export_hashed: the same weights
    with torch.no_grad():
        want = hashed(front.frame_features(torch.from_numpy(mel)))
    np.testing.assert_allclose(out["hash"], want["hash"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["genre"], torch.softmax(want["genre"], -1).numpy(), atol=1e-4)
    assert np.abs(out["hash"]).max() <= 1.0 and (np.abs(out["hash"]) > 0.5).mean() > 0.5


# -- the dashboard ----------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (50, 15)])
def test_dashboard_shows_what_it_sounds_like(size):
    from dashboard_driver import prediction, start_event
    from test_dashboard import frame

    similar = [{"path": "/music/a/Nearest Song.flac", "distance": 12, "segment": 45.0, "labels": {"genre": "jazz"}},
               {"path": "/music/b/second.mp3", "distance": 19, "segment": 0.0, "labels": {"genre": "rock"}}]
    pred = prediction(8.0, "jazz")
    text, _ = frame([start_event(), pred.with_data(similar=similar)], *size)
    lines = text.splitlines()
    assert len(lines) <= size[1] and max(len(line) for line in lines) <= size[0]
    if size[0] < 60:
        assert "like Nearest Song.flac (12)" in text
    else:
        assert "sounds like" in text and "12 Nearest Song.flac 0:45 jazz" in text and "19 second.mp3 0:00 rock" in text
    text, _ = frame([start_event(), pred], *size)
    assert "sounds like" not in text and "like Nearest" not in text


# -- the commands ---------------------------------------------------------------


def rtgenre(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rtgenre", *args], capture_output=True, timeout=timeout, cwd=ROOT, env=env)


def write_song(path: Path, seconds: float, seed: int) -> Path:
    """A different-sounding signal per seed: a chord of random partials, tremolo and noise bursts."""
    rng = np.random.default_rng(seed)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    freqs = rng.uniform(80, 3000, size=4)
    x = sum(np.sin(2 * np.pi * f * t) * rng.uniform(0.05, 0.2) for f in freqs)
    x = x * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 6) * t))
    x += rng.standard_normal(len(t)) * rng.uniform(0, 0.1) * (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0.5)
    sf.write(path, (x / np.abs(x).max() * 0.5).astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("music")
    (folder / "sub").mkdir()
    for i in range(4):
        write_song(folder / ("sub" if i % 2 else "") / f"song{i}.wav", 25.0, seed=i)
    (folder / "broken.wav").write_bytes(b"RIFF this is not audio")
    (folder / "notes.txt").write_text("not picked up: not an audio suffix")
    return folder


@pytest.mark.slow
def test_index_similar_and_updates(hashed_model, music, tmp_path):
    lib = tmp_path / "lib.rtsim"
    proc = rtgenre("index", str(music), "--out", str(lib), "--json", "--model", str(hashed_model))
    assert proc.returncode == ExitCode.INPUT_UNREADABLE, proc.stderr.decode()  # broken.wav: reported, the rest indexed
    report = json.loads(proc.stdout)
    assert report["added"] == 4 and report["tracks"] == 4 and [f["path"] for f in report["failed"]] == [str(music / "broken.wav")]
    assert "broken.wav" in proc.stderr.decode() and "Traceback" not in proc.stderr.decode()

    query = music / "sub" / "song1.wav"
    proc = rtgenre("similar", str(query), "--index", str(lib), "--json", "-k", "3", "--model", str(hashed_model))
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(proc.stdout)
    assert res["bits"] == BITS and len(res["results"]) == 3
    first = res["results"][0]
    assert first["path"] == str(query) and first["distance"] == 0  # the track itself: its code is stored exactly
    assert [r["distance"] for r in res["results"]] == sorted(r["distance"] for r in res["results"])
    assert set(first["labels"]) == {"genre", "mood", "instruments"} and first["duration"] == pytest.approx(25.0, abs=0.6)

    proc = rtgenre("similar", str(query), "--index", str(lib), "--json", "--at", "0:10", "--model", str(hashed_model))
    res = json.loads(proc.stdout)
    assert res["at"] == 10.0 and len(res["results"]) == 4
    assert res["results"][0]["distance"] == res["results"][0]["segment_distance"]  # ranked by the nearest segment
    assert {r["segment"] for r in res["results"]} <= {0.0, 15.0}

    proc = rtgenre("index", str(music), "--out", str(lib), "--json", "--model", str(hashed_model))  # resumed: nothing to do
    report = json.loads(proc.stdout)
    assert (report["added"], report["updated"], report["unchanged"], report["tracks"]) == (0, 0, 4, 4) and len(report["failed"]) == 1

    write_song(music / "song0.wav", 20.0, seed=9)  # changed
    (music / "sub" / "song3.wav").unlink()  # removed
    write_song(music / "new.flac", 12.0, seed=5)  # new
    (music / "broken.wav").unlink()
    proc = rtgenre("index", str(music), "--out", str(lib), "--json", "--model", str(hashed_model))
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert (report["added"], report["updated"], report["unchanged"], report["tracks"]) == (1, 1, 2, 4)
    assert report["removed"] == [str(music / "sub" / "song3.wav")] and report["failed"] == []

    proc = rtgenre("similar", str(music / "song0.wav"), "--index", str(lib), "--json", "--model", str(hashed_model))
    res = json.loads(proc.stdout)
    assert res["results"][0]["path"] == str(music / "song0.wav") and res["results"][0]["distance"] == 0
    assert res["results"][0]["duration"] == pytest.approx(20.0, abs=0.6)


@pytest.mark.slow
def test_listen_with_index_adds_similar(hashed_model, music, tmp_path):
    lib = tmp_path / "lib.rtsim"
    song = write_song(tmp_path / "live.wav", 20.0, seed=2)
    rtgenre("index", str(song), str(music / "sub"), "--out", str(lib), "--model", str(hashed_model))
    proc = rtgenre("listen", "--input", str(song), "--json", "--index", str(lib), "--similar-every", "2", "--model", str(hashed_model))
    assert proc.returncode == 0, proc.stderr.decode()
    preds = [e for e in map(json.loads, proc.stdout.decode().splitlines()) if e["event"] == "prediction"]
    assert len(preds) > 10
    changes = 0
    for p in preds:
        sim = p["similar"]
        assert 1 <= len(sim) <= 3 and [s["distance"] for s in sim] == sorted(s["distance"] for s in sim)
        assert {"path", "distance", "segment", "labels"} <= set(sim[0])
    # the search runs every 2 s of audio, not every hop: results change at most that often
    changes = sum(a["similar"] != b["similar"] for a, b in zip(preds, preds[1:]))
    assert changes <= (preds[-1]["t"] - preds[0]["t"]) / 2 + 1


@pytest.mark.slow
def test_library_errors(hashed_model, music, tmp_path):
    other = export_hashed(tmp_path / "other", seed=1, name="other")
    lib = tmp_path / "lib.rtsim"
    song = write_song(tmp_path / "a.wav", 10.0, seed=3)
    assert rtgenre("index", str(song), "--out", str(lib), "--model", str(hashed_model)).returncode == 0
    cases = [
        (("similar", str(song), "--index", str(lib), "--model", str(other)), ExitCode.LIBRARY_MISMATCH, "not of other"),
        (("index", str(song), "--out", str(lib), "--model", str(other)), ExitCode.LIBRARY_MISMATCH, ""),
        (("similar", str(song), "--index", str(tmp_path / "absent.rtsim"), "--model", str(hashed_model)), ExitCode.LIBRARY_UNUSABLE, "does not exist"),
        (("index", str(song), "--out", str(tmp_path / "no" / "lib.rtsim"), "--model", str(hashed_model)), ExitCode.LIBRARY_UNUSABLE, "does not exist"),
        (("similar", str(song), "--index", str(song), "--model", str(hashed_model)), ExitCode.LIBRARY_UNUSABLE, "not an rtgenre library"),
        (("similar", str(song), "--index", str(lib), "--at", "5:00", "--model", str(hashed_model)), ExitCode.USAGE, "past the end"),
        (("similar", str(song), "--index", str(lib), "--at", "soon", "--model", str(hashed_model)), ExitCode.USAGE, "not a time"),
    ]
    from engine_fixtures import export_test_model

    plain = export_test_model(tmp_path / "plain")
    cases.append((("index", str(song), "--out", str(tmp_path / "x.rtsim"), "--model", str(plain)), ExitCode.LIBRARY_MISMATCH, "no hash output"))
    for args, code, words in cases:
        proc = rtgenre(*args)
        err = proc.stderr.decode()
        assert proc.returncode == code, (args, err)
        assert "Traceback" not in err and err.count("rtgenre: error:") == 1, err
        assert words in err, err


@pytest.mark.slow
def test_index_resumes_after_being_killed(hashed_model, tmp_path):
    import signal
    import sqlite3
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        write_song(folder / f"s{i}.wav", 12.0, seed=20 + i)
    lib = tmp_path / "lib.rtsim"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rtgenre", "index", str(folder), "--out", str(lib), "--no-progress", "--model", str(hashed_model)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 120
    while done == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            with sqlite3.connect(lib) as db:
                done = db.execute("SELECT count(*) FROM tracks").fetchone()[0]
        except sqlite3.Error:  # not created yet, or locked by the writer
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if done == 8:
        pytest.skip("the indexer finished before it could be killed")
    proc = rtgenre("index", str(folder), "--out", str(lib), "--json", "--model", str(hashed_model))
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["tracks"] == 8 and report["unchanged"] >= done >= 1
    assert report["added"] + report["unchanged"] == 8


def test_shipped_hash_output_is_its_hash_layer():
    """The default model's graphs output the hash layer saved beside them (``<model>.hash.npz``) on the back end's embedding."""
    import onnxruntime as ort

    from rtgenre.card import DEFAULT_MODEL, ENGINES_DIR, load_card
    from rtgenre.training.export import load_backend
    from rtgenre.training.hashing import load_hash_layer

    card = load_card(ENGINES_DIR / f"{DEFAULT_MODEL}.json")
    if card.hash is None or card.split is None:
        pytest.skip("the default model has no hash output or no split graphs")
    layer, record = load_hash_layer(ENGINES_DIR / f"{DEFAULT_MODEL}.hash.npz")
    assert layer.bits == card.hash.bits and record == card.raw["hash_training"]
    feats = np.random.default_rng(4).random((2, card.window_frames, 753)).astype(np.float32)
    sess = ort.InferenceSession(str(card.split.backend.onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"feats": feats})))
    with torch.no_grad():
        want = layer(load_backend(ENGINES_DIR / card.raw["backend_weights"]).eval().embed(torch.from_numpy(feats))).numpy()
    np.testing.assert_allclose(got[card.hash.output], want, atol=1e-4)
