"""The service's state and operations: model, batcher, store and index working together.

Writes go store first (committed: acknowledged), index second, under one write lock, so the index
never holds what the store does not. Start-up re-embeds references made by another model, then
loads the index snapshot if it matches the store's generation, or rebuilds it from the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.errors import InputError
from app.index import VectorIndex
from app.observability import Metrics
from app.runtime import DynamicBatcher, Inference, ModelRuntime
from app.settings import Settings
from app.signals import SignalBatch
from app.store import NewReference, ReferenceStore

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
DB_FILE = "references.sqlite3"


@dataclass
class ReferenceInput:
    element_id: str
    session_id: str
    signal: np.ndarray  # (C, L)
    id: str | None = None
    metadata: dict | None = None


class SignalService:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime = ModelRuntime(
            settings.model_dir, settings.max_batch, settings.threads, settings.engine
        )
        self.batcher = DynamicBatcher(
            self.runtime,
            enabled=settings.dynamic_batching,
            max_signals=settings.batch_max_signals,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observe=metrics.observe_inference,
            workers=settings.workers,
        )
        log.info(
            "%d inference worker(s) x %d thread(s), dynamic batching %s",
            settings.workers,
            settings.threads,
            "on" if settings.dynamic_batching else "off",
        )
        self.store = ReferenceStore(settings.data_dir / DB_FILE)
        self.index = VectorIndex(
            self.runtime.dim,
            settings.index_type,
            vectors_of=self.store.embeddings,
            hnsw_m=settings.hnsw_m,
            ef_search=settings.hnsw_ef_search,
            ivf_nprobe=settings.ivf_nprobe,
            auto_approximate_above=settings.auto_approximate_above,
            anomaly_k=settings.anomaly_k,
        )
        self.write_lock = asyncio.Lock()
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.batcher.start()
        await self._reembed_stale()
        await run_in_threadpool(self._load_or_rebuild_index)
        self.metrics.index_size.set(len(self.index))
        # Everything loaded so far (torch, ONNX Runtime, the app) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise took ~100 ms each under
        # load and stalled every request in flight.
        gc.collect()  # what is garbage now would otherwise never be collected
        gc.freeze()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        async with self.write_lock:
            await run_in_threadpool(self._save_snapshot)
        self.store.close()

    def _save_snapshot(self) -> None:
        self.index.save(
            self.settings.data_dir / INDEX_FILE, self.store.generation(), self.runtime.version
        )

    def _load_or_rebuild_index(self) -> None:
        started = time.perf_counter()
        labels = self.store.labels()
        generation = self.store.generation()
        path = self.settings.data_dir / INDEX_FILE
        if self.index.load(path, labels, generation, self.runtime.version):
            log.info(
                "loaded index snapshot: %d references in %.2fs",
                len(self.index),
                time.perf_counter() - started,
            )
            return
        self.index.rebuild(labels, self.store.iter_embeddings())
        log.info(
            "rebuilt index from the store: %d references in %.2fs",
            len(self.index),
            time.perf_counter() - started,
        )
        self._save_snapshot()

    async def _reembed_stale(self) -> None:
        """References embedded by another model get this model's embeddings before serving."""
        stale = await run_in_threadpool(self.store.count_stale, self.runtime.version)
        if not stale:
            return
        log.info("re-embedding %d references made by another model", stale)
        done, started = 0, time.perf_counter()
        for rows in self.store.iter_stale_signals(self.runtime.version):
            keys = [k for k, _ in rows]
            inference = await self.embed([s[None] for _, s in rows])
            await run_in_threadpool(
                self.store.update_embeddings, keys, inference.embeddings, self.runtime.version
            )
            done += len(rows)
            log.info(
                "re-embedded %d/%d references (%.0f%%, %.1fs)",
                done,
                stale,
                100 * done / stale,
                time.perf_counter() - started,
            )

    # -- inference ---------------------------------------------------------------------------
    async def embed(self, batch: SignalBatch) -> Inference:
        return await self.batcher.infer(batch)

    # -- references --------------------------------------------------------------------------
    async def upsert(self, refs: list[ReferenceInput]) -> list[str]:
        """Store references, in order: an id given twice ends as its last version. Returns
        each reference's id (new ones are made up)."""
        ids = [r.id or uuid.uuid4().hex for r in refs]
        last = sorted({ref_id: n for n, ref_id in enumerate(ids)}.values())
        kept = [refs[n] for n in last]
        inference = await self.embed([r.signal[None] for r in kept])
        rows = [
            NewReference(ids[n], r.element_id, r.session_id, r.metadata or {}, r.signal, e)
            for n, r, e in zip(last, kept, inference.embeddings, strict=True)
        ]
        async with self.write_lock:
            keys = await run_in_threadpool(self.store.upsert, rows, self.runtime.version)
            done = await run_in_threadpool(self.index.upsert, keys, rows, inference.embeddings)
            if not done:  # an index that cannot remove (HNSW): rebuild from the store
                await run_in_threadpool(self._rebuild)
        self.metrics.index_size.set(len(self.index))
        return ids

    async def delete(self, ref_id: str) -> bool:
        async with self.write_lock:
            key = await run_in_threadpool(self.store.delete, ref_id)
            if key is None:
                return False
            if not await run_in_threadpool(self.index.remove, key):
                await run_in_threadpool(self._rebuild)
        self.metrics.index_size.set(len(self.index))
        return True

    def _rebuild(self) -> None:
        self.index.rebuild(self.store.labels(), self.store.iter_embeddings())

    # -- search ------------------------------------------------------------------------------
    async def search(
        self,
        batch: SignalBatch,
        k: int,
        element_id: str | None = None,
        session_id: str | None = None,
        exclude_session_id: str | None = None,
        expected_element: str | None = None,
    ) -> list[dict]:
        if expected_element is not None and not self.index.has_element(expected_element):
            raise InputError(
                "expected_element",
                f"no references of element {expected_element!r}",
                status=404,
                kind="not_found",
            )
        embeddings = (await self.embed(batch)).embeddings
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
    ) -> list[dict]:
        rows = self.index.search(embeddings, k, element_id, session_id, exclude_session_id)
        # The neighbours serve the anomaly score too when they came from the same pool.
        same_pool = (
            session_id is None
            and exclude_session_id is None
            and element_id == expected_element
            and k >= self.settings.anomaly_k
        )
        scores = self.index.anomaly_scores(
            embeddings, expected_element, neighbors=rows if same_pool else None
        )
        described = self.store.describe(sorted({n.key for row in rows for n in row}))
        threshold = self.settings.anomaly_threshold
        results = []
        for row, score in zip(rows, scores, strict=True):
            # Names come from the store as committed now: a write racing this search may have
            # moved a neighbour to another element since the index filtered it; it is shown as
            # it now is, and a deleted one is left out.
            neighbors = []
            for n in row:
                if n.key not in described:
                    continue
                ref_id, element_id, session_id, metadata = described[n.key]
                neighbors.append(
                    {
                        "id": ref_id,
                        "element_id": element_id,
                        "session_id": session_id,
                        "similarity": n.similarity,
                        "metadata": metadata,
                    }
                )
            results.append(
                {
                    "neighbors": neighbors,
                    "predicted_element": vote(neighbors),
                    "anomaly": None
                    if np.isnan(score)
                    else {
                        "score": float(score),
                        "is_anomaly": bool(score > threshold),
                        "threshold": threshold,
                        "calibrated_on": expected_element or "all references",
                    },
                }
            )
        return results


def vote(neighbors: list[dict]) -> dict | None:
    """kNN vote weighted by similarity (shifted to be positive): the element and its share."""
    if not neighbors:
        return None
    weights: dict[str, float] = {}
    for n in neighbors:
        weights[n["element_id"]] = weights.get(n["element_id"], 0.0) + (1.0 + n["similarity"]) / 2
    element = max(weights, key=weights.get)
    return {"element_id": element, "confidence": weights[element] / sum(weights.values())}
