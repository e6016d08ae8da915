"""The composition root: every component built from the settings and wired once, here, for
``create_app`` (app/main.py) and ``python -m app`` alike.

Who owns which state:
- the collections: :class:`~app.catalog.CollectionRegistry` (started, stopped and kept in step
  with the database's ``collections`` table);
- each model and its batcher: :class:`~app.models.ModelPool` (loaded once however many
  collections use it), as an :class:`~app.services.embedding.EmbeddingService`;
- the database: :class:`~app.store.ReferenceStore` (the schema is created or migrated once, in
  :func:`open_store`); each collection reads and writes its own references through a view of it;
- a collection's search index: :class:`~app.index.VectorIndex`, changed only by its
  :class:`~app.sync.IndexSync` (through the change log);
- a collection's fitted calibrations: one :class:`~app.calibration.FittedCache`, told by its
  sync what reached the index.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, replace

from app.calibration import FittedCache
from app.catalog import DEFAULT_ID, Collection, CollectionRegistry, CollectionRow, CollectionTable
from app.database import StoreUnavailable, open_database
from app.errors import DomainError
from app.index import VectorIndex
from app.index_policy import IndexPolicy
from app.keys import KeyRing, KeyTable
from app.models import LoadedModel, ModelPool, ModelRepository
from app.observability import Metrics
from app.reference_view import ReferenceView
from app.runtime import ModelLoadError
from app.segments import BuildParameters, SegmentFolder
from app.services.alignment import AlignmentService
from app.services.backup import BackupService
from app.services.collections import CollectionService
from app.services.drift import DriftService
from app.services.references import ReferenceService
from app.services.search import SearchService
from app.services.status import StatusService
from app.services.verification import VerificationService
from app.settings import Settings
from app.store import ReferenceStore
from app.sync import IndexSync

log = logging.getLogger(__name__)


def connect(settings: Settings) -> ReferenceStore:
    """The database the settings name, connected (retried up to its timeout)."""
    url = settings.database_url.get_secret_value() if settings.database_url else None
    database = open_database(url, settings.data_dir, settings.database_connect_timeout_s)
    return ReferenceStore(database, settings.change_log_keep)


def open_store(settings: Settings) -> ReferenceStore:
    """The database connected, with its schema created or migrated (``python -m app`` checks
    this once before it starts several workers)."""
    store = connect(settings)
    try:
        store.prepare()
    except BaseException:
        store.close()
        raise
    return store


@dataclass
class Services:
    """What the routers call, and what they share (started and stopped here): the collections
    (each with its own services, :class:`app.catalog.Collection`), readiness and metrics, keys."""

    collections: CollectionRegistry
    default: Collection  # the routes without /collections/{name}
    catalog: CollectionService  # /collections
    backup: BackupService  # /admin/backup
    status: StatusService
    settings: Settings
    metrics: Metrics
    store: ReferenceStore  # the database (the collection default's references)
    keys: KeyRing

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.keys.start()
        await self.collections.start(self.default)
        # Everything loaded so far (torch, ONNX Runtime, the app) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise took ~100 ms each under
        # load and stalled every request in flight.
        gc.collect()  # what is garbage now would otherwise never be collected
        gc.freeze()
        self.status.ready = True

    async def stop(self) -> None:
        self.status.ready = False
        await self.collections.stop()
        await self.keys.stop()
        self.store.close()


def build(settings: Settings, metrics: Metrics) -> Services:
    """Loads the default collection's model and opens the database now, so that a bad model or
    an unreachable database fails at once; :meth:`Services.start` then starts every collection
    (loading or rebuilding its index)."""
    store = connect(settings)  # first: a bad database URL is the first thing said
    try:
        return _build(settings, metrics, store)
    except BaseException:
        store.close()
        raise


def _build(settings: Settings, metrics: Metrics, store: ReferenceStore) -> Services:
    repository = ModelRepository(settings.model_dir, settings.model_repository)
    models = ModelPool(settings, metrics)
    default_model = models.acquire(settings.model_dir)
    store.prepare()  # after the model: a model that cannot be served migrates nothing
    embedding = default_model.embedding
    log.info(
        "%d inference worker(s) x %d thread(s), dynamic batching %s, references in %s%s",
        embedding.workers,
        settings.threads,
        "on" if settings.dynamic_batching else "off",
        store.describe(),
        f", model repository {settings.model_repository}" if settings.model_repository else "",
    )
    table = CollectionTable(store.db)
    default_row = next(row for row in table.list() if row.id == DEFAULT_ID)
    if default_row.model is not None:  # changed while serving: stored with the collection
        try:
            folder = repository.path(default_row.model)
        except DomainError as exc:
            raise ModelLoadError(f"the collection default serves {exc.message}") from exc
        changed = models.acquire(folder)
        models.release(default_model)  # HSN_MODEL_DIR was checked; it is not served
        default_model = changed

    def build_one(row: CollectionRow, loaded: LoadedModel) -> Collection:
        return build_collection(row, loaded, store, settings, metrics)

    registry = CollectionRegistry(
        table,
        repository,
        models,
        build_one,
        settings.sync_interval_ms / 1000,
        keep_versions=settings.model_versions_kept,
        lease_s=settings.upgrade_lease_s,
        pause=settings.upgrade_pause,
        on_removed=metrics.forget_collection,
    )
    return Services(
        collections=registry,
        default=build_one(default_row, default_model),
        catalog=CollectionService(registry),
        backup=BackupService(store.db),
        status=StatusService(registry, store, metrics),
        settings=settings,
        metrics=metrics,
        store=store,
        keys=KeyRing(
            KeyTable(store.db),
            settings.api_key.get_secret_value() if settings.api_key else None,
            settings.sync_interval_ms / 1000,
        ),
    )


def build_collection(
    row: CollectionRow,
    loaded: LoadedModel,
    database: ReferenceStore,
    settings: Settings,
    metrics: Metrics,
) -> Collection:
    """One collection's services on its (shared) model: its references, index, change-log
    follower and calibrations."""
    embedding = loaded.embedding
    version = embedding.version
    store = database.of_collection(row.id)
    index = VectorIndex(
        embedding.runtime.dim,
        IndexPolicy(
            settings.index_type, settings.auto_approximate_above, settings.auto_compress_above
        ),
        search_threads=settings.search_threads,
    )
    # a refit that cannot reach the database keeps the last fit answering
    calibrations = FittedCache(keep_on=(StoreUnavailable,))
    segments = SegmentFolder(
        settings.data_dir / "segments" / f"{row.name}-{row.id}" / version,
        BuildParameters(
            embedding.runtime.dim,
            ivf_nprobe=settings.ivf_nprobe,
            hnsw_m=settings.hnsw_m,
            ef_search=settings.hnsw_ef_search,
        ),
    )
    sync = IndexSync(
        store,
        index,
        version,
        embedding.embed_signals,
        segments,
        settings.sync_interval_ms / 1000,
        observers=[calibrations, metrics.index_observer(row.name)],
    )
    view = ReferenceView(store, index, version)
    return Collection(
        row=row,
        model=loaded,
        references=ReferenceService(embedding, store, view, sync),
        search=SearchService(embedding, view, index, store, sync, calibrations, settings),
        verification=VerificationService(embedding, view, sync, calibrations, settings, metrics),
        drift=DriftService(embedding, view, calibrations, settings, metrics),
        alignment=AlignmentService(embedding, view, store, settings),
        store=store,
        index=index,
        sync=sync,
        calibrations=calibrations,
        limits=embedding.limits
        if row.id == DEFAULT_ID
        else replace(embedding.limits, collection=row.name),
    )
