"""Scoped API keys: created and revoked with ``python -m app keys``, stored hashed in the database,
checked by every process against its own copy of the key table.

A key has a scope — ``read`` (every read), ``write`` (reads, and writing references), ``admin``
(also managing collections and keys) — and optionally the collections it may use (none named:
all of them). Its secret, ``hsn_<id>_<random>`` (32 random bytes), is shown once, when it is
made; the database keeps only its argon2id hash (argon2-cffi: the password-hashing competition's
winner, memory-hard, maintained), so a copy of the database does not give a usable key.

Checking a key: its id is read from the secret, the secret verified once per process against
the stored hash (~0.1 s, argon2's point), then remembered as its SHA-256 digest, so every later
request costs one digest and one constant-time comparison (``hmac.compare_digest``). Every
create or revoke bumps ``keys_version`` in the database; each process reloads the key table
when it sees a new version (it looks every ``HSN_SYNC_INTERVAL_MS``), so a revoked key is
refused by every worker and replica within that interval, without a restart.

``HSN_API_KEY`` stays a key of scope ``admin`` (id ``env``); with ``HSN_AUTH_READS`` false,
reads need no key at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.concurrency import run_in_threadpool

from app.database import Database, StoreUnavailable
from app.errors import Invalid
from app.schemas import NAME_PATTERN
from app.store import timestamp

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")  # each can do what the ones before it can
NAME = re.compile(NAME_PATTERN)  # a collection's name
PREFIX = "hsn"
TOUCH_EVERY_S = 60.0  # a key's last use is written at most this often per process
ENV_KEY_ID = "env"  # HSN_API_KEY's id in logs


def check_collection_name(name: str, field: str = "collection") -> str:
    if not NAME.fullmatch(name):
        raise Invalid(field, f"{name!r} is not a collection name: [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret."""

    id: str
    name: str
    scope: str
    collections: tuple[str, ...]  # empty: every collection
    created_at: str
    last_used_at: str | None = None

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def covers(self, collection: str) -> bool:
        return not self.collections or collection in self.collections


class KeyTable:
    """The ``api_keys`` table of the service's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.hasher = PasswordHasher()

    def create(self, scope: str, collections: list[str], name: str = "") -> tuple[ApiKey, str]:
        """A new key and its secret (shown once: only its hash is kept)."""
        if scope not in SCOPES:
            raise Invalid("scope", f"{scope!r} is not one of {', '.join(SCOPES)}")
        for i, collection in enumerate(collections):
            check_collection_name(collection, f"collections.{i}")
        key_id = secrets.token_hex(6)
        secret = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name, scope, tuple(sorted(set(collections))), timestamp())
        with self.db.write() as s:
            s.execute(
                "INSERT INTO api_keys (id, name, scope, collections, hash, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.scope,
                    json.dumps(list(key.collections)),
                    self.hasher.hash(secret),
                    key.created_at,
                ),
            )
            self._bump(s)
        return key, secret

    def revoke(self, key_id: str) -> bool:
        with self.db.write() as s:
            found = s.execute(
                "SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
            if found is None:
                return False
            s.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (timestamp(), key_id))
            self._bump(s)
        return True

    def list(self) -> list[ApiKey]:
        """The keys not revoked, oldest first."""
        return [key for key, _ in self.active()]

    def active(self) -> list[tuple[ApiKey, str]]:
        """Every key not revoked, with its hash."""
        with self.db.read() as s:
            rows = s.execute(
                "SELECT id, name, scope, collections, created_at, last_used_at, hash"
                " FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
            ).fetchall()
        return [(ApiKey(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5]), r[6]) for r in rows]

    def made_any(self) -> bool:
        """Whether a key was ever made (revoked ones count: revoking the last key must not
        open the service)."""
        with self.db.read() as s:
            return s.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def version(self) -> int:
        with self.db.read() as s:
            row = s.execute("SELECT value FROM meta WHERE name = 'keys_version'").fetchone()
        return 0 if row is None else int(row[0])

    def touch(self, key_id: str, when: str) -> None:
        with self.db.write() as s:
            s.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id))

    def _bump(self, s) -> None:
        s.execute(
            "INSERT INTO meta (name, value) VALUES ('keys_version', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = meta.value + 1"
        )


@dataclass
class _Known:
    key: ApiKey
    hash: str
    digest: bytes | None = None  # SHA-256 of the secret, once verified here


@dataclass
class KeyRing:
    """This process's copy of the key table, followed every ``interval_s``."""

    table: KeyTable
    env_secret: str | None  # HSN_API_KEY
    interval_s: float
    _known: dict[str, _Known] = field(default_factory=dict)
    _version: int = -1
    _made_any: bool = False
    _touched: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        """Keys are asked for: HSN_API_KEY is set, or a key was ever made in the database."""
        return self.env_secret is not None or self._made_any

    def refresh(self) -> None:
        """Reloads the key table when its version moved (keeps what was verified)."""
        version = self.table.version()
        if version == self._version:
            return
        active = self.table.active()
        made_any = bool(active) or self.table.made_any()
        with self._lock:
            known = {}
            for key, hashed in active:
                previous = self._known.get(key.id)
                digest = previous.digest if previous and previous.hash == hashed else None
                known[key.id] = _Known(key, hashed, digest)
            self._known, self._version, self._made_any = known, version, made_any

    async def start(self) -> None:
        await run_in_threadpool(self.refresh)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await run_in_threadpool(self.refresh)
            except StoreUnavailable:
                pass  # the keys known stay in force until the database answers again
            except Exception:
                log.exception("reloading the API keys failed; retrying")

    async def identify(self, secret: str) -> ApiKey | None:
        """The key this secret is (None: unknown, revoked or wrong). Verified against its hash
        the first time in this process (argon2, off the event loop), by a constant-time digest
        comparison after."""
        if self.env_secret is not None and hmac.compare_digest(
            secret.encode(), self.env_secret.encode()
        ):
            return ApiKey(ENV_KEY_ID, "HSN_API_KEY", "admin", (), "")
        parts = secret.split("_", 2)
        digest = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            known = self._known.get(parts[1]) if len(parts) == 3 and parts[0] == PREFIX else None
        if known is None:
            return None
        if known.digest is not None:
            return known.key if hmac.compare_digest(digest, known.digest) else None
        return await run_in_threadpool(self._verify, known, secret, digest)

    def _verify(self, known: _Known, secret: str, digest: bytes) -> ApiKey | None:
        try:
            self.table.hasher.verify(known.hash, secret)
        except (VerificationError, InvalidHashError):
            return None
        known.digest = digest
        return known.key

    def used(self, key: ApiKey) -> None:
        """Notes a use (from the event loop): written as the key's last use in the background,
        at most every TOUCH_EVERY_S per key and process; best effort, never in the way."""
        if key.id == ENV_KEY_ID:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key.id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
                return
            self._touched[key.id] = now
        written = asyncio.get_running_loop().run_in_executor(
            None, self.table.touch, key.id, timestamp()
        )
        written.add_done_callback(lambda f: f.cancelled() or f.exception())
