"""The two database engines the reference store runs on, behind one small interface.

``HSN_DATABASE_URL`` unset: SQLite in the data directory (WAL; several processes on one box share
it). ``postgresql://user:pass@host:port/db``: PostgreSQL through a psycopg 3 connection pool.

SQL is written once with ``?`` placeholders; each engine supplies its schema text, how a writer
excludes every other writer (so change-log sequence numbers are committed in order: see
:meth:`Database.write`), the start-up lock, and, on PostgreSQL, LISTEN/NOTIFY.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "hsn_changes"
WRITE_LOCK_ID = 0x48534E01  # PostgreSQL advisory lock: one writer at a time
STARTUP_LOCK_ID = 0x48534E02  # PostgreSQL advisory lock: start-up work, once


class StoreUnavailable(Exception):
    """The database cannot be reached now (a write was not committed)."""


class DatabaseConfigError(ValueError):
    """A database URL the service cannot use."""


REFS = """
CREATE TABLE IF NOT EXISTS {table} (
    key {key_type} PRIMARY KEY {autoincrement},
    collection BIGINT NOT NULL DEFAULT 0,  -- collections.id (0: the collection default)
    id TEXT NOT NULL,
    element_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    channels INTEGER NOT NULL,
    length INTEGER NOT NULL,
    signal {blob} NOT NULL,
    model_version TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision BIGINT NOT NULL DEFAULT 0,
    recorded_at TEXT NOT NULL,  -- ISO 8601 in UTC, one format: text order is time order
    UNIQUE (collection, id)
)"""

TABLES = (
    REFS.replace("{table}", "refs")
    + """;
CREATE TABLE IF NOT EXISTS embeddings (
    model_version TEXT NOT NULL,
    key BIGINT NOT NULL,
    vector {blob} NOT NULL,
    PRIMARY KEY (key, model_version)  -- key first: a write drops every version of its key
);
CREATE TABLE IF NOT EXISTS changes (
    seq {key_type} PRIMARY KEY {autoincrement},
    key BIGINT NOT NULL,
    committed_at DOUBLE PRECISION NOT NULL,
    collection BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,  -- read, write or admin
    collections TEXT NOT NULL,  -- JSON list, empty: every collection
    hash TEXT NOT NULL,  -- argon2id of the secret (the secret itself is never stored)
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS collections (
    id {key_type} PRIMARY KEY {autoincrement},  -- never reused: a name made again is new
    name TEXT NOT NULL UNIQUE,
    model TEXT,  -- a folder of the model repository (NULL: HSN_MODEL_DIR)
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served_models (  -- each model version a collection has served
    collection BIGINT NOT NULL,
    model_version TEXT NOT NULL,
    model TEXT,  -- its folder in the model repository (NULL: HSN_MODEL_DIR)
    served_from TEXT NOT NULL,
    PRIMARY KEY (collection, model_version)
);
CREATE TABLE IF NOT EXISTS upgrades (  -- a collection's model change under way
    collection BIGINT PRIMARY KEY,
    model TEXT,  -- the target's folder (NULL: HSN_MODEL_DIR)
    model_version TEXT NOT NULL,  -- the target's version
    started_at TEXT NOT NULL,
    embedded_at_start BIGINT NOT NULL,  -- references that had its embedding then (its rate)
    holder TEXT,  -- the process running the job, while lease_until is in the future
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
);
"""
)

# Indexes on columns older schemas lack: created once those are migrated.
INDEXES = """
CREATE INDEX IF NOT EXISTS refs_collection_element ON refs (collection, element_id, key);
CREATE INDEX IF NOT EXISTS refs_collection ON refs (collection, key);
CREATE INDEX IF NOT EXISTS changes_collection ON changes (collection, seq);
"""


class Transaction:
    """One connection inside a read or a write: ``execute`` takes ``?`` placeholders."""

    def __init__(self, cursor: Any, translate: Callable[[str], str]) -> None:
        self.cursor, self.translate = cursor, translate

    def execute(self, sql: str, args: Sequence = ()) -> Any:
        return self.cursor.execute(self.translate(sql), args)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self.cursor.executemany(self.translate(sql), rows)


class Database(ABC):
    engine: str
    schema: str

    @abstractmethod
    def address(self) -> tuple[str, str]:
        """(engine, path or URL): what another process connects to (``reconnect``)."""

    @abstractmethod
    def read(self) -> Any:
        """Context manager: a Transaction for reads."""

    @abstractmethod
    def write(self) -> Any:
        """Context manager: a Transaction in a transaction committed on exit (rolled back on an
        error). Writers exclude each other on every process: a sequence number taken inside a
        write is therefore committed before any larger one, and a reader that asks for
        ``seq > last`` can never skip one that commits later."""

    @abstractmethod
    def exclusive(self) -> Any:
        """Context manager: the start-up lock, held by one process at a time."""

    @abstractmethod
    def snapshot(self) -> Any:
        """Context manager: a Transaction on a connection of its own that sees the database as
        it was at its first read, however long it is read and whatever is written meanwhile
        (a backup's consistent copy; the service's own connections stay free)."""

    @abstractmethod
    def table_exists(self, session: Transaction, name: str) -> bool: ...

    @abstractmethod
    def columns(self, session: Transaction, table: str) -> set[str]: ...

    @abstractmethod
    def set_counter(self, session: Transaction, table: str, column: str, value: int) -> int:
        """The next value ``table``'s generated ``column`` gives is past ``value`` and past
        any it gave before (a restore); returns the last value now counted as given."""

    @abstractmethod
    def scope_refs_by_collection(self, session: Transaction) -> None:
        """Schema 4 -> 5: ``refs`` gains ``collection`` (0 for every row), and an id is unique
        within its collection instead of everywhere."""

    @abstractmethod
    def notify(self, session: Transaction) -> None:
        """Inside a write: wake the other processes once it commits (where the engine can)."""

    @abstractmethod
    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Calls ``on_change`` when another process committed a write, until ``stop`` is set;
        returns at once where the engine has no notifications (polling covers it)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """Where the data is, for logs (never a password)."""


# -- SQLite ----------------------------------------------------------------------------------


class SqliteDatabase(Database):
    """One connection behind a lock; several processes share the file through WAL, a busy
    timeout, and ``BEGIN IMMEDIATE`` for writes (one writer at a time on the box)."""

    engine = "sqlite"
    schema = TABLES.format(key_type="INTEGER", autoincrement="AUTOINCREMENT", blob="BLOB")
    refs_table = REFS.format(
        table="{table}", key_type="INTEGER", autoincrement="AUTOINCREMENT", blob="BLOB"
    )

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed write survives power loss too

    def address(self) -> tuple[str, str]:
        return ("sqlite", str(self.path))

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        with self.lock, _sqlite_unavailable():
            yield Transaction(self.db, _same)

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        with self.lock, _sqlite_unavailable():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self.db, _same)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".startup-lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the process dies, too
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def snapshot(self) -> Iterator[Transaction]:
        # WAL: a read transaction keeps the state of its first read while writers go on
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            with _sqlite_unavailable():
                connection.execute("BEGIN")
                yield Transaction(connection, _same)
                connection.execute("COMMIT")
        finally:
            connection.close()

    def table_exists(self, session: Transaction, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return session.execute(sql, (name,)).fetchone() is not None

    def columns(self, session: Transaction, table: str) -> set[str]:
        return {row[1] for row in session.execute(f"PRAGMA table_info({table})").fetchall()}

    def set_counter(self, session: Transaction, table: str, column: str, value: int) -> int:
        row = session.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        value = max([value, *(r[0] for r in row.fetchall())])
        session.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        session.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))
        return value

    def scope_refs_by_collection(self, session: Transaction) -> None:
        # SQLite cannot drop a UNIQUE constraint: the table is copied into the new shape, its
        # AUTOINCREMENT counter carried over (a key is never reused).
        columns = (
            "key, id, element_id, session_id, metadata, channels, length, signal,"
            " model_version, updated_at, revision, recorded_at"
        )
        counter = session.execute("SELECT seq FROM sqlite_sequence WHERE name = 'refs'").fetchone()
        session.execute(self.refs_table.format(table="refs_v5"))
        session.execute(f"INSERT INTO refs_v5 ({columns}) SELECT {columns} FROM refs")
        session.execute("DROP TABLE refs")
        session.execute("ALTER TABLE refs_v5 RENAME TO refs")
        if counter is not None:
            session.execute("DELETE FROM sqlite_sequence WHERE name = 'refs'")  # copied: max key
            session.execute(
                "INSERT INTO sqlite_sequence (name, seq)"
                " SELECT 'refs', MAX(?, COALESCE(MAX(key), 0)) FROM refs",
                (counter[0],),
            )

    def notify(self, session: Transaction) -> None:
        """SQLite cannot notify: the other processes on the box poll."""

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Nothing to listen to: polling covers SQLite."""

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def describe(self) -> str:
        return f"sqlite:{self.path}"


def _same(sql: str) -> str:
    return sql


def _sqlite_unavailable() -> AbstractContextManager[None]:
    """A file locked past the busy timeout or unreadable is unavailable; any other
    OperationalError (a wrong statement) is a bug and stays one."""
    words = ("locked", "busy", "unable to open", "disk")
    return _unavailable_on(
        sqlite3.OperationalError, when=lambda exc: any(w in str(exc) for w in words)
    )


@contextmanager
def _unavailable_on(
    *errors: type[BaseException], when: Callable[[BaseException], bool] = lambda _: True
) -> Iterator[None]:
    """``errors`` (those ``when`` accepts) raised inside become StoreUnavailable."""
    try:
        yield
    except errors as exc:
        if not when(exc):
            raise
        raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc


# -- PostgreSQL ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _to_pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    """A psycopg 3 connection pool. Writers take a transaction-level advisory lock first, so
    change-log rows become visible in sequence order (a sequence value is taken before the
    commit; without the lock, concurrent writers commit out of order and a reader asking for
    ``seq > last`` would skip the slower one forever)."""

    engine = "postgresql"
    schema = TABLES.format(
        key_type="BIGINT GENERATED BY DEFAULT AS IDENTITY", autoincrement="", blob="BYTEA"
    )

    def __init__(self, url: str, connect_timeout_s: float = 30.0, pool_size: int = 4) -> None:
        import psycopg
        import psycopg_pool

        self.url = url
        self._psycopg, self._errors = psycopg, (psycopg.OperationalError, psycopg_pool.PoolTimeout)
        _connect_with_retry(url, connect_timeout_s, psycopg)
        self.pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=5.0,  # a request waits at most this long for a connection, then 503
            check=psycopg_pool.ConnectionPool.check_connection,  # a server restart drops them
            name="hsn",
        )
        self.pool.open(wait=True, timeout=connect_timeout_s)

    def address(self) -> tuple[str, str]:
        return ("postgresql", self.url)

    @contextmanager
    def _session(self, write: bool) -> Iterator[Transaction]:
        with _unavailable_on(*self._errors), self.pool.connection() as conn:
            if write:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_ID,))
                    yield Transaction(conn.cursor(), _to_pyformat)
            else:
                yield Transaction(conn.cursor(), _to_pyformat)

    def read(self) -> Any:
        return self._session(write=False)

    def write(self) -> Any:
        return self._session(write=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        # A connection of its own: the lock is released when it closes, or when the process dies.
        with _unavailable_on(*self._errors), self._psycopg.connect(self.url, autocommit=True) as c:
            c.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK_ID,))
            yield

    @contextmanager
    def snapshot(self) -> Iterator[Transaction]:
        connect = self._psycopg.connect
        with _unavailable_on(*self._errors), connect(self.url, autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield Transaction(conn.cursor(), _to_pyformat)
            conn.execute("COMMIT")

    def table_exists(self, session: Transaction, name: str) -> bool:
        return session.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]

    def columns(self, session: Transaction, table: str) -> set[str]:
        rows = session.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
            " AND table_schema = current_schema()",
            (table,),
        ).fetchall()
        return {row[0] for row in rows}

    def set_counter(self, session: Transaction, table: str, column: str, value: int) -> int:
        (sequence,) = session.execute(
            "SELECT pg_get_serial_sequence(?, ?)", (table, column)
        ).fetchone()
        last, called = session.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        value = max(value, last if called else last - 1)
        session.execute("SELECT setval(?, ?, ?)", (sequence, max(value, 1), value > 0))
        return value

    def scope_refs_by_collection(self, session: Transaction) -> None:
        session.execute("ALTER TABLE refs ADD COLUMN collection BIGINT NOT NULL DEFAULT 0")
        session.execute("ALTER TABLE refs DROP CONSTRAINT refs_id_key")
        session.execute(
            "ALTER TABLE refs ADD CONSTRAINT refs_collection_id_key UNIQUE (collection, id)"
        )

    def notify(self, session: Transaction) -> None:
        session.execute(f"NOTIFY {NOTIFY_CHANNEL}")

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self._psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    on_change()  # whatever committed while nobody listened
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            on_change()
            except self._psycopg.Error as exc:
                log.debug("LISTEN connection lost (%s): reconnecting", exc)
                stop.wait(1.0)

    def close(self) -> None:
        self.pool.close()

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"


def _connect_with_retry(url: str, timeout_s: float, psycopg) -> None:
    """Waits for the server with backoff (a database container may start after the service);
    StoreUnavailable after ``timeout_s``."""
    deadline, delay = time.monotonic() + timeout_s, 0.25
    while True:
        try:
            psycopg.connect(url, connect_timeout=max(1, int(min(5, timeout_s)))).close()
            return
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(
                    f"database unreachable after {timeout_s:g}s: {reason}"
                ) from exc
            log.warning("database unreachable (%s): retrying in %.1fs", reason, delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def reconnect(address: tuple[str, str]) -> Database:
    """A connection of this process to the database another's ``address()`` names."""
    engine, where = address
    return (
        SqliteDatabase(Path(where)) if engine == "sqlite" else PostgresDatabase(where, pool_size=1)
    )


def open_database(url: str | None, data_dir: Path, connect_timeout_s: float) -> Database:
    """The engine ``url`` names (None: SQLite in ``data_dir``); DatabaseConfigError for a URL
    that is not one, StoreUnavailable when the server cannot be reached in time."""
    if not url:
        return SqliteDatabase(data_dir / "references.sqlite3")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise DatabaseConfigError(f"HSN_DATABASE_URL: {exc}") from exc
    if parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseConfigError(
            f"HSN_DATABASE_URL: unsupported scheme {parts.scheme or '(none)'!r}: use "
            "postgresql://user:password@host:5432/database, or leave it unset for SQLite"
        )
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseConfigError(f"HSN_DATABASE_URL: {exc}") from exc
    return PostgresDatabase(url, connect_timeout_s)
