"""Durable references, on either engine of :mod:`app.database`; a write is acknowledged once
committed.

Tables: ``refs`` (one row per reference: the raw signal too, so a new model can re-embed it, and
when it was recorded; ``key`` is its id in the vector index, never reused), ``embeddings`` (one
vector per reference and model version: replicas of two model versions can serve side by side
during a rollout, each searching its own), ``changes`` (the change log: one row per written or
deleted key with a sequence number, appended in the write's own transaction; every process
applies it to its index) and ``meta`` (the schema version, and how far the change log has been
pruned).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from app.database import INDEXES, Database, Transaction
from app.errors import NotFound
from app.labels import IndexRows
from app.schemas import ElementSummary, ReferenceOut, ReferenceSummary

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5  # 4: api_keys; 5: collections (refs and changes name theirs)
DEFAULT_COLLECTION = "default"  # what the routes without /collections/{name} serve; id 0
KEYS_PER_QUERY = 256  # keys looked up by one SELECT ... IN (...)
PRUNE_EVERY = 1000  # writes between two prunings of the change log


class SchemaTooNew(RuntimeError):
    """The database was made by a newer version of the service."""


@dataclass
class NewReference:
    id: str
    element_id: str
    session_id: str
    metadata: dict
    signal: np.ndarray  # (C, L) float32
    embedding: np.ndarray  # (D,) float32
    recorded_at: str | None = None  # as timestamp() writes it; None: when stored


@dataclass
class Committed:
    keys: list[int]
    seq: int  # the change log's sequence number of the write's last entry


@dataclass
class Change:
    seq: int
    key: int
    committed_at: float  # unix seconds


@dataclass
class ChangePage:
    entries: list[Change]
    pruned_through: int  # entries up to this sequence number are gone from the log
    through: int  # the log's end when read (every collection's)


@dataclass
class Unembedded:
    """A reference without an embedding of the asking model (written by another version)."""

    key: int
    revision: int  # the change that wrote its signal: an embedding is kept only if unchanged
    signal: np.ndarray  # (C, L)


@dataclass
class StoredShape:
    """The channels and lengths of a collection's stored signals."""

    channels: tuple[int, int]  # fewest, most
    lengths: tuple[int, int]  # shortest, longest

    def fits(self, limits) -> bool:
        """Whether a model of ``limits`` (app.signals.SignalLimits) takes every one of them."""
        return (
            self.channels == (limits.in_channels, limits.in_channels)
            and self.lengths[0] >= limits.min_length
            and self.lengths[1] <= limits.max_length
        )

    def __str__(self) -> str:
        low, high = self.channels
        channels = f"{low}" if low == high else f"{low} to {high}"
        return f"{channels} channel(s) of {self.lengths[0]} to {self.lengths[1]} samples"


@dataclass
class ElementReference:
    """One of an element's references, as drift monitoring groups them."""

    key: int
    session_id: str
    recorded_at: str


def _f32(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def timestamp(moment: datetime | None = None) -> str:
    """The stored form of a time (now when None): UTC, milliseconds, one fixed format, so the
    text sorts in time order on either engine. A time without a zone is taken as UTC."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class CollectionGone(NotFound):
    """The collection written to was deleted meanwhile (nothing was written)."""

    def __init__(self) -> None:
        super().__init__("collection", "the collection was deleted")


class ReferenceStore:
    """The references of one collection (``collection``: its id; 0 is ``default``); the schema,
    the change log's end and the start-up lock are the database's, shared by every collection."""

    def __init__(self, db: Database, change_log_keep: int = 100_000, collection: int = 0) -> None:
        self.db, self.change_log_keep, self.collection = db, change_log_keep, collection

    def of_collection(self, collection: int) -> ReferenceStore:
        """The same database's references of another collection."""
        return ReferenceStore(self.db, self.change_log_keep, collection)

    def close(self) -> None:
        self.db.close()

    def describe(self) -> str:
        return self.db.describe()

    def exclusive(self) -> AbstractContextManager[None]:
        """The start-up lock: one process at a time migrates, or embeds for a new model."""
        return self.db.exclusive()

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Calls ``on_change`` when another process commits (where the engine can tell), until
        ``stop`` is set."""
        self.db.listen(on_change, stop)

    # -- schema ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Creates or migrates the schema, one process at a time: the one place it happens."""
        with self.exclusive():
            found = self.migrate()
        if found not in (0, SCHEMA_VERSION):
            log.info("migrated the database from schema version %d", found)

    def migrate(self) -> int:
        """Creates or upgrades the schema (the caller holds the start-up lock); returns the
        version found. SchemaTooNew when a newer service made it."""
        with self.db.write() as s:
            found = self._schema_version(s)
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the database has schema version {found}, newer than this service's "
                    f"{SCHEMA_VERSION}: run a newer version of the service"
                )
            for statement in self.db.schema.split(";"):
                if statement.strip():
                    s.execute(statement)
            if found == 1:
                self._migrate_from_1(s)
            if found in (1, 2):
                self._migrate_from_2(s)
            if 0 < found < 5:
                self._migrate_from_4(s)
            for statement in INDEXES.split(";"):
                if statement.strip():
                    s.execute(statement)
            s.execute(
                "INSERT INTO collections (id, name, model, created_at) VALUES (0, ?, NULL, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (DEFAULT_COLLECTION, timestamp()),
            )
            s.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION,),
            )
            s.execute(
                "INSERT INTO meta (name, value) VALUES ('pruned_through', 0)"
                " ON CONFLICT (name) DO NOTHING"
            )
            s.execute(  # which database this is: a restore makes a new one
                "INSERT INTO meta (name, value) VALUES ('epoch', ?) ON CONFLICT (name) DO NOTHING",
                (secrets.randbits(62),),
            )
        return found

    def _schema_version(self, s: Transaction) -> int:
        if not self.db.table_exists(s, "meta"):
            return 0
        row = s.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return int(row[0]) if row else 1  # version 1 kept a generation counter only

    def _migrate_from_1(self, s: Transaction) -> None:
        """Version 1 (SQLite only) kept one embedding column in ``refs`` and no change log (the
        schema's new tables exist by now)."""
        s.execute(
            "INSERT INTO embeddings (model_version, key, vector)"
            " SELECT model_version, key, embedding FROM refs"
        )
        s.execute("ALTER TABLE refs DROP COLUMN embedding")
        s.execute("ALTER TABLE refs ADD COLUMN revision BIGINT NOT NULL DEFAULT 0")
        s.execute("DELETE FROM meta WHERE name = 'generation'")

    def _migrate_from_2(self, s: Transaction) -> None:
        """Version 2 did not know when a reference was recorded: when it was stored stands in."""
        s.execute("ALTER TABLE refs ADD COLUMN recorded_at TEXT")
        s.execute("UPDATE refs SET recorded_at = updated_at")

    def _migrate_from_4(self, s: Transaction) -> None:
        """Version 4 held one reference set: it becomes the collection ``default`` (id 0).
        (A table the schema text has just made has the column already: version 1 had no
        change log.)"""
        if "collection" not in self.db.columns(s, "refs"):
            self.db.scope_refs_by_collection(s)
        s.execute("DROP INDEX IF EXISTS refs_element")
        if "collection" not in self.db.columns(s, "changes"):
            s.execute("ALTER TABLE changes ADD COLUMN collection BIGINT NOT NULL DEFAULT 0")

    # -- writes ------------------------------------------------------------------------------
    def _log(self, s: Transaction, key: int) -> int:
        return s.execute(
            "INSERT INTO changes (key, committed_at, collection) VALUES (?, ?, ?) RETURNING seq",
            (key, time.time(), self.collection),
        ).fetchone()[0]

    def _check_collection(self, s: Transaction) -> None:
        """Inside a write (writers exclude each other): the collection still exists."""
        found = s.execute("SELECT 1 FROM collections WHERE id = ?", (self.collection,)).fetchone()
        if found is None:
            raise CollectionGone()

    def upsert(
        self,
        refs: list[NewReference],
        model_version: str,
        also: dict[str, np.ndarray] | None = None,
    ) -> Committed:
        """Insert or replace by id, all or nothing. A replaced signal drops every model's
        embedding of it but the writer's, and those of ``also`` (version -> (n, D) vectors in
        the order of ``refs``: a model change under way)."""
        also = also or {}
        now = timestamp()
        keys: list[int] = []
        seq = 0
        with self.db.write() as s:
            self._check_collection(s)
            for r in refs:
                key = s.execute(
                    "INSERT INTO refs (collection, id, element_id, session_id, metadata, channels,"
                    " length, signal, model_version, updated_at, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (collection, id) DO UPDATE SET element_id=excluded.element_id,"
                    " session_id=excluded.session_id, metadata=excluded.metadata,"
                    " channels=excluded.channels, length=excluded.length,"
                    " signal=excluded.signal, model_version=excluded.model_version,"
                    " updated_at=excluded.updated_at, recorded_at=excluded.recorded_at"
                    " RETURNING key",
                    (
                        self.collection,
                        r.id,
                        r.element_id,
                        r.session_id,
                        json.dumps(r.metadata),
                        r.signal.shape[0],
                        r.signal.shape[1],
                        r.signal.astype(np.float32).tobytes(),
                        model_version,
                        now,
                        r.recorded_at or now,
                    ),
                ).fetchone()[0]
                seq = self._log(s, key)
                s.execute("UPDATE refs SET revision = ? WHERE key = ?", (seq, key))
                s.execute("DELETE FROM embeddings WHERE key = ?", (key,))
                s.execute(
                    "INSERT INTO embeddings (model_version, key, vector) VALUES (?, ?, ?)",
                    (model_version, key, r.embedding.astype(np.float32).tobytes()),
                )
                for version, vectors in also.items():
                    s.execute(
                        "INSERT INTO embeddings (model_version, key, vector) VALUES (?, ?, ?)",
                        (version, key, vectors[len(keys)].astype(np.float32).tobytes()),
                    )
                keys.append(key)
            self._after_write(s, seq, len(refs))
        return Committed(keys, seq)

    def delete(self, ref_id: str) -> Committed | None:
        """Delete by id; None when there was no such id."""
        with self.db.write() as s:
            row = s.execute(
                "DELETE FROM refs WHERE collection = ? AND id = ? RETURNING key",
                (self.collection, ref_id),
            ).fetchone()
            if row is None:
                return None
            s.execute("DELETE FROM embeddings WHERE key = ?", (row[0],))
            seq = self._log(s, row[0])
            self._after_write(s, seq, 1)
        return Committed([row[0]], seq)

    def _after_write(self, s: Transaction, seq: int, entries: int) -> None:
        self.db.notify(s)
        if seq // PRUNE_EVERY != (seq - entries) // PRUNE_EVERY:  # crossed a multiple
            through = seq - self.change_log_keep
            if through > 0:
                s.execute("DELETE FROM changes WHERE seq <= ?", (through,))
                s.execute(
                    "UPDATE meta SET value = ? WHERE name = 'pruned_through' AND value < ?",
                    (through, through),
                )

    def add_embeddings(self, rows: list[Unembedded], vectors: np.ndarray, version: str) -> None:
        """Stores this model's embeddings of references written by another; one whose signal
        changed (or that was deleted) since it was read is skipped. Not a change: the log's
        readers of this version apply them as they meet the keys."""
        with self.db.write() as s:
            for row, vector in zip(rows, vectors, strict=True):
                s.execute(
                    "INSERT INTO embeddings (model_version, key, vector)"
                    " SELECT ?, ?, ? WHERE EXISTS"
                    " (SELECT 1 FROM refs WHERE key = ? AND revision = ?)"
                    " ON CONFLICT (model_version, key) DO NOTHING",
                    (version, row.key, vector.astype(np.float32).tobytes(), row.key, row.revision),
                )

    # -- the change log ----------------------------------------------------------------------
    def changes_after(self, seq: int, limit: int = 10_000) -> ChangePage:
        """This collection's entries after ``seq``, up to ``limit``, of those committed when
        this is read (``through``: every entry up to it was committed then, writers committing
        in sequence order: a reader with fewer than ``limit`` entries has seen all of its
        collection's up to ``through``)."""
        with self.db.read() as s:
            through = log_end(s)
            rows = s.execute(
                "SELECT seq, key, committed_at FROM changes WHERE seq > ? AND seq <= ?"
                " AND collection = ? ORDER BY seq LIMIT ?",
                (seq, through, self.collection, limit),
            ).fetchall()
            # after the rows: a pruning committed while they were read is seen (and rebuilt
            # from), never taken for entries that did not exist
            pruned = s.execute("SELECT value FROM meta WHERE name = 'pruned_through'").fetchone()
        return ChangePage([Change(*row) for row in rows], int(pruned[0]) if pruned else 0, through)

    def epoch(self) -> int:
        """This database's identity: index segments of another (or of what it was before a
        restore) are not loaded."""
        with self.db.read() as s:
            row = s.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return int(row[0]) if row else 0

    def last_seq(self) -> int:
        """The change log's last sequence number (every collection's)."""
        with self.db.read() as s:
            return log_end(s)

    # -- what the index is built from --------------------------------------------------------
    def index_rows(
        self, keys: list[int], version: str
    ) -> tuple[IndexRows, np.ndarray, list[Unembedded]]:
        """For ``keys``: the rows with an embedding of ``version``, the keys no longer stored,
        and the stored ones without such an embedding."""
        found = self._rows_by_key(
            "r.id, r.element_id, r.session_id, e.vector, r.revision, r.channels, r.length,"
            " CASE WHEN e.vector IS NULL THEN r.signal END",
            keys,
            version,
        )
        embedded = [row for row in found if row[4] is not None]
        missing = [
            Unembedded(row[0], row[5], _f32(row[8]).reshape(row[6], row[7]))
            for row in found
            if row[4] is None
        ]
        stored = {row[0] for row in found}
        removed = np.array([k for k in keys if k not in stored], dtype=np.int64)
        return _index_rows(embedded), removed, missing

    def iter_index_rows(self, version: str, batch: int = 10_000) -> Iterator[IndexRows]:
        """Every reference with an embedding of ``version``, in key order, a batch at a time."""
        last = -1
        while True:
            with self.db.read() as s:
                rows = s.execute(
                    "SELECT r.key, r.id, r.element_id, r.session_id, e.vector FROM refs r"
                    " JOIN embeddings e ON e.key = r.key AND e.model_version = ?"
                    " WHERE r.collection = ? AND r.key > ? ORDER BY r.key LIMIT ?",
                    (version, self.collection, last, batch),
                ).fetchall()
            if not rows:
                return
            yield _index_rows(rows)
            last = rows[-1][0]

    def sample_vectors(self, version: str, n: int) -> np.ndarray:
        """Up to ``n`` embeddings of ``version``, drawn at random (to train an IVF index)."""
        with self.db.read() as s:
            rows = s.execute(
                "SELECT e.vector FROM embeddings e JOIN refs r ON r.key = e.key"
                " WHERE e.model_version = ? AND r.collection = ? ORDER BY random() LIMIT ?",
                (version, self.collection, n),
            ).fetchall()
        return np.stack([_f32(r[0]) for r in rows]) if rows else np.zeros((0, 0), np.float32)

    def unembedded(self, version: str, batch: int = 256, after: int = -1) -> list[Unembedded]:
        """Up to ``batch`` references without an embedding of ``version``, of keys past
        ``after`` (a caller going through them all passes its last key: a scan from the first
        key walked past every one embedded already, each batch slower than the last)."""
        with self.db.read() as s:
            rows = s.execute(
                "SELECT r.key, r.revision, r.channels, r.length, r.signal FROM refs r"
                " WHERE r.collection = ? AND r.key > ? AND NOT EXISTS (SELECT 1 FROM"
                " embeddings e WHERE e.key = r.key AND e.model_version = ?)"
                " ORDER BY r.key LIMIT ?",
                (self.collection, after, version, batch),
            ).fetchall()
        return [Unembedded(k, rev, _f32(sig).reshape(c, n)) for k, rev, c, n, sig in rows]

    def count_unembedded(self, version: str) -> int:
        with self.db.read() as s:
            return s.execute(
                "SELECT COUNT(*) FROM refs r WHERE r.collection = ? AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.key = r.key AND e.model_version = ?)",
                (self.collection, version),
            ).fetchone()[0]

    def embeddings(self, keys: np.ndarray, version: str) -> tuple[np.ndarray, np.ndarray]:
        """(the keys that have an embedding of ``version``, in the order given; those (n, D))."""
        found = dict(self._rows_by_key("e.vector", keys.tolist(), version))
        kept = [k for k in keys.tolist() if found.get(k) is not None]
        vectors = [_f32(found[k]) for k in kept]
        return np.array(kept, dtype=np.int64), (
            np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        )

    def _rows_by_key(self, columns: str, keys: list[int], version: str) -> list[tuple]:
        """``key, columns`` of the stored ``keys`` (``r`` the reference, ``e`` its embedding by
        model ``version``), KEYS_PER_QUERY at a time. Every query has the same number of
        placeholders (padded with -1, never a key): sqlite3 caches one prepared statement per
        SQL text, and one per list length held ~40 MiB under load."""
        rows: list[tuple] = []
        marks = ",".join("?" * KEYS_PER_QUERY)
        sql = (
            f"SELECT r.key, {columns} FROM refs r LEFT JOIN embeddings e"
            f" ON e.key = r.key AND e.model_version = ? WHERE r.key IN ({marks})"
        )
        for start in range(0, len(keys), KEYS_PER_QUERY):
            part = keys[start : start + KEYS_PER_QUERY]
            with self.db.read() as s:
                rows += s.execute(
                    sql, [version, *part, *[-1] * (KEYS_PER_QUERY - len(part))]
                ).fetchall()
        return rows

    # -- reads for the API -------------------------------------------------------------------
    def count(self) -> int:
        with self.db.read() as s:
            return s.execute(
                "SELECT COUNT(*) FROM refs WHERE collection = ?", (self.collection,)
            ).fetchone()[0]

    def signal_shapes(self) -> StoredShape | None:
        """What the stored signals are (None: none stored)."""
        with self.db.read() as s:
            row = s.execute(
                "SELECT MIN(channels), MAX(channels), MIN(length), MAX(length) FROM refs"
                " WHERE collection = ?",
                (self.collection,),
            ).fetchone()
        return None if row[0] is None else StoredShape((row[0], row[1]), (row[2], row[3]))

    def count_embedded(self, version: str) -> int:
        with self.db.read() as s:
            return s.execute(
                "SELECT COUNT(*) FROM embeddings e JOIN refs r ON r.key = e.key"
                " WHERE e.model_version = ? AND r.collection = ?",
                (version, self.collection),
            ).fetchone()[0]

    def get(self, ref_id: str) -> ReferenceOut | None:
        with self.db.read() as s:
            row = s.execute(
                "SELECT id, element_id, session_id, metadata, channels, length, signal,"
                " model_version, updated_at, recorded_at FROM refs WHERE collection = ? AND id = ?",
                (self.collection, ref_id),
            ).fetchone()
        if row is None:
            return None
        return ReferenceOut(
            id=row[0],
            element_id=row[1],
            session_id=row[2],
            metadata=json.loads(row[3]),
            signal=_f32(row[6]).reshape(row[4], row[5]),
            model_version=row[7],
            updated_at=row[8],
            recorded_at=row[9],
        )

    def list(
        self, element_id: str | None, limit: int, offset: int
    ) -> tuple[list[ReferenceSummary], int]:
        where, args = "WHERE collection = ?", (self.collection,)
        if element_id:
            where, args = f"{where} AND element_id = ?", (*args, element_id)
        with self.db.read() as s:
            total = s.execute(f"SELECT COUNT(*) FROM refs {where}", args).fetchone()[0]
            rows = s.execute(
                "SELECT id, element_id, session_id, metadata, length, model_version, updated_at,"
                f" recorded_at FROM refs {where} ORDER BY key LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        # the columns are selected in the model's field order
        items = [
            ReferenceSummary(
                **{
                    **dict(zip(ReferenceSummary.model_fields, r, strict=True)),
                    "metadata": json.loads(r[3]),
                }
            )
            for r in rows
        ]
        return items, total

    def elements(
        self, limit: int, offset: int, contains: str | None = None
    ) -> tuple[list[ElementSummary], int]:
        """A page of elements in id order, each with its counts and recording span; with
        ``contains``, only those whose id contains it (ignoring case)."""
        where, args = "WHERE collection = ?", (self.collection,)
        if contains:
            escaped = contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where = f"{where} AND LOWER(element_id) LIKE ? ESCAPE '\\'"
            args = (*args, f"%{escaped}%")
        with self.db.read() as s:
            total = s.execute(
                f"SELECT COUNT(DISTINCT element_id) FROM refs {where}", args
            ).fetchone()[0]
            rows = s.execute(
                "SELECT element_id, COUNT(*), COUNT(DISTINCT session_id), MIN(recorded_at),"
                f" MAX(recorded_at) FROM refs {where} GROUP BY element_id ORDER BY element_id"
                " LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        fields = ElementSummary.model_fields  # the columns are selected in this order
        return [ElementSummary(**dict(zip(fields, row, strict=True))) for row in rows], total

    def element_references(self, element_id: str) -> list[ElementReference]:
        """The element's references in time order (none for an unknown element)."""
        with self.db.read() as s:
            rows = s.execute(
                "SELECT key, session_id, recorded_at FROM refs WHERE collection = ?"
                " AND element_id = ? ORDER BY recorded_at, key",
                (self.collection, element_id),
            ).fetchall()
        return [ElementReference(*row) for row in rows]

    def signals(self, keys: list[int]) -> dict[int, np.ndarray]:
        """key -> (C, L) signal of the keys still stored."""
        return {
            k: _f32(blob).reshape(c, n)
            for k, c, n, blob in self._rows_by_key("r.channels, r.length, r.signal", keys, "")
        }

    def metadata(self, keys: list[int]) -> dict[int, dict]:
        """key -> metadata of the keys still stored."""
        return {k: json.loads(m) for k, m in self._rows_by_key("r.metadata", keys, "")}


def log_end(s: Transaction) -> int:
    """The change log's last sequence number as ``s`` sees it (where it was pruned to, when
    pruned empty): a reader's position, a backup's."""
    row = s.execute("SELECT MAX(seq) FROM changes").fetchone()
    if row[0] is not None:
        return int(row[0])
    return int(s.execute("SELECT value FROM meta WHERE name = 'pruned_through'").fetchone()[0])


def _index_rows(rows: list[tuple]) -> IndexRows:
    """(key, id, element_id, session_id, vector, ...) rows as IndexRows."""
    return IndexRows(
        keys=np.array([r[0] for r in rows], dtype=np.int64),
        ids=[r[1] for r in rows],
        element_ids=[r[2] for r in rows],
        session_ids=[r[3] for r in rows],
        vectors=np.stack([_f32(r[4]) for r in rows]) if rows else np.zeros((0, 0), np.float32),
    )
