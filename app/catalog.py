"""Collections: several models and reference sets in one deployment.

A collection is a row of the ``collections`` table (its name, its model — a folder of the model
repository, or NULL for HSN_MODEL_DIR — and when it was made; its id is never reused, so a name
deleted and made again is a new collection). Its references are the rows of ``refs`` with its
id; each has its own index, calibrations and change-log entries (:class:`Collection`, wired by
:func:`app.container.build_collection`). ``default`` (id 0) always exists: the routes without
``/collections/{name}`` serve it.

Every create or delete bumps ``collections_version`` in the database (and notifies, on
PostgreSQL); each process's :class:`CollectionRegistry` looks every ``HSN_SYNC_INTERVAL_MS``
(at once when notified) and starts or stops what changed, so a collection made through one
replica is searchable through the others within that interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from app.calibration import FittedCache
from app.database import Database, StoreUnavailable
from app.errors import Conflict, DomainError, Invalid, NotFound, Unavailable
from app.index import VectorIndex
from app.keys import check_collection_name
from app.models import LoadedModel, ModelPool, ModelRepository
from app.runtime import ModelLoadError
from app.services.alignment import AlignmentService
from app.services.drift import DriftService
from app.services.embedding import EmbeddingService
from app.services.references import ReferenceService
from app.services.search import SearchService
from app.services.verification import VerificationService
from app.signals import SignalLimits
from app.store import DEFAULT_COLLECTION, ReferenceStore, timestamp
from app.sync import IndexSync, next_round

log = logging.getLogger(__name__)

DEFAULT_ID = 0


@dataclass(frozen=True)
class CollectionRow:
    id: int
    name: str
    model: str | None  # a folder of the model repository; None: HSN_MODEL_DIR
    created_at: str


class CollectionTable:
    """The ``collections`` table of the service's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self) -> list[CollectionRow]:
        with self.db.read() as s:
            rows = s.execute("SELECT id, name, model, created_at FROM collections ORDER BY id")
            return [CollectionRow(*row) for row in rows.fetchall()]

    def version(self) -> int:
        with self.db.read() as s:
            row = s.execute("SELECT value FROM meta WHERE name = 'collections_version'").fetchone()
        return 0 if row is None else int(row[0])

    def create(self, name: str, model: str | None) -> CollectionRow:
        with self.db.write() as s:
            if s.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
                raise Conflict("name", f"a collection {name!r} exists already")
            row = s.execute(
                "INSERT INTO collections (name, model, created_at) VALUES (?, ?, ?)"
                " RETURNING id, name, model, created_at",
                (name, model, timestamp()),
            ).fetchone()
            self._bump(s)
        return CollectionRow(*row)

    def delete(self, name: str) -> bool:
        """The collection and everything it holds, in one transaction (False: no such name)."""
        if name == DEFAULT_COLLECTION:
            raise Conflict("collection", "the collection default cannot be deleted")
        with self.db.write() as s:
            row = s.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            s.execute(
                "DELETE FROM embeddings WHERE key IN (SELECT key FROM refs WHERE collection = ?)",
                row,
            )
            s.execute("DELETE FROM refs WHERE collection = ?", row)
            s.execute("DELETE FROM changes WHERE collection = ?", row)
            s.execute("DELETE FROM collections WHERE id = ?", row)
            self._bump(s)
        return True

    def _bump(self, s) -> None:
        s.execute(
            "INSERT INTO meta (name, value) VALUES ('collections_version', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = meta.value + 1"
        )
        self.db.notify(s)


@dataclass
class Collection:
    """One collection's services and the state they share, started and stopped together."""

    row: CollectionRow
    model: LoadedModel
    references: ReferenceService
    search: SearchService
    verification: VerificationService
    drift: DriftService
    alignment: AlignmentService
    store: ReferenceStore
    index: VectorIndex
    sync: IndexSync
    calibrations: FittedCache
    limits: SignalLimits  # what its model takes, named by the collection in refusals

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def embedding(self) -> EmbeddingService:
        return self.model.embedding

    async def start(self) -> None:
        await self.sync.start()

    async def stop(self, deleted: bool = False) -> None:
        await self.sync.stop(save=not deleted)
        await run_in_threadpool(self.calibrations.close)  # waits for a refit under way


# what the composition root builds for a row, on its loaded model
Builder = Callable[[CollectionRow, LoadedModel], Collection]


@dataclass
class CollectionRegistry:
    """This process's collections, in step with the ``collections`` table."""

    table: CollectionTable
    repository: ModelRepository
    models: ModelPool
    build: Builder
    interval_s: float
    on_removed: Callable[[str], None] = lambda name: None  # e.g. drop its metric series
    _live: dict[str, Collection] = field(default_factory=dict)
    _broken: dict[str, str] = field(default_factory=dict)  # name -> why it is not served
    _version: int = -1
    _changing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _task: asyncio.Task | None = None
    _listener: threading.Thread | None = None

    # -- lookups (on the event loop) ---------------------------------------------------------
    def get(self, name: str) -> Collection:
        """The collection ``name`` (NotFound, or Unavailable when its model cannot be served)."""
        collection = self._live.get(name)
        if collection is not None:
            return collection
        if name in self._broken:
            raise Unavailable("collection", f"{name!r} cannot be served: {self._broken[name]}")
        check_collection_name(name)
        raise NotFound("collection", f"no collection {name!r}")

    def items(self) -> list[Collection]:
        return sorted(self._live.values(), key=lambda c: c.row.id)

    def broken(self) -> dict[str, str]:
        return dict(self._broken)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, default: Collection) -> None:
        """Starts ``default`` (built eagerly, so a bad model fails the start), then every other
        collection the table holds; then follows the table and the change log."""
        await self._start(default)
        await self.refresh()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._wake_all)

        # one listener per process (PostgreSQL NOTIFY) wakes every collection's sync
        store = default.store
        self._listener = threading.Thread(
            target=store.listen, args=(wake, self._stop), name="change-listener", daemon=True
        )
        self._listener.start()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._listener is not None:  # it checks the stop flag twice a second
            await run_in_threadpool(self._listener.join, 5.0)
        for collection in list(self._live.values()):
            await self._stop_one(collection)

    def _wake_all(self) -> None:
        self._wake.set()
        for collection in self._live.values():
            collection.sync.wake()

    async def _follow(self) -> None:
        while await next_round(self._wake, self._stop, self.interval_s):
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # the collections known keep serving until the database answers again
            except Exception:
                log.exception("reloading the collections failed; retrying")

    async def refresh(self) -> None:
        """Starts the collections made elsewhere and stops those deleted, when the table's
        version moved."""
        version = await run_in_threadpool(self.table.version)
        if version == self._version:
            return
        async with self._changing:
            rows = await run_in_threadpool(self.table.list)
            wanted = {row.name: row for row in rows}
            for name, collection in list(self._live.items()):
                if name not in wanted or wanted[name].id != collection.row.id:
                    log.info("collection %r was deleted: no longer served", name)
                    del self._live[name]
                    await self._stop_one(collection, deleted=True)
            self._broken = {n: why for n, why in self._broken.items() if n in wanted}
            for row in rows:
                if row.name not in self._live and row.name not in self._broken:
                    try:
                        await self._start(await self._build(row))
                    except (ModelLoadError, DomainError) as exc:
                        reason = exc.message if isinstance(exc, DomainError) else str(exc)
                        log.error("collection %r is not served: %s", row.name, reason)
                        self._broken[row.name] = reason
            self._version = version

    # -- changes made here -------------------------------------------------------------------
    async def create(self, name: str, model: str | None) -> Collection:
        """A new collection on one of the repository's models (None: HSN_MODEL_DIR), started
        here before this returns; the other processes start it within the sync interval."""
        check_collection_name(name, "name")
        folder = self.repository.path(model)
        loaded = await run_in_threadpool(self._acquire, folder)
        try:
            async with self._changing:
                row = await run_in_threadpool(self.table.create, name, model)
                collection = self.build(row, loaded)
                await self._start(collection)
            return collection
        except BaseException:
            if self.models.release(loaded):
                await loaded.embedding.stop()
            raise

    async def delete(self, name: str) -> None:
        """Deletes the collection and its references (NotFound: none such)."""
        async with self._changing:
            if not await run_in_threadpool(self.table.delete, name):
                raise NotFound("collection", f"no collection {name!r}")
            collection = self._live.pop(name, None)
            self._broken.pop(name, None)
            if collection is not None:
                await self._stop_one(collection, deleted=True)

    # -- helpers -----------------------------------------------------------------------------
    def _acquire(self, folder) -> LoadedModel:
        try:
            return self.models.acquire(folder)
        except ModelLoadError as exc:
            raise Invalid("model", f"the model cannot be served: {exc}") from exc

    async def _build(self, row: CollectionRow) -> Collection:
        folder = self.repository.path(row.model)
        loaded = await run_in_threadpool(self.models.acquire, folder)
        return self.build(row, loaded)

    async def _start(self, collection: Collection) -> None:
        if not collection.model.started:  # its batcher, once for every collection of the model
            collection.embedding.start()
            collection.model.started = True
        await collection.start()
        self._live[collection.name] = collection

    async def _stop_one(self, collection: Collection, deleted: bool = False) -> None:
        await collection.stop(deleted=deleted)
        if self.models.release(collection.model):
            await collection.embedding.stop()
        if deleted:
            self.on_removed(collection.name)
