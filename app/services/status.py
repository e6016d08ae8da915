"""Operations: whether this process is ready (model, index, database, change-log lag), its
Prometheus metrics and the served model's manifest."""

from __future__ import annotations

from prometheus_client import generate_latest
from starlette.concurrency import run_in_threadpool

from app.database import StoreUnavailable
from app.index import VectorIndex
from app.observability import SERVED_BY, Metrics
from app.schemas import Ready
from app.services.embedding import EmbeddingService
from app.store import ReferenceStore
from app.sync import IndexSync


class StatusService:
    def __init__(
        self,
        embedding: EmbeddingService,
        index: VectorIndex,
        store: ReferenceStore,
        sync: IndexSync,
        metrics: Metrics,
    ) -> None:
        self.embedding, self.index, self.store, self.sync = embedding, index, store, sync
        self.metrics = metrics
        self.ready = False  # set by the composition root once started

    async def status(self) -> Ready:
        sync = self.sync.status()
        stored = None  # not asked while the database is known to be down: a probe must not wait
        if sync.database == "ok":
            try:
                stored = await run_in_threadpool(self.store.count)
            except StoreUnavailable:
                pass
        return Ready(
            ready=self.ready,
            references=len(self.index),
            stored=stored,
            model_version=self.embedding.version,
            engine=self.embedding.engine,
            index=self.index.current_kind,
            inference_workers=self.embedding.workers,
            database="ok" if stored is not None else "unreachable",
            degraded=stored is None,
            sync=sync,
            served_by=SERVED_BY,
        )

    def manifest(self) -> dict:
        return self.embedding.manifest

    def metrics_text(self) -> bytes:
        """This process's metrics in Prometheus' text format, the change-log lag as of now."""
        sync = self.sync.status()
        self.metrics.sync_lag_entries.set(sync.lag_entries)
        self.metrics.sync_lag_seconds.set(sync.lag_seconds)
        self.metrics.database_up.set(sync.database == "ok")
        return generate_latest(self.metrics.registry)
