"""Training: corpora helpers, MIDI generation labels, teacher mapping, feature cache, crops, train command."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
mido = pytest.importorskip("mido")

from rtgenre.card import load_card
from rtgenre.errors import DataInvalidError, UsageError
from rtgenre.training.corpus import Track, gm_family, read_manifest, write_manifest
from rtgenre.training.data import CropSampler, Item, make_batch, window_tags
from rtgenre.training.labels import (
    GTZAN,
    GTZAN_MAP,
    HEADS,
    INSTRUMENTS,
    TAG_MAP,
    TagMapper,
)
from rtgenre.training.midigen import STYLES, generate
from rtgenre.training.musicnn import MUSICNN_DIR, RECEPTIVE_FIELD, Musicnn

WEIGHTS = MUSICNN_DIR / "MSD_musicnn.npz"
needs_weights = pytest.mark.skipif(not (WEIGHTS.is_file() and (MUSICNN_DIR / "MTT_musicnn.npz").is_file()), reason="musicnn weights not in rtgenre/models/musicnn/")


def test_gm_family_covers_the_instrument_vocabulary():
    fams = {gm_family(p) for p in range(128)} | {gm_family(0, is_drum=True)}
    assert fams - {None} == set(INSTRUMENTS)
    assert [gm_family(p) for p in (0, 25, 33, 40, 52, 73, 81)] == ["keys", "guitar", "bass", "strings", "voice", "winds", "synth"]
    with pytest.raises(ValueError):
        gm_family(128)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_generated_midi_labels_are_the_programs_played(style, tmp_path):
    mid, labels = generate(STYLES[style], 8.0, np.random.default_rng(1))
    mid.save(str(tmp_path / "s.mid"))
    back = mido.MidiFile(str(tmp_path / "s.mid"))
    programs, drums, sounding = {}, False, set()
    for tr in back.tracks:
        for m in tr:
            if m.type == "program_change":
                programs[m.channel] = m.program
            if m.type == "note_on" and m.velocity > 0:
                if m.channel == 9:
                    drums = True
                else:
                    sounding.add(m.channel)
    played = {gm_family(programs[ch]) for ch in sounding} | ({"drums"} if drums else set())
    assert set(labels["instruments"]) == played - {None}
    assert labels["genre"] == STYLES[style].genre and labels["genre"] in HEADS["genre"][1]


def test_manifest_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    tracks = [Track(tmp_path / "a" / "x.wav", 12.5, "rock", ["drums", "guitar"], {"bpm": 120.0}), Track(tmp_path / "y.wav", 30.0)]
    write_manifest(tmp_path, tracks)
    back = read_manifest(tmp_path)
    assert [(t.path, t.seconds, t.genre, t.instruments, t.extra) for t in back] == [(t.path, t.seconds, t.genre, t.instruments, t.extra) for t in tracks]
    (tmp_path / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(DataInvalidError):
        read_manifest(tmp_path)


def _tags():
    return {t: json.loads((MUSICNN_DIR / "tags.json").read_text())[t] for t in ("MSD_musicnn", "MTT_musicnn")}


@pytest.mark.skipif(not (MUSICNN_DIR / "tags.json").is_file(), reason="rtgenre/models/musicnn/tags.json absent")
def test_tag_mapper_soft_or_and_targets():
    tags = _tags()
    mapper = TagMapper(tags)  # raises if the mapping names a tag a teacher lacks
    assert set(TAG_MAP) == set(HEADS) and all(list(TAG_MAP[h]) == list(HEADS[h][1]) for h in HEADS)
    x = np.zeros(100, np.float32)
    x[tags["MSD_musicnn"].index("heavy metal")] = 0.8
    x[tags["MSD_musicnn"].index("metal")] = 0.3
    x[50 + tags["MTT_musicnn"].index("piano")] = 0.6
    s = mapper.scores(x)
    assert s["genre"][HEADS["genre"][1].index("metal")] == pytest.approx(0.8)
    assert s["instruments"][INSTRUMENTS.index("keys")] == pytest.approx(0.6)
    t = mapper.targets(np.random.default_rng(0).random((4, 100)))
    np.testing.assert_allclose(t["genre"].sum(-1), 1.0, rtol=1e-5)
    assert not mapper.has_teacher("instruments")[INSTRUMENTS.index("bass")]
    with pytest.raises(ValueError, match="no tag"):
        TagMapper(tags, {"genre": {"rock": {"MSD_musicnn": ["not a tag"]}}})


def test_gtzan_mapping_targets_are_gtzan_genres():
    from rtgenre.training.labels import BROAD_MAP

    assert set(GTZAN_MAP) == set(HEADS["genre"][1]) == set(BROAD_MAP)
    assert {v for v in GTZAN_MAP.values() if v} <= set(GTZAN)
    assert all(BROAD_MAP[g] == g for g in set(BROAD_MAP.values()) if g in BROAD_MAP)  # a family is its own broad label


def test_chunked_features_equal_one_whole_track_pass():
    from rtgenre.training.features import ChunkedFeatures

    torch.manual_seed(0)
    net = Musicnn().eval()
    mel = np.random.default_rng(0).random((420, 96)).astype(np.float32) * 3
    whole = net.frame_features(torch.from_numpy(mel)[None])[0].detach().numpy()
    chunked = ChunkedFeatures(net, chunk=RECEPTIVE_FIELD - 6).process(mel)
    np.testing.assert_allclose(chunked, whole, atol=1e-4, rtol=1e-4)


def test_window_tags_weight_patches_by_overlap():
    tags = np.stack([np.full(4, v, np.float32) for v in (0.0, 1.0, 2.0, 3.0)])
    np.testing.assert_allclose(window_tags(tags, 0, 187), 0.0)
    np.testing.assert_allclose(window_tags(tags, 187 - 10, 187), (0 * 10 + 1 * 177) / 187)
    np.testing.assert_allclose(window_tags(tags, 4 * 187 - 20, 40), 3.0)  # beyond the last whole patch


def test_crop_targets_prefer_exact_labels_and_mask_unknowns():
    heads = {"genre": HEADS["genre"], "instruments": HEADS["instruments"]}
    sampler = CropSampler(heads, None, frames=10)
    exact = Item(np.ones((30, 4), np.float32), None, {"genre": 2, "instruments": np.eye(8, dtype=np.float32)[1]}, "a")
    unknown = Item(np.zeros((30, 4), np.float32), None, {}, "b")
    f, t, m = sampler.process(exact, np.random.default_rng(0))
    assert f.shape == (10, 4) and t["genre"].argmax() == 2 and m["genre"].all() and t["instruments"][1] == 1
    _, _, m2 = sampler.process(unknown, start=5)
    assert not m2["genre"].any() and not m2["instruments"].any()
    x, _, mm = make_batch([sampler.process(exact, start=0), sampler.process(unknown, start=0)], np.random.default_rng(0), mix_prob=1.0)
    # mixing a known with an unknown crop leaves the label unknown
    assert not mm["genre"].any() and x.shape == (2, 10, 4)
    assert 0.5 <= float(x[0].mean()) <= 1.0


def test_grouped_folds_keep_groups_and_mixes_whole():
    from rtgenre.training.real import Example, grouped_folds
    from rtgenre.training.realdata import Clip

    def ex(i: int, group: str) -> Example:
        return Example(Clip(f"c{i}", "x", f"c{i}", group), np.zeros((1, 1)), np.zeros((1, 1)), {}, {})

    # 12 artists with 1-3 clips each, and two mixes that join a speaker to an artist
    examples = [ex(i, f"artist:{i % 12}") for i in range(30)] + [ex(30, "speaker:a|artist:3"), ex(31, "speaker:a"), ex(32, "speaker:b|artist:5")]
    folds = grouped_folds(examples, 4, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(33))  # a partition
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    for i in range(30):
        assert fold_of[i] == fold_of[i % 12]  # an artist never spans two folds
    assert fold_of[30] == fold_of[31] == fold_of[3] and fold_of[32] == fold_of[5]  # a mix goes with its speaker and its song
    assert max(map(len, folds)) - min(map(len, folds)) <= 3


def test_folds_by_song_split_an_artist_and_keep_a_mix_with_its_song():
    """--group-by song (Panda et al.'s protocol): an artist's songs fall in different folds, a mix still goes with its song and speaker."""
    from rtgenre.training.real import Example, grouped_folds
    from rtgenre.training.realdata import Clip

    def ex(i: int, file: str, group: str) -> Example:
        return Example(Clip(f"c{i}", "x", file, group), np.zeros((1, 1)), np.zeros((1, 1)), {}, {})

    songs = [ex(i, f"s{i}.ogg", "artist:one") for i in range(8)]
    mixes = [ex(8, "talk.ogg+s2.ogg", "speaker:a|artist:one"), ex(9, "talk2.ogg", "speaker:a")]
    by_artist = grouped_folds(songs + mixes, 4, seed=0)
    assert sum(len(f) > 0 for f in by_artist) == 1  # one artist: one fold
    folds = grouped_folds(songs + mixes, 4, seed=0, by="song")
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    assert len({fold_of[i] for i in range(8)}) == 4  # the artist's songs are spread over every fold
    assert fold_of[8] == fold_of[2] == fold_of[9]  # the mix with its song and its speaker's other clip


def test_folds_by_dataset_hold_out_each_data_set_whole():
    """--group-by dataset: one fold per data set (k aside), the mixes with the speech set and 4q, whose recordings they hold."""
    from rtgenre.training.real import Example, grouped_folds
    from rtgenre.training.realdata import Clip

    def ex(i: int, dataset: str, group: str) -> Example:
        return Example(Clip(f"c{i}", dataset, f"c{i}", group), np.zeros((1, 1)), np.zeros((1, 1)), {}, {})

    examples = ([ex(i, "gtzan", f"gtzan:{i}") for i in range(6)] + [ex(6 + i, "4q", f"artist:{i}") for i in range(5)]
                + [ex(11, "speech", "speaker:a"), ex(12, "mix", "speaker:b|artist:9"), ex(13, "medley", "medley:1")])
    folds = grouped_folds(examples, 5, seed=0, by="dataset")
    assert sorted(sorted(f.tolist()) for f in folds) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13]]


def test_genre_classes_weigh_each_exact_genre_class_alike():
    """genre_classes: recall per GTZAN genre and per single (not broad) AllMusic genre, macro-averaged over classes of
    at least MIN_CLASS_CLIPS clips; a 4q clip is right when its majority genre is one its AllMusic genre allows."""
    from rtgenre.training import vocab
    from rtgenre.training.real import MIN_CLASS_CLIPS, Example, clip_metrics, exact_genre
    from rtgenre.training.realdata import Clip

    def ex(i: int, dataset: str, **labels: str) -> Example:
        return Example(Clip(f"c{i}", dataset, f"c{i}", f"g{i}", labels), np.zeros((1, 1)), np.zeros((1, 1)), {}, {})

    def votes(*genres: str) -> dict:  # three windows, majority genres[0]
        return {"genre": np.eye(len(vocab.GENRES), dtype=np.float32)[[vocab.GENRES.index(g) for g in genres]]}

    assert exact_genre(ex(0, "4q", allmusic_genres="Pop/Rock", quadrant="Q1")) is None  # too broad
    assert exact_genre(ex(0, "4q", allmusic_genres="Latin|Pop/Rock", quadrant="Q1")) is None  # not one genre
    assert exact_genre(ex(0, "4q", allmusic_genres="R&B", quadrant="Q1")) == ("allmusic:R&B", ("r&b/soul", "funk"))
    assert exact_genre(ex(0, "gtzan", genre="disco")) == ("gtzan:disco", ("dance",))
    n = MIN_CLASS_CLIPS
    clips = ([ex(i, "gtzan", genre="rock") for i in range(4 * n)] + [ex(100 + i, "4q", allmusic_genres="R&B", quadrant="Q1", genre_single="") for i in range(n)]
             + [ex(200 + i, "4q", allmusic_genres="Folk", quadrant="Q1", genre_single="") for i in range(n - 1)])
    probs = ([votes("rock", "rock", "pop")] * (4 * n) + [votes("funk", "funk", "rock")] * 2 + [votes("pop", "pop", "funk")] * (n - 2)
             + [votes("folk", "folk", "folk")] * (n - 1))
    got = clip_metrics(clips, probs)["genre_classes"]
    assert set(got["per_class"]) == {"gtzan:rock", "allmusic:R&B"}  # Folk has too few clips
    assert got["per_class"]["allmusic:R&B"] == {"recall": 2 / n, "n": n}
    assert got["macro_recall"] == pytest.approx((1.0 + 2 / n) / 2)  # not weighted by the 4n rock clips


def test_gtzan_10_accuracy_is_also_given_per_data_set():
    """genre_gtzan's clip_accuracy_by_dataset: the GTZAN excerpts and 4q's single-genre songs scored apart (data-set folds)."""
    from rtgenre.training import vocab
    from rtgenre.training.real import Example, clip_metrics
    from rtgenre.training.realdata import Clip

    def ex(i: int, dataset: str, **labels: str) -> Example:
        return Example(Clip(f"c{i}", dataset, f"c{i}", f"g{i}", labels), np.zeros((1, 1)), np.zeros((1, 1)), {}, {})

    def vote(genre: str) -> dict:
        return {"genre": np.eye(len(vocab.GENRES), dtype=np.float32)[[vocab.GENRES.index(genre)]]}

    jazz = next(k for k, v in vocab.SINGLE_TO_GTZAN.items() if v == "jazz")
    clips = [ex(i, "gtzan", genre="rock") for i in range(4)] + [ex(10 + i, "4q", genre_single=jazz, allmusic_genres=jazz, quadrant="Q4") for i in range(2)]
    probs = [vote("rock")] * 3 + [vote("metal")] + [vote("jazz"), vote("blues")]
    got = clip_metrics(clips, probs)["genre_gtzan"]
    assert got["clip_accuracy"] == pytest.approx(4 / 6)
    assert got["clip_accuracy_by_dataset"] == {"4q": pytest.approx(0.5), "gtzan": pytest.approx(0.75)}


def test_a_tagless_genre_of_a_multi_genre_song_gets_its_share_of_the_target():
    """The tagger has no latin or reggae tag: a "Latin|Pop/Rock" song's target is half latin, the rest split by the
    tagger's squared scores; a song without such a genre is split by the scores alone, as before."""
    from rtgenre.training import vocab
    from rtgenre.training.real import Targets

    assert set(vocab.TAGLESS_GENRES) == {"latin", "reggae"}
    scores = np.full(len(vocab.GENRES), 0.01, np.float32)
    scores[[vocab.GENRES.index(g) for g in ("pop", "rock", "jazz")]] = [0.4, 0.2, 0.3]
    targets = Targets()
    t = dict(zip(vocab.GENRES, targets._soft_genre("Latin|Pop/Rock", scores)))
    assert t["latin"] == pytest.approx(0.5) and sum(t.values()) == pytest.approx(1.0)
    assert t["pop"] == pytest.approx(0.5 * 0.16 / (0.16 + 0.04 + 2 * 0.05**2))  # metal and punk at the 0.05 floor
    t = dict(zip(vocab.GENRES, targets._soft_genre("Latin|Reggae", scores)))
    assert t["latin"] == t["reggae"] == pytest.approx(0.5)
    t = dict(zip(vocab.GENRES, targets._soft_genre("Jazz|International|Latin|Reggae", scores)))  # International allows none of ours
    assert t["latin"] == t["reggae"] == t["jazz"] == pytest.approx(1 / 3)
    t = dict(zip(vocab.GENRES, targets._soft_genre("Jazz|Pop/Rock", scores)))
    assert t["jazz"] == pytest.approx(0.09 / (0.09 + 0.16 + 0.04 + 2 * 0.05**2)) and t["latin"] == 0.0


@needs_weights
def test_a_backend_on_two_encoders_gives_each_tagger_its_own_features(tmp_path):
    """The duo's input is MSD then MTT features side by side; each frozen tagger reads its own encoder's window statistics."""
    from rtgenre.training.export import load_backend, save_backend
    from rtgenre.training.real import WindowBackend, WindowConfig

    torch.manual_seed(0)
    model = WindowBackend(WindowConfig(encoders=("MSD_musicnn", "MTT_musicnn"), feature_dim=2 * 753)).eval()
    seen = {}
    for name, tagger in (("msd", model.teacher), ("mtt", model.more_teachers[0])):
        tagger.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
    feats = torch.randn(2, 469, 2 * 753)
    with torch.no_grad():
        out = model(feats)
    np.testing.assert_allclose(seen["msd"].numpy(), feats[..., :753].amax(dim=1).numpy())
    np.testing.assert_allclose(seen["mtt"].numpy(), feats[..., 753:].amax(dim=1).numpy())
    save_backend(model, tmp_path / "duo.backend.npz")
    again = load_backend(tmp_path / "duo.backend.npz")
    assert again.config.encoders == ("MSD_musicnn", "MTT_musicnn")
    with torch.no_grad():
        for head, logits in again(feats).items():
            np.testing.assert_allclose(logits.numpy(), out[head].numpy(), atol=1e-5)


@needs_weights
@pytest.mark.parametrize("spread", [False, True])
def test_a_backend_on_raw_frames_equals_it_on_the_frames_pooled_as_training_reads_them(spread):
    """``forward`` (what the exported graph computes, on a window's frame features) equals ``forward_pooled``
    on :func:`pool_frames` of the same frames (what training reads), with and without the groups' spread."""
    import torch

    from rtgenre.training.real import WINDOW_FRAMES, WindowBackend, WindowConfig, pool_frames

    torch.manual_seed(0)
    model = WindowBackend(WindowConfig(spread=spread)).eval()
    feats = np.random.default_rng(1).normal(size=(2, WINDOW_FRAMES, 753)).astype(np.float32) * np.linspace(0.5, 2.0, WINDOW_FRAMES)[None, :, None].astype(np.float32)
    pooled = [pool_frames(f) for f in feats]
    with torch.no_grad():
        raw = model(torch.from_numpy(feats))
        steps = model.forward_pooled(*(torch.from_numpy(np.stack([p[i] for p in pooled])) for i in (0, 1)))
    for head, logits in raw.items():
        np.testing.assert_allclose(logits.numpy(), steps[head].numpy(), atol=2e-5)
    if spread:  # the statistics normed before the embedding end with each feature's spread of its group means over the window
        seen = []
        model.norm.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        with torch.no_grad():
            model(torch.from_numpy(feats))
        np.testing.assert_allclose(seen[0][:, 2 * 753 :].numpy(), np.stack([p[1].std(axis=0) for p in pooled]), rtol=1e-4, atol=1e-5)


def test_patch_window_reads_the_patches_wholly_inside_the_window():
    """A window of WINDOW_FRAMES frames starting at any frame reads the mean and max of the 187-frame patches it holds whole."""
    from rtgenre.training.real import WINDOW_FRAMES, patch_window

    patches = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # patch k holds k
    for start in range(0, 1200, 7):
        inside = [k for k in range(10) if k * 187 >= start and (k + 1) * 187 <= start + WINDOW_FRAMES]
        got = patch_window(patches, start)
        assert got.shape == (6,) and 1 <= len(inside) <= 2
        np.testing.assert_array_equal(got, [np.mean(inside)] * 3 + [max(inside)] * 3)


@needs_weights
def test_a_backend_with_a_patch_tagger_trains_and_exports(tmp_path):
    """The vgg variant: the patch statistics join the embedding's input; training and evaluation windows carry them;
    exported, it streams with a patch encoder, and its whole-window graph tags the window's own two patches
    (ONNX Runtime against the torch back end on patch_window of those patches)."""
    from rtgenre.card import load_card
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.training import vocab
    from rtgenre.training.export import save_backend
    from rtgenre.training.musicnn import PATCH_FRAMES, load_teacher, load_vgg
    from rtgenre.training.real import (
        VARIANTS,
        WINDOW_STEPS,
        Example,
        TrainConfig,
        export_variants,
        patch_window,
        train_backend,
        window_probs,
    )
    from rtgenre.training.realdata import Clip

    rng = np.random.default_rng(0)
    heads = {h: len(vocab.HEADS[h][1]) for h in vocab.HEADS}

    def ex(i: int) -> Example:
        steps = WINDOW_STEPS + 20
        t = {h: np.eye(n, dtype=np.float32)[i % n] for h, n in heads.items()}
        m = {h: np.ones(n, np.float32) for h, n in heads.items()}
        return Example(Clip(f"c{i}", "4q", f"c{i}", f"artist:{i}"), rng.standard_normal((steps, 753)).astype(np.float32),
                       rng.standard_normal((steps, 753)).astype(np.float32), t, m, rng.standard_normal((steps * 16 // 187, 306)).astype(np.float32))

    config = VARIANTS["vgg"]
    assert config.patch_encoders == ("MSD_vgg",)
    model = train_backend([ex(i) for i in range(8)], config, TrainConfig(epochs=1, batch=4))
    assert model.embedding[1].in_features == 2 * 753 + 250 + 2 * 306
    probs = window_probs(model, ex(9))
    assert probs["genre"].shape == (6, heads["genre"]) and np.allclose(probs["genre"].sum(axis=1), 1, atol=1e-5)

    save_backend(model, tmp_path / "vgg.backend.npz")
    card = load_card(export_variants(tmp_path, tmp_path / "out", {}, ["vgg"], tmp_path)[0])
    assert card.split.patch.frames == PATCH_FRAMES and card.split.backend.patch_input == "patches"
    assert card.raw["encoder"]["features_per_frame"] == 753 and card.raw["encoder"]["patch_encoders"] == ["MSD_vgg"]
    assert OnnxRuntimeEngine(card).streaming
    mel = (2 + rng.standard_normal((2, card.window_frames, 96))).astype(np.float32)
    got = OnnxRuntimeEngine(card, stream=False).run(mel)
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(mel)
        tagged = load_vgg("MSD_vgg").embed(x[:, : 2 * PATCH_FRAMES].reshape(4, PATCH_FRAMES, 96)).reshape(2, 2, -1).numpy()
        stats = torch.from_numpy(np.stack([patch_window(t, 0) for t in tagged]))
        logits = model(load_teacher("MSD_musicnn").frame_features(x), stats)
    np.testing.assert_allclose(got["genre"], torch.softmax(logits["genre"], dim=1).numpy(), atol=1e-5)


def _parser():
    from rtgenre.training.commands import add_train_arguments

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    return p


def test_train_option_errors(tmp_path):
    from rtgenre.training.commands import run_train

    with pytest.raises(UsageError):
        run_train(_parser().parse_args(["--folds", "3"]))
    with pytest.raises(UsageError, match="group-by"):
        run_train(_parser().parse_args(["--group-by", "artist"]))
    with pytest.raises(UsageError):
        run_train(_parser().parse_args(["--epochs", "0"]))
    (tmp_path / "only").mkdir()
    sf.write(tmp_path / "only" / "a.wav", np.zeros(16000 * 8, np.float32), 16000)
    with pytest.raises(DataInvalidError, match="class"):
        run_train(_parser().parse_args(["--data", str(tmp_path)]))
    with pytest.raises(UsageError, match="teacher-prior"):
        run_train(_parser().parse_args(["--data", str(tmp_path), "--teacher-prior"]))


def _gtzan_like(root: Path, clips: int = 4, seconds: float = 8.0, rate: int = 22050) -> None:
    """3 classes: sines, white noise, click trains."""
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    for c in ("sine", "noise", "clicks"):
        (root / c).mkdir(parents=True)
        for i in range(clips):
            if c == "sine":
                x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * np.arange(n) / rate)
            elif c == "noise":
                x = 0.1 * rng.standard_normal(n)
            else:
                x = np.zeros(n)
                x[:: int(rate * rng.uniform(0.1, 0.3))] = 0.9
            sf.write(root / c / f"{c}{i}.wav", x.astype(np.float32), rate)


@needs_weights
def test_train_on_a_labels_csv_with_grouped_folds_writes_a_loadable_model(tmp_path):
    from rtgenre.inference.onnxruntime import OnnxRuntimeEngine
    from rtgenre.training.commands import run_train

    _gtzan_like(tmp_path / "data")
    rows = ["file,kind,artist"] + [f"{c}/{c}{i}.wav,{c},{c}-artist{i % 2}" for c in ("sine", "noise", "clicks") for i in range(4)]
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    out = io.StringIO()
    with redirect_stdout(out):
        rc = run_train(_parser().parse_args(["--data", str(tmp_path / "data" / "labels.csv"), "--column", "kind", "--group-by", "artist",
                                             "--out", str(tmp_path / "models"), "--cache", str(tmp_path / "cache"),
                                             "--folds", "2", "--epochs", "15", "--batch", "8", "--name", "mine"]))
    assert rc == 0
    assert "2-fold cross-validation grouped by artist: clip accuracy" in out.getvalue()
    card = load_card(tmp_path / "models" / "mine.json")
    assert [h.name for h in card.heads] == ["kind"] and card.head("kind").labels == ("clicks", "noise", "sine")
    cv = card.raw["evaluation"]["cross_validation"]
    assert cv["folds"] == 2 and cv["group_by"] == "artist" and len(cv["per_fold"]) == 2
    assert sum(f["clips"] for f in cv["per_fold"]) == 12
    from rtgenre.training.export import load_backend
    from rtgenre.training.real import WindowBackend

    assert isinstance(load_backend(tmp_path / "models" / "mine.backend.npz"), WindowBackend)
    # the exported model runs in the runtime engine and tells the three kinds of signal apart on its training clips
    import soxr

    from rtgenre.dsp.mel import log_mel

    x = []
    for c in card.head("kind").labels:
        a, r = sf.read(tmp_path / "data" / c / f"{c}0.wav", dtype="float32")
        x.append(log_mel(soxr.resample(a, r, 16000), card.frontend)[: card.window_frames])
    probs = OnnxRuntimeEngine(card).run(np.stack(x))["kind"]
    assert (probs.argmax(1) == np.arange(3)).sum() >= 2


@needs_weights
def test_train_on_a_corpus_caches_features_and_exports(tmp_path):
    from rtgenre.training.commands import run_train

    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpora" / "tiny"
    tracks = []
    for i in range(3):
        p = corpus / f"t{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(16000 * 9)).astype(np.float32), 16000)
        tracks.append(Track(p, 9.0, "rock" if i else None, ["drums"] if i else None))
    write_manifest(corpus, tracks)
    with redirect_stdout(io.StringIO()):
        rc = run_train(_parser().parse_args(["--corpus", str(corpus), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "engines"),
                                             "--epochs", "1", "--steps", "2", "--batch", "4", "--name", "tiny", "--teacher-prior"]))
    assert rc == 0
    index = [json.loads(line) for line in (tmp_path / "cache" / "tiny" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 3 and all(r["frames"] == (16000 * 9 - 512) // 256 + 1 for r in index)
    feats = np.load(tmp_path / "cache" / "tiny" / f"{index[0]['id']}.feats.npy")
    tags = np.load(tmp_path / "cache" / "tiny" / f"{index[0]['id']}.tags.npy")
    assert feats.shape == (index[0]["frames"], 753) and tags.shape == (index[0]["frames"] // 187, 100)
    assert ((tags >= 0) & (tags <= 1)).all()
    assert [r["held_out"] for r in index] == [False, False, True]  # t2.wav: the stable hash puts it in the held-out 10 %
    card = load_card(tmp_path / "engines" / "tiny.json")
    assert card.raw["training"]["corpora"]["tiny"]["hours"] == pytest.approx(27 / 3600, abs=1e-3)
    assert card.mappings["gtzan"] == GTZAN_MAP and set(card.mappings["broad"]) == set(GTZAN_MAP)
    # the held-out track was scored both on cached features and through the exported model at run time (one window of 9 s)
    ev = card.raw["evaluation"]
    assert ev["held_out_agreement"]["tiny"]["windows"] == 1 and ev["held_out_agreement_runtime"]["tiny"]["windows"] == 1
    assert ev["held_out_agreement_runtime"]["tiny"]["genre_top1"] in (0.0, 1.0)
    from rtgenre.training.export import load_backend

    assert load_backend(tmp_path / "engines" / "tiny.backend.npz").config.teacher_prior  # --teacher-prior reaches the exported back end


def _prior_backend(teacher_prior: bool, teacher=None):
    from rtgenre.training.commands import _heads
    from rtgenre.training.model import Backend, BackendConfig

    torch.manual_seed(0)
    return Backend(BackendConfig(heads=_heads(), teacher_prior=teacher_prior), teacher).eval()


def test_teacher_prior_is_the_log_of_the_mapped_msd_tags():
    from rtgenre.training.model import PRIOR_EPS
    from rtgenre.training.musicnn import teacher_tags

    torch.manual_seed(0)
    teacher = Musicnn().eval()
    backend = _prior_backend(True, teacher)
    with torch.no_grad():
        for p in backend.priors.values():
            p.scale.uniform_(0.5, 2.0)
        feats = torch.randn(3, 469, 753)
        tags = teacher.tags_from_features(feats).numpy()
        msd_only = TagMapper({"MSD_musicnn": teacher_tags("MSD_musicnn")})
        want = msd_only.scores(tags)  # the distillation rule, MSD tags only: max of each label's tags
        for head, prior in backend.priors.items():
            has = msd_only.has_teacher(head)
            got = prior(torch.from_numpy(tags)).numpy()
            np.testing.assert_allclose(got[:, has], prior.scale.numpy()[has] * np.log(want[head][:, has] + PRIOR_EPS), rtol=1e-5, atol=1e-6)
            assert (got[:, ~has] == 0).all()  # no MSD tag, no prior (e.g. classical, keys, bass)
    assert set(backend.priors) == {"genre", "mood", "instruments"}
    assert not msd_only.has_teacher("genre")[HEADS["genre"][1].index("classical")]
    # the teacher is the frozen published checkpoint: not a parameter, not in the saved state
    assert not any(k.startswith("teacher") for k in backend.state_dict())
    assert all(p.requires_grad is False for p in teacher.parameters())


def test_zero_prior_scales_recover_the_plain_backend():
    plain = _prior_backend(False)
    prior = _prior_backend(True, Musicnn().eval())
    prior.load_state_dict(plain.state_dict(), strict=False)  # same projection, LSTM and head weights
    feats = torch.randn(2, 469, 753)
    with torch.no_grad():
        for p in prior.priors.values():
            p.scale.zero_()
        a, b = plain(feats), prior(feats)
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        prior.priors["genre"].scale.fill_(1.0)
        assert not torch.allclose(plain(feats)["genre"], prior(feats)["genre"])


def test_training_one_head_trains_its_prior_scales_only():
    from rtgenre.training.distill import train_backend

    teacher = Musicnn().eval()
    backend = _prior_backend(True, teacher)
    before = {k: v.clone() for k, v in backend.state_dict().items()}
    teacher_before = teacher.output.weight.clone()
    rng = np.random.default_rng(0)
    items = [Item(rng.standard_normal((480, 753)).astype(np.float32), None, {"genre": i % 15}, f"g{i}") for i in range(6)]
    train_backend(backend, items, CropSampler(HEADS, None), epochs=1, steps_per_epoch=3, batch_size=4, trainable=["genre"], finetune_backend=False, log=None)
    after = backend.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"priors.genre.scale", "heads.genre.weight", "heads.genre.bias"} <= changed
    assert all(k.startswith(("priors.genre.", "heads.genre.")) for k in changed)
    assert "priors.genre.mask" not in changed  # the tag map is fixed
    assert torch.equal(teacher.output.weight, teacher_before)
