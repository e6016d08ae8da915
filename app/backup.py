"""Backups: one file holding a consistent copy of the whole database, taken while the service
serves and writes, and its restore into an empty database of either engine.

The copy is read in one snapshot (:meth:`app.database.Database.snapshot`: SQLite's WAL read
transaction, PostgreSQL's repeatable-read transaction) on a connection of its own, never by
copying files under a live writer: every write committed before the snapshot's first read is
in it, none after. ``position`` is the change log's end in that snapshot.

Format, version 1 (``FORMAT_VERSION``): a ZIP archive (ZIP64 where large), its members in this
order:

- ``hsn-backup.json``: ``{"format": "hsn-backup", "version", "created_at", "engine",
  "schema_version", "position"}``;
- ``collections.json``, ``api_keys.json``, ``served_models.json``: the tables' rows, as JSON
  objects (keys hashed, as stored; a model change under way is not kept: the restored
  collection serves the model it served, its target's embeddings kept as far as they got);
- ``refs/NNNNNN.npz``: up to BATCH references each: ``key``, ``collection``, ``revision``
  (int64), ``id``, ``element_id``, ``session_id``, ``metadata`` (JSON text), ``model_version``,
  ``updated_at``, ``recorded_at`` (unicode), ``channels``, ``length`` (int32) and the signals
  concatenated in ``samples`` (float32, each ``channels * length`` of them, channels first);
- ``embeddings/NNNNNN.npz``: up to BATCH embeddings of one model version: ``model_version``
  (one string), ``key`` (int64), ``vector`` (n, D float32);
- ``checksums.json``, last: every other member's SHA-256 and size, and the rows counted.

Members are read without unpickling (``allow_pickle=False``). A restore checks the whole archive
(each member's checksum, the counts) before it writes anything, and writes in one transaction:
a corrupt, truncated or newer archive changes nothing. Embeddings are restored, never
recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from app.database import Database, Transaction
from app.store import SCHEMA_VERSION, log_end, timestamp

log = logging.getLogger(__name__)

FORMAT = "hsn-backup"
FORMAT_VERSION = 1
HEADER = "hsn-backup.json"
CHECKSUMS = "checksums.json"
BATCH = 10_000  # references (or embeddings) per member
COMPRESSION = {"compression": zipfile.ZIP_DEFLATED, "compresslevel": 1}  # float32: cheap only
REF_TEXT = (
    "id",
    "element_id",
    "session_id",
    "metadata",
    "model_version",
    "updated_at",
    "recorded_at",
)
CLEARED = (
    "embeddings",
    "refs",
    "changes",
    "api_keys",
    "collections",
    "served_models",
    "upgrades",
)  # by a restore, before it writes
TABLES = {
    "collections": ("id", "name", "model", "created_at"),
    "api_keys": (
        "id",
        "name",
        "scope",
        "collections",
        "hash",
        "created_at",
        "last_used_at",
        "revoked_at",
    ),
    "served_models": ("collection", "model_version", "model", "served_from"),
}


class BackupError(Exception):
    """An archive that cannot be restored, or a database that may not be restored into; the
    message is one line."""


@dataclass
class Summary:
    position: int  # the change log's end the copy is consistent with
    references: int
    embeddings: int
    collections: int
    api_keys: int


# -- writing ---------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """What a member's writer is handed: the zip member, hashed on the way."""

    def __init__(self, member: IO[bytes]) -> None:
        self.member, self.sha, self.size = member, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.member.write(data)


class _Writer:
    def __init__(self, out: IO[bytes]) -> None:
        self.zip = zipfile.ZipFile(out, "w", allowZip64=True, **COMPRESSION)
        self.checksums: dict[str, dict] = {}

    def member(self, name: str, write: Callable[[IO[bytes]], None]) -> None:
        with self.zip.open(name, "w", force_zip64=True) as raw:
            hashed = _Hashing(raw)
            write(hashed)
        self.checksums[name] = {"sha256": hashed.sha.hexdigest(), "size": hashed.size}

    def json(self, name: str, value: Any) -> None:
        self.member(name, lambda f: f.write(json.dumps(value).encode()))

    def arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        self.member(name, lambda f: np.savez(f, **arrays))

    def close(self, counts: dict[str, int]) -> None:
        checksums = {"members": self.checksums, "counts": counts}
        self.zip.writestr(CHECKSUMS, json.dumps(checksums))
        self.zip.close()


def write_backup(
    db: Database, out: IO[bytes], progress: Callable[[str], None] = log.info
) -> Summary:
    """Writes a consistent copy of ``db`` to ``out`` (which need not be seekable)."""
    writer = _Writer(out)
    with db.snapshot() as s:
        position = log_end(s)
        writer.json(
            HEADER,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "created_at": timestamp(),
                "engine": db.engine,
                "schema_version": SCHEMA_VERSION,
                "position": position,
            },
        )
        counts = {}
        for table, columns in TABLES.items():  # the small tables
            order = ", ".join(columns[:2])
            rows = s.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
            ).fetchall()
            writer.json(f"{table}.json", [dict(zip(columns, row, strict=True)) for row in rows])
            counts[table] = len(rows)
        total = s.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
        counts["refs"] = 0
        for n, arrays in enumerate(_ref_batches(s)):
            writer.arrays(f"refs/{n:06d}.npz", arrays)
            counts["refs"] += len(arrays["key"])
            progress(f"backed up {counts['refs']}/{total} references")
        counts["embeddings"] = 0
        for n, arrays in enumerate(_embedding_batches(s)):
            writer.arrays(f"embeddings/{n:06d}.npz", arrays)
            counts["embeddings"] += len(arrays["key"])
    writer.close(counts)
    return Summary(
        position, counts["refs"], counts["embeddings"], counts["collections"], counts["api_keys"]
    )


def _ref_batches(s: Transaction) -> Iterator[dict[str, np.ndarray]]:
    last = -1
    while rows := s.execute(
        "SELECT key, collection, revision, channels, length, signal, id, element_id, session_id,"
        " metadata, model_version, updated_at, recorded_at FROM refs WHERE key > ?"
        " ORDER BY key LIMIT ?",
        (last, BATCH),
    ).fetchall():
        columns = list(zip(*rows, strict=True))
        arrays = {
            "key": np.array(columns[0], dtype=np.int64),
            "collection": np.array(columns[1], dtype=np.int64),
            "revision": np.array(columns[2], dtype=np.int64),
            "channels": np.array(columns[3], dtype=np.int32),
            "length": np.array(columns[4], dtype=np.int32),
            "samples": np.frombuffer(b"".join(bytes(b) for b in columns[5]), dtype=np.float32),
        }
        for name, values in zip(REF_TEXT, columns[6:], strict=True):
            arrays[name] = np.array(values, dtype=str)
        yield arrays
        last = rows[-1][0]


def _embedding_batches(s: Transaction) -> Iterator[dict[str, np.ndarray]]:
    versions = [r[0] for r in s.execute("SELECT DISTINCT model_version FROM embeddings")]
    for version in sorted(versions):
        last = -1
        while rows := s.execute(
            "SELECT key, vector FROM embeddings WHERE model_version = ? AND key > ?"
            " ORDER BY key LIMIT ?",
            (version, last, BATCH),
        ).fetchall():
            yield {
                "model_version": np.array(version),
                "key": np.array([r[0] for r in rows], dtype=np.int64),
                "vector": np.stack([np.frombuffer(bytes(r[1]), dtype=np.float32) for r in rows]),
            }
            last = rows[-1][0]


# -- reading ---------------------------------------------------------------------------------


class Archive:
    """A backup file, checked whole on opening: BackupError (one line) if it is not one this
    service can restore."""

    def __init__(self, path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BackupError(f"{path}: not a complete backup archive ({exc})") from exc
        try:
            self.header = self._json(HEADER)
            if self.header.get("format") != FORMAT:
                raise BackupError(f"{path}: not an {FORMAT} archive")
            if self.header.get("version", 0) > FORMAT_VERSION:
                raise BackupError(
                    f"{path}: made by a newer service (backup format {self.header['version']};"
                    f" this one reads up to {FORMAT_VERSION})"
                )
            self.checksums = self._json(CHECKSUMS)
            self._verify()
        except BackupError:
            self.zip.close()
            raise
        except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            self.zip.close()
            raise BackupError(f"{path}: a damaged backup archive ({exc})") from exc

    def _json(self, name: str) -> Any:
        return json.loads(self.zip.read(name))

    def _verify(self) -> None:
        members = self.checksums["members"]
        names = [i.filename for i in self.zip.infolist() if i.filename != CHECKSUMS]
        if sorted(names) != sorted(members):
            raise BackupError(f"{self.path}: its members do not match its checksums")
        for name, expected in members.items():
            sha, size = hashlib.sha256(), 0
            with self.zip.open(name) as member:  # zipfile checks each member's CRC too
                while chunk := member.read(1 << 20):
                    sha.update(chunk)
                    size += len(chunk)
            if sha.hexdigest() != expected["sha256"] or size != expected["size"]:
                raise BackupError(f"{self.path}: member {name} is damaged (checksum)")

    @property
    def counts(self) -> dict[str, int]:
        return self.checksums["counts"]

    def rows(self, table: str) -> list[dict]:
        return self._json(f"{table}.json")

    def batches(self, folder: str) -> Iterator[dict[str, np.ndarray]]:
        for name in sorted(n for n in self.checksums["members"] if n.startswith(f"{folder}/")):
            with (
                self.zip.open(name) as member,
                np.load(io.BytesIO(member.read()), allow_pickle=False) as arrays,
            ):
                yield {key: arrays[key] for key in arrays.files}

    def close(self) -> None:
        self.zip.close()


# -- restoring -------------------------------------------------------------------------------


def is_empty(s: Transaction) -> bool:
    """Nothing a service wrote: no references, no keys, no collection but default."""
    refs = s.execute("SELECT 1 FROM refs LIMIT 1").fetchone()
    keys = s.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone()
    others = s.execute("SELECT 1 FROM collections WHERE id <> 0 LIMIT 1").fetchone()
    return refs is None and keys is None and others is None


def restore(
    db: Database,
    archive: Archive,
    replace: bool = False,
    progress: Callable[[str], None] = log.info,
) -> Summary:
    """Writes ``archive`` into ``db`` (its schema made or migrated already) in one transaction.
    BackupError when ``db`` holds anything and ``replace`` is not set."""
    counts = archive.counts
    position = int(archive.header["position"])
    with db.write() as s:
        if not is_empty(s) and not replace:
            raise BackupError(
                "the database is not empty: restore into an empty one, or pass --replace"
            )
        # what a service that never stored anything leaves (the default row, its served model,
        # a change log of nothing) goes too
        for table in CLEARED:
            s.execute(f"DELETE FROM {table}")
        for table, columns in TABLES.items():
            rows = archive.rows(table)
            s.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
                f" ({', '.join('?' * len(columns))})",
                [tuple(row[c] for c in columns) for row in rows],
            )
        restored = 0
        for arrays in archive.batches("refs"):
            s.executemany(
                "INSERT INTO refs (key, collection, revision, channels, length, signal, id,"
                " element_id, session_id, metadata, model_version, updated_at, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                list(_ref_rows(arrays)),
            )
            restored += len(arrays["key"])
            progress(f"restored {restored}/{counts['refs']} references")
        embedded = 0
        for arrays in archive.batches("embeddings"):
            version = str(arrays["model_version"])
            s.executemany(
                "INSERT INTO embeddings (model_version, key, vector) VALUES (?, ?, ?)",
                [
                    (version, int(k), v.astype(np.float32).tobytes())
                    for k, v in zip(arrays["key"], arrays["vector"], strict=True)
                ],
            )
            embedded += len(arrays["key"])
        if restored != counts["refs"] or embedded != counts["embeddings"]:
            raise BackupError("the archive holds other counts than its checksums say")
        _continue_after(db, s, position)
    return Summary(position, restored, embedded, counts["collections"], counts["api_keys"])


def _ref_rows(arrays: dict[str, np.ndarray]) -> Iterator[tuple]:
    sizes = arrays["channels"].astype(np.int64) * arrays["length"]
    ends = np.cumsum(sizes)
    samples = arrays["samples"]
    for i in range(len(arrays["key"])):
        yield (
            int(arrays["key"][i]),
            int(arrays["collection"][i]),
            int(arrays["revision"][i]),
            int(arrays["channels"][i]),
            int(arrays["length"][i]),
            samples[ends[i] - sizes[i] : ends[i]].tobytes(),
            *(str(arrays[name][i]) for name in REF_TEXT),
        )


def _continue_after(db: Database, s: Transaction, position: int) -> None:
    """The restored database goes on from the copy: keys, collection ids and change-log
    sequence numbers never reused (each counter past both the copy's and what the database
    had used), the change log pruned through its new start (every process rebuilds its index
    from the restored rows), a new epoch (no index snapshot of another database is loaded), and
    every process's keys and collections reloaded."""
    for table, column in (("refs", "key"), ("collections", "id")):
        top = s.execute(f"SELECT COALESCE(MAX({column}), 0) FROM {table}").fetchone()[0]
        db.set_counter(s, table, column, int(top))
    position = db.set_counter(s, "changes", "seq", position)
    for name, value in (
        ("pruned_through", position),
        ("epoch", secrets.randbits(62)),
    ):
        s.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
    for name in ("keys_version", "collections_version"):
        s.execute(
            "INSERT INTO meta (name, value) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = meta.value + 1",
            (name,),
        )
