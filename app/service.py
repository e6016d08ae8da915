"""The service's operations: the model, its batcher, the store and the index working together.

Operations return typed results (dataclasses); the routers serialise them through the schemas.
Writes commit to the store and then reach the index through :class:`app.sync.IndexSync`, the one
owner of their consistency; searches read the in-memory index (and the neighbours' metadata from
the store, left out while the database is unreachable).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.calibration import AnomalyCalibration
from app.database import Database, StoreUnavailable
from app.errors import InputError
from app.index import Neighbor, VectorIndex
from app.index_policy import IndexPolicy
from app.observability import Metrics
from app.runtime import DynamicBatcher, Inference, ModelRuntime
from app.settings import Settings
from app.signals import SignalBatch
from app.store import (
    SCHEMA_VERSION,
    NewReference,
    ReferenceStore,
    ReferenceSummary,
    StoredReference,
    timestamp,
)
from app.sync import IndexSync, SyncStatus

log = logging.getLogger(__name__)

SERVED_BY = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ReferenceInput:
    element_id: str
    session_id: str
    signal: np.ndarray  # (C, L)
    id: str | None = None
    metadata: dict | None = None
    recorded_at: datetime | None = None  # None: when stored


@dataclass
class NeighborResult:
    id: str
    element_id: str
    session_id: str
    similarity: float
    metadata: dict | None  # None while the database is unreachable


@dataclass
class PredictedElement:
    element_id: str
    confidence: float


@dataclass
class AnomalyResult:
    score: float
    is_anomaly: bool
    threshold: float
    calibrated_on: str


@dataclass
class SearchResult:
    neighbors: list[NeighborResult]
    predicted_element: PredictedElement | None
    anomaly: AnomalyResult | None


@dataclass
class ReferencePage:
    items: list[ReferenceSummary]
    total: int
    limit: int
    offset: int


@dataclass
class ReadyStatus:
    ready: bool
    references: int
    stored: int | None
    model_version: str
    engine: str
    index: str
    inference_workers: int
    database: str
    degraded: bool
    sync: SyncStatus
    served_by: str


class SignalService:
    def __init__(self, settings: Settings, metrics: Metrics, database: Database) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime = ModelRuntime(
            settings.model_dir, settings.max_batch, settings.threads, settings.engine
        )
        workers = settings.inference_worker_count
        self.batcher = DynamicBatcher(
            self.runtime,
            enabled=settings.dynamic_batching,
            max_signals=settings.batch_max_signals,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observe=metrics.observe_inference,
            workers=workers,
        )
        log.info(
            "%d inference worker(s) x %d thread(s), dynamic batching %s, references in %s",
            workers,
            settings.threads,
            "on" if settings.dynamic_batching else "off",
            database.describe(),
        )
        self.store = ReferenceStore(database, settings.change_log_keep)
        with database.exclusive():  # one process at a time creates or migrates the schema
            found = self.store.migrate()
        if found not in (0, SCHEMA_VERSION):
            log.info("migrated the database from schema version %d", found)
        self.index = VectorIndex(
            self.runtime.dim,
            IndexPolicy(settings.index_type, settings.auto_approximate_above),
            ivf_nprobe=settings.ivf_nprobe,
            hnsw_m=settings.hnsw_m,
            ef_search=settings.hnsw_ef_search,
            search_threads=settings.search_threads,
        )
        self.sync = IndexSync(
            self.store,
            self.index,
            AnomalyCalibration(settings.anomaly_k),
            self.runtime.version,
            self._embed_signals,
            settings.data_dir / f"index-{self.runtime.version}.npz",
            settings.sync_interval_ms / 1000,
        )
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.batcher.start()
        await self.sync.start()
        self.metrics.index_size.set(len(self.index))
        # Everything loaded so far (torch, ONNX Runtime, the app) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise took ~100 ms each under
        # load and stalled every request in flight.
        gc.collect()  # what is garbage now would otherwise never be collected
        gc.freeze()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.sync.stop()
        await self.batcher.stop()
        self.store.close()

    # -- inference ---------------------------------------------------------------------------
    async def embed(self, batch: SignalBatch) -> Inference:
        return await self.batcher.infer(batch)

    async def _embed_signals(self, signals: list[np.ndarray]) -> np.ndarray:
        return (await self.embed([s[None] for s in signals])).embeddings

    # -- references --------------------------------------------------------------------------
    async def upsert(self, refs: list[ReferenceInput]) -> list[str]:
        """Store references, in order: an id given twice ends as its last version. Returns
        each reference's id (new ones are made up) once committed and searchable here."""
        ids = [r.id or uuid.uuid4().hex for r in refs]
        last = sorted({ref_id: n for n, ref_id in enumerate(ids)}.values())
        kept = [refs[n] for n in last]
        embeddings = await self._embed_signals([r.signal for r in kept])
        rows = [
            NewReference(
                ids[n],
                r.element_id,
                r.session_id,
                r.metadata or {},
                r.signal,
                e,
                None if r.recorded_at is None else timestamp(r.recorded_at),
            )
            for n, r, e in zip(last, kept, embeddings, strict=True)
        ]
        committed = await run_in_threadpool(self.store.upsert, rows, self.runtime.version)
        await self.sync.after_commit(committed.seq)
        self.metrics.index_size.set(len(self.index))
        return ids

    async def delete(self, ref_id: str) -> bool:
        committed = await run_in_threadpool(self.store.delete, ref_id)
        if committed is None:
            return False
        await self.sync.after_commit(committed.seq)
        self.metrics.index_size.set(len(self.index))
        return True

    async def get_reference(self, ref_id: str) -> StoredReference:
        ref = await run_in_threadpool(self.store.get, ref_id)
        if ref is None:
            raise InputError(
                "path.ref_id", f"no reference with id {ref_id!r}", status=404, kind="not_found"
            )
        return ref

    async def list_references(
        self, element_id: str | None, limit: int, offset: int
    ) -> ReferencePage:
        items, total = await run_in_threadpool(self.store.list, element_id, limit, offset)
        return ReferencePage(items, total, limit, offset)

    # -- search ------------------------------------------------------------------------------
    async def search(
        self,
        batch: SignalBatch,
        k: int,
        element_id: str | None = None,
        session_id: str | None = None,
        exclude_session_id: str | None = None,
        expected_element: str | None = None,
    ) -> list[SearchResult]:
        if expected_element is not None and not self.index.has_element(expected_element):
            raise InputError(
                "expected_element",
                f"no references of element {expected_element!r}",
                status=404,
                kind="not_found",
            )
        embeddings = (await self.embed(batch)).embeddings
        await self.sync.ensure_fresh()
        return await run_in_threadpool(
            self._search,
            embeddings,
            k,
            element_id,
            session_id,
            exclude_session_id,
            expected_element,
        )

    def _search(
        self, embeddings, k, element_id, session_id, exclude_session_id, expected_element
    ) -> list[SearchResult]:
        rows = self.index.search(embeddings, k, element_id, session_id, exclude_session_id)
        # The neighbours serve the anomaly score too when they came from the same pool.
        same_pool = (
            session_id is None
            and exclude_session_id is None
            and element_id == expected_element
            and k >= self.settings.anomaly_k
        )
        scores = self._anomaly_scores(embeddings, expected_element, rows if same_pool else None)
        keys = np.array(sorted({n.key for row in rows for n in row}), dtype=np.int64)
        described = self.index.describe(keys)
        try:
            metadata: dict[int, dict] | None = self.store.metadata(keys.tolist())
        except StoreUnavailable:
            metadata = None
        threshold = self.settings.anomaly_threshold
        results = []
        for row, score in zip(rows, scores, strict=True):
            neighbors = [
                NeighborResult(
                    *described[n.key],
                    similarity=n.similarity,
                    metadata=None if metadata is None else metadata.get(n.key, {}),
                )
                for n in row
                if n.key in described
            ]
            anomaly = None
            if not np.isnan(score):
                anomaly = AnomalyResult(
                    float(score),
                    bool(score > threshold),
                    threshold,
                    expected_element or "all references",
                )
            results.append(SearchResult(neighbors, vote(neighbors), anomaly))
        return results

    def _anomaly_scores(
        self, queries: np.ndarray, pool: str | None, neighbors: list[list[Neighbor]] | None
    ) -> np.ndarray:
        """Calibrated scores in [0, 1]; NaN when there is nothing to calibrate against (or the
        calibration must be made while the database is unreachable)."""
        try:
            calibrated = self.sync.calibrated(pool)
        except StoreUnavailable:
            return np.full(len(queries), np.nan)
        if len(calibrated) == 0:
            return np.full(len(queries), np.nan)
        if neighbors is None:
            neighbors = self.index.search(queries, self.settings.anomaly_k, element_id=pool)
        similarities = [[n.similarity for n in row] for row in neighbors]
        return self.sync.calibration.scores(calibrated, similarities)

    # -- operations --------------------------------------------------------------------------
    async def status(self) -> ReadyStatus:
        sync = self.sync.status()
        stored = None  # not asked while the database is known to be down: a probe must not wait
        if sync.database == "ok":
            try:
                stored = await run_in_threadpool(self.store.count)
            except StoreUnavailable:
                pass
        return ReadyStatus(
            ready=self.ready,
            references=len(self.index),
            stored=stored,
            model_version=self.runtime.version,
            engine=self.runtime.engine,
            index=self.index.current_kind,
            inference_workers=self.batcher.workers,
            database="ok" if stored is not None else "unreachable",
            degraded=stored is None,
            sync=sync,
            served_by=SERVED_BY,
        )


def vote(neighbors: list[NeighborResult]) -> PredictedElement | None:
    """kNN vote weighted by similarity (shifted to be positive): the element and its share."""
    if not neighbors:
        return None
    weights: dict[str, float] = {}
    for n in neighbors:
        weights[n.element_id] = weights.get(n.element_id, 0.0) + (1.0 + n.similarity) / 2
    element = max(weights, key=weights.get)
    return PredictedElement(element, weights[element] / sum(weights.values()))
