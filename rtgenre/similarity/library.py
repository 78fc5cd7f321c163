"""The similarity library: one SQLite file of packed codes and track metadata.

Format (``meta.format`` = 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)
        format, model, model_sha256, bits, hop_s, segment_s, created
    tracks(id INTEGER PRIMARY KEY, path TEXT UNIQUE, size INTEGER, mtime_ns INTEGER,
           duration REAL, labels TEXT,          -- JSON {head: label | [labels]}
           code BLOB,                           -- bits / 8 bytes, np.packbits order
           segment_index BLOB,                  -- uint16 little-endian: segment i starts at i * segment_s
           segment_codes BLOB)                  -- one code per entry of segment_index
    failures(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, error TEXT)

A track is stored with its whole-track code and one code per segment
(:mod:`rtgenre.similarity.indexer`).  Every track is committed on its own, so
an interrupted ``rtgenre index`` resumes where it stopped; a file whose size
or modification time changed is analysed again, and files that disappeared
are removed.  Codes only compare within one model, so the library records the
model's name, ONNX SHA-256 and code length and refuses another model.
Searches load all codes into memory once (16 bytes per track at 128 bits,
plus 16 per segment); one row per track keeps that load fast.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtgenre.card import ModelCard
from rtgenre.errors import LibraryMismatchError, LibraryUnusableError
from rtgenre.similarity.codes import CodeIndex, group_min, top_k

FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tracks(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL NOT NULL, labels TEXT NOT NULL, code BLOB NOT NULL,
    segment_index BLOB NOT NULL, segment_codes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS failures(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, error TEXT NOT NULL);
"""


@dataclass
class TrackCodes:
    """What the library stores about one analysed track."""

    duration: float
    labels: dict[str, Any]
    code: np.ndarray
    segment_index: np.ndarray
    """Segment numbers (segment ``i`` starts at ``i * segment_s``; silent ones are missing)."""
    segment_codes: np.ndarray


@dataclass
class Match:
    """One search result."""

    path: str
    distance: int
    segment: float
    segment_distance: int
    duration: float
    labels: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "distance": self.distance, "segment": self.segment, "segment_distance": self.segment_distance,
                "duration": self.duration, "labels": self.labels}


def file_state(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)``: what tells the library that a file changed."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class Library:
    """An open similarity library.

    Parameters
    ----------
    path : Path
        The SQLite file.
    card : ModelCard
        The model whose codes the library holds (or will hold).  It must have a
        ``hash`` output; an existing library must have been built with it.
    create : bool
        Create the file when it does not exist (``rtgenre index``); otherwise a
        missing library is an error.
    hop_s, segment_s : float
        Analysis hop and segment length recorded in a new library.
    """

    def __init__(self, path: str | Path, card: ModelCard, create: bool = False, hop_s: float = 5.0, segment_s: float = 15.0) -> None:
        self.path = Path(path)
        if card.hash is None:
            raise LibraryMismatchError(f"Model {card.name} has no hash output, so it cannot make similarity codes",
                                       "Use a model exported with a hash layer (card entry \"hash\"; see README, 'Sounds like')")
        if create and not self.path.parent.is_dir():
            raise LibraryUnusableError(f"The folder {self.path.parent} for library {self.path.name} does not exist", "Create it, or pass another --out")
        if not create and not self.path.is_file():
            raise LibraryUnusableError(f"Library {self.path} does not exist", f"Build it first: rtgenre index MUSIC_FOLDER --out {self.path}")
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA foreign_keys = ON")
            existing = self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if existing is None:
                if self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise sqlite3.DatabaseError("an SQLite file without the library's tables")
                if not create:
                    raise sqlite3.DatabaseError("an empty file")
                self._create(card, hop_s, segment_s)
            self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise LibraryUnusableError(f"{self.path} is not an rtgenre library ({e})", "Pass a file written by `rtgenre index --out`, or a new path to create one") from None
        if self.meta.get("format") != str(FORMAT):
            raise LibraryUnusableError(f"Library {self.path} has format {self.meta.get('format')}, this rtgenre reads format {FORMAT}",
                                       "Rebuild it with `rtgenre index --out NEW_LIBRARY`")
        if (self.meta["model_sha256"], int(self.meta["bits"])) != (card.onnx_sha256, card.hash.bits):
            raise LibraryMismatchError(
                f"Library {self.path} holds {self.meta['bits']}-bit codes of model {self.meta['model']} ({self.meta['model_sha256'][:12]}), "
                f"not of {card.name} ({card.onnx_sha256[:12]}, {card.hash.bits} bits)",
                "Use the model the library was built with (--model), or build a new library with this one")
        self.bits = card.hash.bits
        self.hop_s = float(self.meta["hop_s"])
        self.segment_s = float(self.meta["segment_s"])
        self._arrays: tuple | None = None

    def _create(self, card: ModelCard, hop_s: float, segment_s: float) -> None:
        with self.db:
            self.db.executescript(_SCHEMA)
            meta = {"format": FORMAT, "model": card.name, "model_sha256": card.onnx_sha256, "bits": card.hash.bits,
                    "hop_s": hop_s, "segment_s": segment_s, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------

    def state(self, path: Path) -> str:
        """``new``, ``changed``, ``current`` (analysed, unchanged) or ``failed`` (unreadable before, unchanged)."""
        key, now = str(path), file_state(path)
        row = self.db.execute("SELECT size, mtime_ns FROM tracks WHERE path = ?", (key,)).fetchone()
        if row is not None:
            return "current" if tuple(row) == now else "changed"
        row = self.db.execute("SELECT size, mtime_ns FROM failures WHERE path = ?", (key,)).fetchone()
        return "failed" if row is not None and tuple(row) == now else "new"

    def failure(self, path: Path) -> str:
        """The recorded error of a file that could not be analysed."""
        row = self.db.execute("SELECT error FROM failures WHERE path = ?", (str(path),)).fetchone()
        return row[0] if row else ""

    def put(self, path: Path, state: tuple[int, int], track: TrackCodes) -> None:
        """Add or replace one track (one transaction)."""
        key = str(path)
        with self.db:
            self.db.execute("DELETE FROM tracks WHERE path = ?", (key,))
            self.db.execute("DELETE FROM failures WHERE path = ?", (key,))
            self.db.execute("INSERT INTO tracks(path, size, mtime_ns, duration, labels, code, segment_index, segment_codes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (key, state[0], state[1], float(track.duration), json.dumps(track.labels), track.code.tobytes(),
                             np.asarray(track.segment_index, dtype="<u2").tobytes(), np.ascontiguousarray(track.segment_codes, dtype=np.uint8).tobytes()))
        self._arrays = None

    def put_failure(self, path: Path, state: tuple[int, int], error: str) -> None:
        """Record an unreadable file (a track of the same path is removed)."""
        with self.db:
            self.db.execute("DELETE FROM tracks WHERE path = ?", (str(path),))
            self.db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (str(path), state[0], state[1], error))
        self._arrays = None

    def prune(self, roots: list[Path]) -> list[str]:
        """Remove tracks and failures under ``roots`` whose files no longer exist; return their paths."""
        gone = []
        for table in ("tracks", "failures"):
            for (p,) in self.db.execute(f"SELECT path FROM {table}").fetchall():
                if any(_under(Path(p), r) for r in roots) and not os.path.isfile(p):
                    gone.append((table, p))
        with self.db:
            self.db.executemany("DELETE FROM tracks WHERE path = ?", [(p,) for t, p in gone if t == "tracks"])
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for t, p in gone if t == "failures"])
        self._arrays = None
        return [p for t, p in gone if t == "tracks"]

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM tracks").fetchone()[0]

    # -- searching -----------------------------------------------------------

    def load(self) -> None:
        """Read every code into memory now (searches do it on first use; a live feed should not wait for it)."""
        self._load()

    def _load(self) -> tuple:
        if self._arrays is None:
            nbytes = self.bits // 8
            rows = self.db.execute("SELECT path, duration, labels, code, segment_index, segment_codes FROM tracks ORDER BY id").fetchall()
            codes = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.uint8).reshape(len(rows), nbytes)
            seg_index = np.frombuffer(b"".join(r[4] for r in rows), dtype="<u2")
            seg_codes = np.frombuffer(b"".join(r[5] for r in rows), dtype=np.uint8).reshape(len(seg_index), nbytes)
            starts = np.concatenate([[0], np.cumsum([len(r[4]) // 2 for r in rows])[:-1]]).astype(np.int64) if rows else np.zeros(0, np.int64)
            meta = [(r[0], r[1], r[2]) for r in rows]
            self._arrays = (CodeIndex(codes), seg_codes, CodeIndex(seg_codes), seg_index.astype(np.float64) * self.segment_s, starts, meta)
        return self._arrays

    def search(self, query: np.ndarray, k: int = 10, by_segment: bool = False) -> list[Match]:
        """The ``k`` nearest tracks to a packed query code.

        Parameters
        ----------
        query : ndarray, shape (bits / 8,), uint8
        k : int
        by_segment : bool
            False: rank by the whole-track code (a whole-track query); True:
            rank by each track's nearest segment (a query of a few seconds, or
            live listening).  Either way each match names its nearest segment.
        """
        codes, seg_packed, seg_codes, seg_start, starts, meta = self._load()
        if not len(codes):
            return []
        ends = np.append(starts[1:], len(seg_packed))
        if by_segment:
            seg_best, seg_row = group_min(seg_codes.distances(query), starts)
            found = [(i, int(seg_best[i]), int(seg_best[i]), int(seg_row[i])) for i in top_k(seg_best, k)]
        else:  # rank by track codes; the nearest segment only of the tracks found
            track_d = codes.distances(query)
            found = []
            for i in top_k(track_d, k):
                d = CodeIndex(seg_packed[starts[i] : ends[i]]).distances(query)
                found.append((i, int(track_d[i]), int(d.min()), int(starts[i] + np.argmin(d))))
        return [Match(meta[i][0], dist, float(seg_start[row]), seg_d, meta[i][1], json.loads(meta[i][2])) for i, dist, seg_d, row in found]


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
