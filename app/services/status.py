"""Operations: whether this process is ready (models, indexes, database, change-log lag, for
every collection) and its Prometheus metrics."""

from __future__ import annotations

from prometheus_client import generate_latest
from starlette.concurrency import run_in_threadpool

from app.catalog import Collection, CollectionRegistry
from app.database import StoreUnavailable
from app.observability import SERVED_BY, Metrics
from app.schemas import CollectionStatus, Ready
from app.store import DEFAULT_COLLECTION, ReferenceStore


class StatusService:
    def __init__(
        self, collections: CollectionRegistry, store: ReferenceStore, metrics: Metrics
    ) -> None:
        self.collections, self.store, self.metrics = collections, store, metrics
        self.ready = False  # set by the composition root once started

    async def status(self) -> Ready:
        every = [self._collection(c) for c in self.collections.items()]
        default = self.collections.get(DEFAULT_COLLECTION)
        sync = default.sync.status()
        stored = None  # not asked while the database is known to be down: a probe must not wait
        if sync.database == "ok":
            try:
                stored = await run_in_threadpool(default.store.count)
            except StoreUnavailable:
                pass
        return Ready(
            ready=self.ready,
            references=len(default.index),
            stored=stored,
            model_version=default.embedding.version,
            engine=default.embedding.engine,
            index=default.index.current_kind,
            inference_workers=default.embedding.workers,
            database="ok" if stored is not None else "unreachable",
            degraded=stored is None,
            sync=sync,
            served_by=SERVED_BY,
            collections=every,
            unavailable=self.collections.broken(),
        )

    @staticmethod
    def _collection(collection: Collection) -> CollectionStatus:
        segments = collection.index.status(building=collection.sync.building)
        return CollectionStatus(
            name=collection.name,
            model_version=collection.embedding.version,
            references=len(collection.index),
            index=collection.index.current_kind,
            index_memory_bytes=segments.memory_bytes,
            model_memory_bytes=collection.model.memory_bytes,
            segments=segments,
            sync=collection.sync.status(),
        )

    async def metrics_text(self) -> bytes:
        """This process's metrics in Prometheus' text format: lags, memory and the progress of
        model changes as of now."""
        database_ok = True
        for collection in self.collections.items():
            name = collection.name
            await self._upgrade_progress(collection)
            sync = collection.sync.status()
            self.metrics.sync_lag_entries.labels(name).set(sync.lag_entries)
            self.metrics.sync_lag_seconds.labels(name).set(sync.lag_seconds)
            segments = collection.index.status(building=collection.sync.building)
            self.metrics.index_memory.labels(name).set(segments.memory_bytes)
            self.metrics.index_mapped.labels(name).set(segments.mapped_bytes)
            self.metrics.index_disk.labels(name).set(segments.disk_bytes)
            self.metrics.index_mutable.labels(name).set(segments.mutable_references)
            self.metrics.index_tombstones.labels(name).set(segments.tombstones)
            self.metrics.index_building.labels(name).set(int(segments.building))
            self.metrics.model_memory.labels(name).set(collection.model.memory_bytes)
            database_ok = database_ok and sync.database == "ok"
        self.metrics.database_up.set(database_ok)
        return generate_latest(self.metrics.registry)

    async def _upgrade_progress(self, collection: Collection) -> None:
        upgrade = self.collections.upgrade_of(collection.name)
        embedded, total = self.metrics.upgrade_embedded, self.metrics.upgrade_references
        if upgrade is None:
            self.metrics.forget(collection.name, embedded, total)
            return
        try:
            done = await run_in_threadpool(collection.store.count_embedded, upgrade.model_version)
            embedded.labels(collection.name).set(done)
            total.labels(collection.name).set(await run_in_threadpool(collection.store.count))
        except StoreUnavailable:
            pass
