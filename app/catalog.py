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
import time
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
from app.upgrade import UpgradeJob

log = logging.getLogger(__name__)

DEFAULT_ID = 0


@dataclass(frozen=True)
class CollectionRow:
    id: int
    name: str
    model: str | None  # a folder of the model repository; None: HSN_MODEL_DIR
    created_at: str


@dataclass(frozen=True)
class UpgradeRow:
    """A model change under way (app/upgrade.py)."""

    collection: int
    model: str | None  # the target's folder
    model_version: str  # the target's version
    started_at: str
    embedded_at_start: int
    holder: str | None
    lease_until: float


@dataclass(frozen=True)
class ServedModel:
    model_version: str
    model: str | None
    served_from: str


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
            s.execute("DELETE FROM served_models WHERE collection = ?", row)
            s.execute("DELETE FROM upgrades WHERE collection = ?", row)
            s.execute("DELETE FROM collections WHERE id = ?", row)
            self._bump(s)
        return True

    # -- model changes (app/upgrade.py runs them) --------------------------------------------
    def upgrades(self) -> dict[int, UpgradeRow]:
        with self.db.read() as s:
            rows = s.execute(
                "SELECT collection, model, model_version, started_at, embedded_at_start, holder,"
                " lease_until FROM upgrades"
            ).fetchall()
        return {row[0]: UpgradeRow(*row) for row in rows}

    def start_upgrade(
        self, collection: int, model: str | None, version: str, embedded: int
    ) -> UpgradeRow:
        """Records the change (Conflict while another runs); every process sees it within the
        sync interval and embeds its writes with both models from then on."""
        with self.db.write() as s:
            if (
                s.execute("SELECT 1 FROM collections WHERE id = ?", (collection,)).fetchone()
                is None
            ):
                raise NotFound("collection", "the collection was deleted")
            running = s.execute(
                "SELECT model_version FROM upgrades WHERE collection = ?", (collection,)
            ).fetchone()
            if running is not None:
                raise Conflict(
                    "model", f"a change to model version {running[0]} is under way: wait for it"
                )
            row = s.execute(
                "INSERT INTO upgrades (collection, model, model_version, started_at,"
                " embedded_at_start) VALUES (?, ?, ?, ?, ?) RETURNING collection, model,"
                " model_version, started_at, embedded_at_start, holder, lease_until",
                (collection, model, version, timestamp(), embedded),
            ).fetchone()
            self._bump(s)
        return UpgradeRow(*row)

    def take_lease(self, collection: int, holder: str, seconds: float) -> bool:
        """Whether ``holder`` holds the job now: taken when free or expired, renewed when
        held (one holder per job across workers and replicas)."""
        now = time.time()
        with self.db.write() as s:
            taken = s.execute(
                "UPDATE upgrades SET holder = ?, lease_until = ? WHERE collection = ? AND"
                " (holder IS NULL OR holder = ? OR lease_until < ?) RETURNING collection",
                (holder, now + seconds, collection, holder, now),
            ).fetchone()
        return taken is not None

    def finish_upgrade(self, collection: int, holder: str, keep: int) -> bool:
        """The switch, in one transaction (writers exclude each other, so no write slips in
        between the check and the switch): if ``holder`` holds the job and every reference has
        the target's embedding, the collection's model becomes the target; the embeddings of
        versions beyond the ``keep`` most recently served are deleted."""
        with self.db.write() as s:
            job = s.execute(
                "SELECT model, model_version, holder FROM upgrades WHERE collection = ?",
                (collection,),
            ).fetchone()
            if job is None or job[2] != holder:
                return False
            model, version, _ = job
            missing = s.execute(
                "SELECT 1 FROM refs r WHERE r.collection = ? AND NOT EXISTS (SELECT 1 FROM"
                " embeddings e WHERE e.key = r.key AND e.model_version = ?) LIMIT 1",
                (collection, version),
            ).fetchone()
            if missing is not None:
                return False
            s.execute("UPDATE collections SET model = ? WHERE id = ?", (model, collection))
            s.execute("DELETE FROM upgrades WHERE collection = ?", (collection,))
            self._note_served(s, collection, version, model, replace=True)
            served = s.execute(
                "SELECT model_version FROM served_models WHERE collection = ?"
                " ORDER BY served_from DESC, model_version",
                (collection,),
            ).fetchall()
            for (old,) in served[keep:]:
                self._forget(s, collection, old)
            self._bump(s)
        return True

    def served(self, collection: int) -> list[ServedModel]:
        """The model versions the collection has served, the latest first."""
        with self.db.read() as s:
            rows = s.execute(
                "SELECT model_version, model, served_from FROM served_models"
                " WHERE collection = ? ORDER BY served_from DESC, model_version",
                (collection,),
            ).fetchall()
        return [ServedModel(*row) for row in rows]

    def note_served(self, collection: int, version: str, model: str | None) -> None:
        with self.db.write() as s:
            self._note_served(s, collection, version, model, replace=False)

    def forget_version(self, collection: int, version: str) -> bool:
        """Deletes a served version's embeddings (False: the collection never served it)."""
        with self.db.write() as s:
            known = s.execute(
                "SELECT 1 FROM served_models WHERE collection = ? AND model_version = ?",
                (collection, version),
            ).fetchone()
            if known is None:
                return False
            self._forget(s, collection, version)
        return True

    @staticmethod
    def _note_served(s, collection: int, version: str, model: str | None, replace: bool) -> None:
        s.execute(  # never for a collection deleted meanwhile
            "INSERT INTO served_models (collection, model_version, model, served_from)"
            " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM collections WHERE id = ?)"
            " ON CONFLICT (collection, model_version) DO "
            + (
                "UPDATE SET served_from = excluded.served_from, model = excluded.model"
                if replace
                else "NOTHING"
            ),
            (collection, version, model, timestamp(), collection),
        )

    @staticmethod
    def _forget(s, collection: int, version: str) -> None:
        s.execute(
            "DELETE FROM embeddings WHERE model_version = ? AND key IN"
            " (SELECT key FROM refs WHERE collection = ?)",
            (version, collection),
        )
        s.execute(
            "DELETE FROM served_models WHERE collection = ? AND model_version = ?",
            (collection, version),
        )

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
        await run_in_threadpool(self.search.prepare)

    async def stop(self, deleted: bool = False) -> None:
        await self.sync.stop(remove=deleted)
        await run_in_threadpool(self.calibrations.close)  # waits for a refit under way


# what the composition root builds for a row, on its loaded model
Builder = Callable[[CollectionRow, LoadedModel], Collection]


@dataclass
class RunningUpgrade:
    """A model change this process takes part in: its target, loaded here, and its job."""

    row: UpgradeRow
    target: LoadedModel
    job: UpgradeJob


@dataclass
class CollectionRegistry:
    """This process's collections, in step with the ``collections`` table."""

    table: CollectionTable
    repository: ModelRepository
    models: ModelPool
    build: Builder
    interval_s: float
    keep_versions: int = 2  # model versions whose embeddings a collection keeps
    lease_s: float = 15.0  # a model change's lease (app/upgrade.py)
    pause: float = 1.0  # its pause after each batch, in batch durations
    on_removed: Callable[[str], None] = lambda name: None  # e.g. drop its metric series
    _live: dict[str, Collection] = field(default_factory=dict)
    _upgrades: dict[str, RunningUpgrade] = field(default_factory=dict)
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

    def upgrade_of(self, name: str) -> UpgradeRow | None:
        """The model change of ``name`` under way, as this process last saw it."""
        running = self._upgrades.get(name)
        return None if running is None else running.row

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
        for name in list(self._upgrades):
            await self._end_upgrade(name)
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
        """Starts the collections made elsewhere and stops those deleted, switches those whose
        model changed and takes part in the model changes under way, when the table's version
        moved."""
        version = await run_in_threadpool(self.table.version)
        if version == self._version:
            return
        async with self._changing:
            rows = await run_in_threadpool(self.table.list)
            wanted = {row.name: row for row in rows}
            for name, collection in list(self._live.items()):
                row = wanted.get(name)
                if row is None or row.id != collection.row.id:
                    log.info("collection %r was deleted: no longer served", name)
                    await self._end_upgrade(name)
                    del self._live[name]
                    await self._stop_one(collection, deleted=True)
                elif row.model != collection.row.model:
                    try:
                        await self._switch(collection, row)
                    except Exception:  # the old one keeps serving; the others go on
                        log.exception("collection %r could not switch models: retrying", name)
                        self._version = -1  # look again at the next round
            self._broken = {n: why for n, why in self._broken.items() if n in wanted}
            for row in rows:
                if row.name not in self._live and row.name not in self._broken:
                    try:
                        await self._start_built(row)
                    except (ModelLoadError, DomainError) as exc:
                        reason = exc.message if isinstance(exc, DomainError) else str(exc)
                        log.error("collection %r is not served: %s", row.name, reason)
                        self._broken[row.name] = reason
            await self._follow_upgrades(await run_in_threadpool(self.table.upgrades))
            self._version = version

    async def _switch(self, old: Collection, row: CollectionRow) -> None:
        """The collection on its new model: its index built beside the old one, which serves
        until the new one is swapped in (a request uses one or the other, never both)."""
        log.info("collection %r: switching to model %s", row.name, row.model or "HSN_MODEL_DIR")
        await self._start_built(row)  # replaces the old one in _live once its index is built
        await self._end_upgrade(row.name)
        await self._stop_one(old)

    async def _follow_upgrades(self, jobs: dict[int, UpgradeRow]) -> None:
        """Takes part in each model change under way: writes embedded by both models, this
        process's UpgradeJob; ends its part in those finished or withdrawn."""
        for name, collection in list(self._live.items()):
            job = jobs.get(collection.row.id)
            running = self._upgrades.get(name)
            if running is not None and (job is None or job != running.row):
                same = job is not None and job.collection == running.row.collection
                if same and job.model_version == running.row.model_version:
                    running.row = job  # the same change, another holder or lease
                    continue
                await self._end_upgrade(name)
            if job is None or name in self._upgrades:
                continue
            if job.collection != collection.row.id:
                continue  # a change of a collection of that name deleted since
            try:
                target = await run_in_threadpool(
                    self.models.acquire, self.repository.path(job.model)
                )
            except (ModelLoadError, DomainError) as exc:
                log.error("collection %r cannot take part in its model change: %s", name, exc)
                continue
            if not target.started:
                target.embedding.start()
                target.started = True
            collection.references.upgrade = target.embedding
            upgrade = UpgradeJob(
                name,
                collection.row.id,
                self.table,
                collection.store,
                target.embedding,
                self.keep_versions,
                self.interval_s,
                self.lease_s,
                self.pause,
            )
            upgrade.start()
            self._upgrades[name] = RunningUpgrade(job, target, upgrade)

    async def _end_upgrade(self, name: str) -> None:
        running = self._upgrades.pop(name, None)
        if running is None:
            return
        await running.job.stop()
        collection = self._live.get(name)
        if collection is not None and collection.references.upgrade is running.target.embedding:
            collection.references.upgrade = None
        if self.models.release(running.target):
            await running.target.embedding.stop()

    async def change_model(self, name: str, model: str | None) -> Collection:
        """Starts changing ``name``'s model to ``model`` (a repository folder; None:
        HSN_MODEL_DIR); every process takes part within the sync interval."""
        collection = self.get(name)
        target = await run_in_threadpool(self._acquire, self.repository.path(model))
        try:
            version = target.embedding.version
            if version == collection.embedding.version:
                raise Conflict("model", f"the collection serves model version {version} already")
            shape = await run_in_threadpool(collection.store.signal_shapes)
            takes = target.embedding.limits
            if shape is not None and not shape.fits(takes):
                raise Conflict(
                    "model",
                    f"the stored signals are {shape}; model {version} takes {takes}",
                )
            embedded = await run_in_threadpool(collection.store.count_embedded, version)
            await run_in_threadpool(
                self.table.start_upgrade, collection.row.id, model, version, embedded
            )
            await self.refresh()  # this process takes part at once
        finally:
            if self.models.release(target):  # loaded for the check alone
                await target.embedding.stop()
        return self.get(name)

    async def forget_version(self, name: str, version: str) -> None:
        """Deletes the embeddings of a model version ``name`` served before."""
        collection = self.get(name)
        if version == collection.embedding.version:
            raise Conflict("version", f"{version} is the model version the collection serves")
        upgrade = self.upgrade_of(name)
        if upgrade is not None and upgrade.model_version == version:
            raise Conflict("version", f"{version} is the target of the model change under way")
        if not await run_in_threadpool(self.table.forget_version, collection.row.id, version):
            raise NotFound("version", f"the collection never served model version {version}")
        await run_in_threadpool(collection.sync.segments.forget, version)

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
            await self._end_upgrade(name)
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

    async def _start_built(self, row: CollectionRow) -> None:
        """The collection of ``row`` on its model, started (its model released if it cannot)."""
        loaded = await run_in_threadpool(self.models.acquire, self.repository.path(row.model))
        try:
            await self._start(self.build(row, loaded))
        except BaseException:
            if self.models.release(loaded):
                await loaded.embedding.stop()
            raise

    async def _start(self, collection: Collection) -> None:
        """Starts it and serves it; one that fails to start is stopped again (its model is the
        caller's to release)."""
        if not collection.model.started:  # its batcher, once for every collection of the model
            collection.embedding.start()
            collection.model.started = True
        try:
            await collection.start()
            await run_in_threadpool(
                self.table.note_served,
                collection.row.id,
                collection.embedding.version,
                collection.row.model,
            )
        except BaseException:
            try:
                await collection.stop(deleted=True)  # its segments may be of a failed build
            except Exception:
                log.exception("stopping collection %r after a failed start", collection.name)
            raise
        self._live[collection.name] = collection

    async def _stop_one(self, collection: Collection, deleted: bool = False) -> None:
        await collection.stop(deleted=deleted)
        if self.models.release(collection.model):
            await collection.embedding.stop()
        if deleted:
            self.on_removed(collection.name)
