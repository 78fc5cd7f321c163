"""The on-disk cache of built TensorRT plans (serialized engines).

Building a TensorRT engine takes seconds to minutes; a plan only fits the exact
ONNX file, TensorRT build, GPU and build options it came from.  This module owns
the cache folder ``$XDG_CACHE_HOME/rtgenre/engines/`` (default
``~/.cache/rtgenre/engines/``), the cache key, and the integrity checks.

Each entry is two files named by the key (a SHA-256 hex digest):

- ``<key>.plan``: the serialized plan, bytes as TensorRT wrote them;
- ``<key>.json``: the sidecar, the :class:`PlanKey` fields, the plan's size and
  SHA-256, and when it was built.

:meth:`PlanCache.load` returns ``None`` for a missing, stale or corrupt entry
and deletes a corrupt one, so the caller rebuilds it; a plan is never trusted
unless its checksum matches the sidecar.  Writes are atomic (temporary file in
the same folder, then ``os.replace``), plan first and sidecar last, so a
crash mid-write leaves at worst a plan without a sidecar, which reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SIDECAR_FORMAT = 1


def default_cache_dir() -> Path:
    """The plan cache folder: ``$XDG_CACHE_HOME/rtgenre/engines`` or ``~/.cache/rtgenre/engines``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rtgenre" / "engines"


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan depends on; its digest names the cache entry.

    Attributes
    ----------
    onnx_sha256 : str
        SHA-256 of the ONNX file the plan was built from.
    trt_module : str
        ``tensorrt`` or ``tensorrt_rtx``.
    trt_version : str
        The module's ``__version__``.
    gpu_name : str
        CUDA device name.
    compute_capability : str
        ``"major.minor"``.
    precision : str
        The precision that was built (``fp16`` or ``fp32``).
    profile_min, profile_opt, profile_max : int
        Batch sizes of the optimisation profile.
    profile_frames : str
        ``"min/opt/max"`` frames of a graph with a dynamic frame axis (the
        streaming encoder); empty for fixed-length windows, and then left out
        of the digest, so that those keys are what they were before the field.
    """

    onnx_sha256: str
    trt_module: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile_min: int
    profile_opt: int
    profile_max: int
    profile_frames: str = ""

    def digest(self) -> str:
        """SHA-256 hex digest of the fields (canonical JSON; an empty ``profile_frames`` left out)."""
        d = asdict(self)
        if not d["profile_frames"]:
            del d["profile_frames"]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PlanKey":
        """Rebuild a key from a sidecar's ``key`` object (raises ``KeyError``/``TypeError``/``ValueError`` when incomplete)."""
        kw = {}
        for f in fields(cls):
            value = d[f.name] if f.name != "profile_frames" else d.get(f.name, "")
            kw[f.name] = int(value) if f.type == "int" else str(value)
        return cls(**kw)


@dataclass(frozen=True)
class CacheEntry:
    """One complete cache entry as listed by :meth:`PlanCache.entries`."""

    key: PlanKey
    digest: str
    plan_path: Path
    size: int
    built_at: float
    build_seconds: float


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PlanCache:
    """A folder of TensorRT plans keyed by :class:`PlanKey`.

    Parameters
    ----------
    directory : Path or None
        Cache folder; ``None`` uses :func:`default_cache_dir`.  Created on the first store.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def paths(self, key: PlanKey) -> tuple[Path, Path]:
        """The plan and sidecar paths of ``key``'s entry."""
        d = key.digest()
        return self.directory / f"{d}.plan", self.directory / f"{d}.json"

    def load(self, key: PlanKey) -> bytes | None:
        """Return the cached plan for ``key``, or ``None`` when it must be (re)built.

        A missing plan or sidecar is a miss.  A sidecar that does not describe
        ``key`` (stale), or a plan whose size or SHA-256 differs from the
        sidecar's (truncated, bit-flipped), makes the entry corrupt: both files
        are deleted and ``None`` is returned.
        """
        plan_path, side_path = self.paths(key)
        if not plan_path.is_file() or not side_path.is_file():
            return None
        try:
            side = json.loads(side_path.read_text())
            ok = (
                side.get("format") == SIDECAR_FORMAT
                and PlanKey.from_json(side["key"]) == key
                and isinstance(side.get("plan_sha256"), str)
            )
            plan = plan_path.read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            ok, plan = False, b""
        if ok and len(plan) == side.get("plan_size") and _sha256(plan) == side["plan_sha256"]:
            return plan
        self.remove(key)
        return None

    def store(self, key: PlanKey, plan: bytes, build_seconds: float = 0.0) -> Path:
        """Write ``plan`` for ``key`` atomically; return the plan's path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        plan = bytes(plan)
        plan_path, side_path = self.paths(key)
        side = {
            "format": SIDECAR_FORMAT,
            "key": asdict(key),
            "plan_sha256": _sha256(plan),
            "plan_size": len(plan),
            "built_at": time.time(),
            "build_seconds": round(float(build_seconds), 3),
        }
        _atomic_write(plan_path, plan)
        _atomic_write(side_path, (json.dumps(side, indent=2, sort_keys=True) + "\n").encode())
        return plan_path

    def remove(self, key: PlanKey) -> None:
        """Delete ``key``'s entry (both files) if present."""
        for p in self.paths(key):
            p.unlink(missing_ok=True)

    def entries(self) -> list[CacheEntry]:
        """Complete, readable entries (sidecar and plan present), newest first; checksums are not verified here."""
        out = []
        if not self.directory.is_dir():
            return out
        for side_path in self.directory.glob("*.json"):
            plan_path = side_path.with_suffix(".plan")
            try:
                side = json.loads(side_path.read_text())
                key = PlanKey.from_json(side["key"])
                if not plan_path.is_file() or key.digest() != side_path.stem:
                    continue
                out.append(CacheEntry(key, side_path.stem, plan_path, plan_path.stat().st_size, float(side.get("built_at", 0.0)), float(side.get("build_seconds", 0.0))))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
        return sorted(out, key=lambda e: e.built_at, reverse=True)
