"""The real-data feature cache on a small labelled tree of its own: a second encoder reaches every clip, mixes included."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from rtgenre.errors import UsageError  # noqa: E402
from rtgenre.training.musicnn import MUSICNN_DIR  # noqa: E402
from rtgenre.training.realdata import (  # noqa: E402
    Encoders,
    add_encoder,
    array_path,
    build_cache,
    catalogue,
    fit_length,
    load_features,
    mix_audio,
    read_index,
)

pytestmark = pytest.mark.skipif(not all((MUSICNN_DIR / f"{n}.npz").is_file() for n in ("MSD_musicnn", "MTT_musicnn")),
                                reason="musicnn weights not in rtgenre/models/musicnn/")
RATE = 16000


def _wav(path: Path, seconds: float, seed: int) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * (110 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), RATE)
    return path.name


def _csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """``data/``: two songs, a GTZAN excerpt, a solo clarinet and singer, a Freesound clip, two speech clips, a real-music clip."""
    root = tmp_path_factory.mktemp("shared")
    t = root / "train"
    _csv(t / "4q" / "labels.csv", [{"file": _wav(t / "4q" / f"s{i}.wav", 12.0, i), "quadrant": "Q1", "allmusic_genres": "Jazz",
                                   "genre_single": "jazz", "artist": f"A{i}", "title": "x"} for i in range(2)])
    _csv(t / "gtzan-excerpts" / "labels.csv", [{"file": _wav(t / "gtzan-excerpts" / "g.wav", 3.0, 2), "genre": "jazz"}])
    _csv(t / "instruments-medley" / "labels.csv", [{"file": _wav(t / "instruments-medley" / f"m{i}.wav", 3.0, 3 + i), "instrument": n}
                                                   for i, n in enumerate(("clarinet", "female_singer"))])
    _csv(t / "instruments-freesound" / "labels.csv", [{"file": _wav(t / "instruments-freesound" / "f.wav", 2.0, 5), "instrument": "Flute"}])
    _csv(t / "speech" / "labels.csv", [{"file": f"talk/{_wav(t / 'speech' / 'talk' / f'p{i}.wav', 4.0, 6 + i)}", "label": "speech",
                                        "source": "talk", "speaker_or_source": f"p{i}"} for i in range(2)])
    _csv(root / "real-music" / "LABELS.csv", [{"file": _wav(root / "real-music" / "r.wav", 11.0, 8), "style": "swing", "broad_genre": "jazz"}])
    return root


def test_a_second_encoder_reaches_every_clip_and_mix_as_the_first_saw_it(shared, tmp_path):
    cache = tmp_path / "cache"
    build_cache(cache, shared, mixes=2, log=None)
    clips = read_index(cache)
    assert len(clips) == len(catalogue(shared)) + 2 and sum(c.dataset == "mix" for c in clips) == 2
    add_encoder(cache, "MTT_musicnn", shared, mixes=2, log=None)
    for c in clips:
        msd, mtt = load_features(cache, c), load_features(cache, c, "mtt")
        assert mtt.shape == msd.shape == (c.frames, 753) and not np.allclose(msd, mtt)  # the same frames, another encoder
        assert array_path(cache, c, "mtt-tags").is_file()
    # the mixes were made again exactly: the first encoder over them gives the cached features back
    msd = Encoders("MSD_musicnn", workdir=cache)
    mixes = {c.id: c for c in clips if c.dataset == "mix"}
    for rec, audio in mix_audio(catalogue(shared), 2, 0):
        np.testing.assert_array_equal(msd.process(fit_length(audio))[""], np.load(array_path(cache, mixes[rec.id])))
    # resumable: a second run writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.mtt.npy")}
    add_encoder(cache, "MTT_musicnn", shared, mixes=2, log=None)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.mtt.npy")} == stamps


def test_a_patch_tagger_reaches_every_clip_and_mix_patch_by_patch(shared, tmp_path):
    """``--add-vgg``: MSD_vgg's outputs on each clip's consecutive 187-frame patches from its start, mixes included."""
    from rtgenre.dsp.mel import log_mel
    from rtgenre.training.features import FRONTEND
    from rtgenre.training.musicnn import PATCH_FRAMES, load_vgg
    from rtgenre.training.realdata import read_audio

    cache = tmp_path / "cache"
    build_cache(cache, shared, mixes=2, log=None)
    add_encoder(cache, "MSD_vgg", shared, mixes=2, log=None)
    clips = read_index(cache)
    net = load_vgg("MSD_vgg")
    for c in clips:
        patches = load_features(cache, c, "msd-vgg")
        assert patches.shape == (c.frames // PATCH_FRAMES, 306)
    song = next(c for c in clips if c.dataset == "4q")
    mel = log_mel(fit_length(read_audio(song.file)), FRONTEND)
    with torch.no_grad():
        second = net.embed(torch.from_numpy(mel[PATCH_FRAMES : 2 * PATCH_FRAMES][None])).numpy()[0]
    np.testing.assert_allclose(load_features(cache, song, "msd-vgg")[1], second, rtol=2e-3, atol=2e-3)  # float16 in the cache


def test_augmented_copies_are_each_music_clip_played_slower_and_faster(shared, tmp_path):
    """``--augment``: MSD features of each music clip resampled as if played ``factor`` times as fast, before the
    excerpts are looped; no copies of speech or mixes; training draws windows from them, evaluation never does."""
    import soxr

    from rtgenre.training.real import WINDOW_STEPS, _crop, eval_windows, load_examples
    from rtgenre.training.realdata import AUGMENTED_DATASETS, add_augmented, read_audio, speed_kind

    cache = tmp_path / "cache"
    build_cache(cache, shared, mixes=2, log=None)
    add_augmented(cache, (0.9, 1.1), log=None)
    clips = read_index(cache)
    msd = Encoders("MSD_musicnn", workdir=cache)
    for c in clips:
        copies = [array_path(cache, c, speed_kind(f)).is_file() for f in (0.9, 1.1)]
        assert copies == [c.dataset in AUGMENTED_DATASETS] * 2, c.id
    song = next(c for c in clips if c.dataset == "4q")  # 12 s: 13.3 s slower, 10.9 s faster
    fast = load_features(cache, song, speed_kind(1.1))
    assert len(load_features(cache, song, speed_kind(0.9))) == 1 + (int(12.0 / 0.9 * RATE) - 512) // 256
    np.testing.assert_array_equal(fast, msd.process(soxr.resample(read_audio(song.file), int(1.1 * RATE), RATE))[""].astype(np.float32))
    excerpt = next(c for c in clips if c.dataset == "gtzan")  # 3 s: each copy looped to 10 s, as the clip is
    assert len(load_features(cache, excerpt, speed_kind(1.1))) == len(load_features(cache, excerpt)) == excerpt.frames
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.speed*.npy")}
    add_augmented(cache, (0.9, 1.1), log=None)  # resumable: nothing written again
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.speed*.npy")} == stamps

    examples = {e.clip.id: e for e in load_examples(cache, augment=(speed_kind(0.9), speed_kind(1.1)), log=None)}
    e = examples[song.id]
    assert len(e.views) == 2 and not examples[next(c.id for c in clips if c.dataset == "speech")].views
    rng = np.random.default_rng(0)
    drawn = [_crop(e, rng)[0] for _ in range(300)]
    sources = [e.maxp, *(v[0] for v in e.views)]
    hits = [sum(any(np.array_equal(d, s[k : k + WINDOW_STEPS]) for k in range(len(s) - WINDOW_STEPS + 1)) for d in drawn) for s in sources]
    assert sum(hits) == 300 and min(hits) > 60  # every window from one of the three, each drawn about as often
    np.testing.assert_array_equal(eval_windows(e)[0][0].numpy(), e.maxp[:WINDOW_STEPS])  # evaluation reads the clip itself

    # two encoders (the duo): a copy counts where both have it, their features side by side as in the clip's own
    add_encoder(cache, "MTT_musicnn", shared, mixes=2, log=None)
    add_augmented(cache, (1.1,), name="MTT_musicnn", log=None)
    assert load_features(cache, song, "mtt-" + speed_kind(1.1)).shape == fast.shape
    duo = {e.clip.id: e for e in load_examples(cache, encoders=("MSD_musicnn", "MTT_musicnn"), augment=(speed_kind(0.9), speed_kind(1.1)), log=None)}
    (maxp, _), = duo[song.id].views
    assert maxp.shape[1] == 2 * 753 and duo[song.id].maxp.shape[1] == 2 * 753
    np.testing.assert_array_equal(maxp[:, :753], e.views[1][0])
    with pytest.raises(UsageError, match="patch taggers"):
        load_examples(cache, encoders=("MSD_musicnn", "MSD_vgg"), augment=(speed_kind(1.1),), log=None)
