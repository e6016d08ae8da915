"""The composition root: every component built from the settings and wired once, here, for
``create_app`` (app/main.py) and ``python -m app`` alike.

Who owns which state:
- the model runtime and its batcher: :class:`~app.services.embedding.EmbeddingService`;
- the database: :class:`~app.store.ReferenceStore` (the schema is created or migrated once, in
  :func:`open_store`);
- the search index: :class:`~app.index.VectorIndex`, changed only by
  :class:`~app.sync.IndexSync` (through the change log);
- every fitted calibration: one :class:`~app.calibration.FittedCache`, told by the sync what
  reached the index.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from app.calibration import FittedCache
from app.database import StoreUnavailable, open_database
from app.index import VectorIndex
from app.index_policy import IndexPolicy
from app.keys import KeyRing, KeyTable
from app.observability import Metrics
from app.reference_view import ReferenceView
from app.runtime import DynamicBatcher, ModelRuntime
from app.services.alignment import AlignmentService
from app.services.drift import DriftService
from app.services.embedding import EmbeddingService
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
    """The capabilities a router calls, and what they share (started and stopped here)."""

    embedding: EmbeddingService
    references: ReferenceService
    search: SearchService
    verification: VerificationService
    drift: DriftService
    alignment: AlignmentService
    status: StatusService
    settings: Settings
    metrics: Metrics
    store: ReferenceStore
    sync: IndexSync
    calibrations: FittedCache
    keys: KeyRing

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.embedding.start()
        await self.keys.start()
        await self.sync.start()
        # Everything loaded so far (torch, ONNX Runtime, the app) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise took ~100 ms each under
        # load and stalled every request in flight.
        gc.collect()  # what is garbage now would otherwise never be collected
        gc.freeze()
        self.status.ready = True

    async def stop(self) -> None:
        self.status.ready = False
        await self.sync.stop()
        await self.keys.stop()
        await self.embedding.stop()
        await run_in_threadpool(self.calibrations.close)  # waits for a refit under way
        self.store.close()


def build(settings: Settings, metrics: Metrics) -> Services:
    """Loads the model and opens the database now, so that a bad model or an unreachable
    database fails at once; :meth:`Services.start` then loads or rebuilds the index."""
    store = connect(settings)  # first: a bad database URL is the first thing said
    try:
        return _build(settings, metrics, store)
    except BaseException:
        store.close()
        raise


def _build(settings: Settings, metrics: Metrics, store: ReferenceStore) -> Services:
    runtime = ModelRuntime(
        settings.model_dir, settings.max_batch, settings.threads, settings.engine
    )
    store.prepare()  # after the model: a model that cannot be served migrates nothing
    workers = settings.inference_worker_count
    batcher = DynamicBatcher(
        runtime,
        enabled=settings.dynamic_batching,
        max_signals=settings.batch_max_signals,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        observe=metrics.observe_inference,
        workers=workers,
    )
    embedding = EmbeddingService(runtime, batcher)
    log.info(
        "%d inference worker(s) x %d thread(s), dynamic batching %s, references in %s",
        workers,
        settings.threads,
        "on" if settings.dynamic_batching else "off",
        store.describe(),
    )
    index = VectorIndex(
        runtime.dim,
        IndexPolicy(settings.index_type, settings.auto_approximate_above),
        ivf_nprobe=settings.ivf_nprobe,
        hnsw_m=settings.hnsw_m,
        ef_search=settings.hnsw_ef_search,
        search_threads=settings.search_threads,
    )
    # a refit that cannot reach the database keeps the last fit answering
    calibrations = FittedCache(keep_on=(StoreUnavailable,))
    sync = IndexSync(
        store,
        index,
        runtime.version,
        embedding.embed_signals,
        settings.data_dir / f"index-{runtime.version}.npz",
        settings.sync_interval_ms / 1000,
        observers=[calibrations, metrics],
    )
    view = ReferenceView(store, index, runtime.version)
    return Services(
        embedding=embedding,
        references=ReferenceService(embedding, store, view, sync),
        search=SearchService(embedding, view, index, store, sync, calibrations, settings),
        verification=VerificationService(embedding, view, sync, calibrations, settings, metrics),
        drift=DriftService(embedding, view, calibrations, settings, metrics),
        alignment=AlignmentService(embedding, view, store, settings),
        status=StatusService(embedding, index, store, sync, metrics),
        settings=settings,
        metrics=metrics,
        store=store,
        sync=sync,
        calibrations=calibrations,
        keys=KeyRing(
            KeyTable(store.db),
            settings.api_key.get_secret_value() if settings.api_key else None,
            settings.sync_interval_ms / 1000,
        ),
    )
