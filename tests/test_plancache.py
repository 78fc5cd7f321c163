"""The TensorRT plan cache: keys, hits, misses, corruption and atomicity (pure Python, no GPU)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from rtgenre.inference.plancache import PlanCache, PlanKey, default_cache_dir

KEY = PlanKey(
    onnx_sha256="ab" * 32,
    trt_module="tensorrt",
    trt_version="10.13.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    profile_min=1,
    profile_opt=8,
    profile_max=256,
)
PLAN = bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path):
    return PlanCache(tmp_path / "engines")


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "rtgenre" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "rtgenre" / "engines"


def test_miss_then_hit(cache):
    assert cache.load(KEY) is None
    path = cache.store(KEY, PLAN, build_seconds=1.5)
    assert path.read_bytes() == PLAN
    assert cache.load(KEY) == PLAN
    side = json.loads(cache.paths(KEY)[1].read_text())
    assert side["key"] == dataclasses.asdict(KEY) and side["plan_size"] == len(PLAN)
    (entry,) = cache.entries()
    assert entry.key == KEY and entry.size == len(PLAN) and entry.build_seconds == 1.5


@pytest.mark.parametrize(
    "field,value",
    [
        ("onnx_sha256", "cd" * 32),
        ("trt_module", "tensorrt_rtx"),
        ("trt_version", "10.13.1"),
        ("gpu_name", "NVIDIA H200"),
        ("compute_capability", "8.9"),
        ("precision", "fp32"),
        ("profile_min", 2),
        ("profile_opt", 16),
        ("profile_max", 128),
    ],
)
def test_every_field_changes_the_key(cache, field, value):
    other = dataclasses.replace(KEY, **{field: value})
    assert other.digest() != KEY.digest()
    cache.store(KEY, PLAN)
    assert cache.load(other) is None
    assert cache.load(KEY) == PLAN


def test_key_digest_is_stable_and_round_trips():
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    assert PlanKey.from_json(json.loads(json.dumps(dataclasses.asdict(KEY)))) == KEY


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:100] + bytes([b[100] ^ 0x01]) + b[101:],  # one bit flipped
        lambda b: b"",  # emptied
    ],
    ids=["truncated", "bitflip", "empty"],
)
def test_damaged_plan_is_deleted_and_rebuilt(cache, damage):
    plan_path, side_path = cache.paths(KEY)
    cache.store(KEY, PLAN)
    plan_path.write_bytes(damage(PLAN))
    assert cache.load(KEY) is None
    assert not plan_path.exists() and not side_path.exists()
    cache.store(KEY, PLAN)
    assert cache.load(KEY) == PLAN


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(plan_sha256="0" * 64),
        lambda s: s["key"].update(precision="fp32"),  # sidecar describes another key
        lambda s: s.pop("key"),
        lambda s: s.update(format=99),
    ],
    ids=["checksum", "stale-key", "no-key", "format"],
)
def test_sidecar_mismatch_is_corrupt(cache, edit):
    plan_path, side_path = cache.paths(KEY)
    cache.store(KEY, PLAN)
    side = json.loads(side_path.read_text())
    edit(side)
    side_path.write_text(json.dumps(side))
    assert cache.load(KEY) is None
    assert not plan_path.exists() and not side_path.exists()


def test_unreadable_sidecar_is_corrupt(cache):
    plan_path, side_path = cache.paths(KEY)
    cache.store(KEY, PLAN)
    side_path.write_text("{not json")
    assert cache.load(KEY) is None and not plan_path.exists()


def test_plan_without_sidecar_is_a_miss(cache):
    plan_path, side_path = cache.paths(KEY)
    cache.store(KEY, PLAN)
    side_path.unlink()
    assert cache.load(KEY) is None
    assert cache.entries() == []


def test_store_is_atomic_and_leaves_no_temporaries(cache, monkeypatch):
    cache.store(KEY, PLAN)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        cache.store(KEY, b"new plan")
    monkeypatch.undo()
    assert cache.load(KEY) == PLAN  # the old entry is intact
    assert sorted(p.suffix for p in cache.directory.iterdir()) == [".json", ".plan"]


def test_entries_lists_only_complete_entries_newest_first(cache):
    other = dataclasses.replace(KEY, precision="fp32")
    cache.store(KEY, PLAN)
    cache.store(other, PLAN[:10])
    side = cache.paths(KEY)[1]
    data = json.loads(side.read_text())
    data["built_at"] -= 100
    side.write_text(json.dumps(data))
    (cache.directory / "junk.json").write_text("[]")
    assert [e.key for e in cache.entries()] == [other, KEY]
    assert PlanCache(cache.directory / "absent").entries() == []
