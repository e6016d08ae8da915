"""Durable references in SQLite (WAL): one row per reference, acknowledged once committed.

Each row keeps the raw signal as well as its embedding, so a new model can re-embed everything.
``key`` (AUTOINCREMENT, never reused) is the reference's id inside the FAISS index. ``generation``
counts committed writes; an index snapshot records the generation it was made at, so start-up
knows whether the snapshot still agrees with the store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    element_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    metadata BLOB NOT NULL,
    channels INTEGER NOT NULL,
    length INTEGER NOT NULL,
    signal BLOB NOT NULL,
    embedding BLOB NOT NULL,
    model_version TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refs_element ON refs (element_id, key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', 0);
"""


KEYS_PER_QUERY = 256  # keys looked up by one SELECT ... IN (...)


@dataclass
class NewReference:
    id: str
    element_id: str
    session_id: str
    metadata: dict
    signal: np.ndarray  # (C, L) float32
    embedding: np.ndarray  # (D,) float32


@dataclass
class Labels:
    """What the index keeps of every reference: its key and integer codes of its element and
    session (indexes into the name lists), compact enough for millions of references."""

    keys: np.ndarray  # (N,) int64
    element_codes: np.ndarray  # (N,) int32
    session_codes: np.ndarray  # (N,) int32
    element_names: list[str]
    session_names: list[str]

    @staticmethod
    def empty() -> Labels:
        return Labels.from_names(np.zeros(0, np.int64), [], [])

    @staticmethod
    def from_names(keys: np.ndarray, element_ids: list[str], session_ids: list[str]) -> Labels:
        elements, element_codes = np.unique(np.asarray(element_ids, str), return_inverse=True)
        sessions, session_codes = np.unique(np.asarray(session_ids, str), return_inverse=True)
        return Labels(
            np.asarray(keys, dtype=np.int64),
            element_codes.astype(np.int32),
            session_codes.astype(np.int32),
            elements.tolist(),
            sessions.tolist(),
        )


class ReferenceStore:
    """Thread-safe access to the references database (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed write survives power loss too
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- writes ------------------------------------------------------------------------------
    def upsert(self, refs: list[NewReference], model_version: str) -> list[int]:
        """Insert or replace by id, all or nothing; returns each reference's key."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        rows = [
            (
                r.id,
                r.element_id,
                r.session_id,
                json.dumps(r.metadata),
                r.signal.shape[0],
                r.signal.shape[1],
                r.signal.astype(np.float32).tobytes(),
                r.embedding.astype(np.float32).tobytes(),
                model_version,
                now,
            )
            for r in refs
        ]
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                keys = [
                    self.db.execute(
                        "INSERT INTO refs (id, element_id, session_id, metadata, channels, length,"
                        " signal, embedding, model_version, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (id) DO UPDATE SET element_id=excluded.element_id,"
                        " session_id=excluded.session_id, metadata=excluded.metadata,"
                        " channels=excluded.channels, length=excluded.length,"
                        " signal=excluded.signal, embedding=excluded.embedding,"
                        " model_version=excluded.model_version, updated_at=excluded.updated_at"
                        " RETURNING key",
                        row,
                    ).fetchone()[0]
                    for row in rows
                ]
                self._bump_generation()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return keys

    def delete(self, ref_id: str) -> int | None:
        """Delete by id; returns the key it had, or None when there was no such id."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("DELETE FROM refs WHERE id = ? RETURNING key", (ref_id,))
                found = row.fetchone()
                if found:
                    self._bump_generation()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return found[0] if found else None

    def update_embeddings(self, keys: list[int], embeddings: np.ndarray, version: str) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "UPDATE refs SET embedding = ?, model_version = ? WHERE key = ?",
                [
                    (e.astype(np.float32).tobytes(), version, k)
                    for k, e in zip(keys, embeddings, strict=True)
                ],
            )
            self._bump_generation()
            self.db.execute("COMMIT")

    def _bump_generation(self) -> None:
        self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")

    # -- reads -------------------------------------------------------------------------------
    def generation(self) -> int:
        with self.lock:
            return self.db.execute("SELECT value FROM meta WHERE name='generation'").fetchone()[0]

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM refs").fetchone()[0]

    def get(self, ref_id: str) -> dict | None:
        with self.lock:
            row = self.db.execute(
                "SELECT id, element_id, session_id, metadata, channels, length, signal,"
                " model_version, updated_at FROM refs WHERE id = ?",
                (ref_id,),
            ).fetchone()
        if row is None:
            return None
        signal = np.frombuffer(row[6], dtype=np.float32).reshape(row[4], row[5])
        return {
            "id": row[0],
            "element_id": row[1],
            "session_id": row[2],
            "metadata": json.loads(row[3]),
            "signal": signal[0].tolist() if row[4] == 1 else signal.tolist(),
            "model_version": row[7],
            "updated_at": row[8],
        }

    def list(self, element_id: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        where, args = ("WHERE element_id = ?", (element_id,)) if element_id else ("", ())
        with self.lock:
            total = self.db.execute(f"SELECT COUNT(*) FROM refs {where}", args).fetchone()[0]
            rows = self.db.execute(
                f"SELECT id, element_id, session_id, metadata, length, model_version, updated_at"
                f" FROM refs {where} ORDER BY key LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        items = [
            {
                "id": r[0],
                "element_id": r[1],
                "session_id": r[2],
                "metadata": json.loads(r[3]),
                "length": r[4],
                "model_version": r[5],
                "updated_at": r[6],
            }
            for r in rows
        ]
        return items, total

    def describe(self, keys: list[int]) -> dict[int, tuple[str, str, str, dict]]:
        """key -> (id, element_id, session_id, metadata) for the keys still stored."""
        rows = self._rows_by_key("id, element_id, session_id, metadata", keys)
        return {k: (i, e, s, json.loads(m)) for k, i, e, s, m in rows}

    def embeddings(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the keys still stored, in the order given; their embeddings (n, D) float32)."""
        found = dict(self._rows_by_key("embedding", keys.tolist()))
        kept = [k for k in keys.tolist() if k in found]
        vectors = [np.frombuffer(found[k], dtype=np.float32) for k in kept]
        return np.array(kept, dtype=np.int64), (
            np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        )

    def _rows_by_key(self, columns: str, keys: list[int]) -> list[tuple]:
        """Rows of ``keys``, KEYS_PER_QUERY at a time. Every query has the same number of
        placeholders (padded with -1, never a key): sqlite3 caches one prepared statement per
        SQL text, and one per list length held ~40 MiB under load."""
        rows: list[tuple] = []
        marks = ",".join("?" * KEYS_PER_QUERY)
        sql = f"SELECT key, {columns} FROM refs WHERE key IN ({marks})"
        for start in range(0, len(keys), KEYS_PER_QUERY):
            part = keys[start : start + KEYS_PER_QUERY]
            with self.lock:
                rows += self.db.execute(sql, part + [-1] * (KEYS_PER_QUERY - len(part))).fetchall()
        return rows

    def labels(self) -> Labels:
        """Every reference's key and element and session codes, streamed: no per-row strings
        are kept, so a million references cost megabytes here, not hundreds of them."""
        keys, element_codes, session_codes = array("q"), array("i"), array("i")
        elements: dict[str, int] = {}
        sessions: dict[str, int] = {}
        with self.lock:
            cursor = self.db.execute("SELECT key, element_id, session_id FROM refs ORDER BY key")
            while rows := cursor.fetchmany(10_000):
                for key, element, session in rows:
                    keys.append(key)
                    element_codes.append(elements.setdefault(element, len(elements)))
                    session_codes.append(sessions.setdefault(session, len(sessions)))
        return Labels(
            np.frombuffer(keys, dtype=np.int64).copy(),
            np.frombuffer(element_codes, dtype=np.int32).copy(),
            np.frombuffer(session_codes, dtype=np.int32).copy(),
            list(elements),
            list(sessions),
        )

    def iter_embeddings(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, embeddings) in key order, a batch at a time."""
        last = -1
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT key, embedding FROM refs WHERE key > ? ORDER BY key LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            yield keys, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            last = int(keys[-1])

    def count_stale(self, model_version: str) -> int:
        with self.lock:
            return self.db.execute(
                "SELECT COUNT(*) FROM refs WHERE model_version != ?", (model_version,)
            ).fetchone()[0]

    def iter_stale_signals(
        self, model_version: str, batch: int = 256
    ) -> Iterator[list[tuple[int, np.ndarray]]]:
        """(key, signal (C, L)) of references embedded by another model, a batch at a time."""
        last = -1
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT key, channels, length, signal FROM refs"
                    " WHERE model_version != ? AND key > ? ORDER BY key LIMIT ?",
                    (model_version, last, batch),
                ).fetchall()
            if not rows:
                return
            yield [(r[0], np.frombuffer(r[3], dtype=np.float32).reshape(r[1], r[2])) for r in rows]
            last = rows[-1][0]
