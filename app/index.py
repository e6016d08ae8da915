"""FAISS search over reference embeddings, kept in step with the store.

Exact inner product on unit vectors (``flat``) by default; ``hnsw`` (or ``auto`` past a size) for
large sets. FAISS ids are the store's keys. Labels (id, element, session per key) live in memory so
filters and the element vote need no database round trip.

Anomaly scores are calibrated on the references themselves: each reference's leave-one-out
distance (1 - mean cosine similarity to its ``anomaly_k`` nearest other references) forms an
empirical distribution, and a query's score is the share of references whose distance is below
the query's. At threshold 0.99 about 1% of the references would be flagged.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from app.store import Labels

log = logging.getLogger(__name__)

# Batched exact search skips BLAS below this many queries x vectors by default (128000 in
# faiss 1.15), which made 64-query batches ~10x slower; use BLAS from a handful of queries.
faiss.cvar.distance_compute_blas_threshold = 20

CALIBRATION_SAMPLE = 2000  # references whose leave-one-out distance calibrates anomaly scores


@dataclass
class Neighbor:
    key: int
    id: str
    element_id: str
    session_id: str
    similarity: float


class VectorIndex:
    """Thread-safe FAISS index + in-memory labels + anomaly calibration."""

    def __init__(
        self,
        dim: int,
        kind: str,
        hnsw_m: int = 32,
        ef_search: int = 128,
        auto_hnsw_above: int = 200_000,
        anomaly_k: int = 3,
    ) -> None:
        self.dim, self.kind, self.hnsw_m, self.ef_search = dim, kind, hnsw_m, ef_search
        self.auto_hnsw_above, self.anomaly_k = auto_hnsw_above, anomaly_k
        self.lock = threading.RLock()
        self.labels: dict[int, tuple[str, str, str]] = {}  # key -> (id, element, session)
        self.by_element: dict[str, set[int]] = {}
        self.by_session: dict[str, set[int]] = {}
        self.index = self._new_index(0)
        self._calibration: dict[str | None, np.ndarray] = {}

    # -- building ----------------------------------------------------------------------------
    def _resolved_kind(self, n: int) -> str:
        if self.kind == "auto":
            return "hnsw" if n > self.auto_hnsw_above else "flat"
        return self.kind

    def _new_index(self, n: int) -> faiss.Index:
        if self._resolved_kind(n) == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @property
    def supports_removal(self) -> bool:
        return isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlat)

    def set_labels(self, labels: Labels) -> None:
        with self.lock:
            self.labels, self.by_element, self.by_session = {}, {}, {}
            for key, ref_id, element, session in zip(
                labels.keys.tolist(),
                labels.ids,
                labels.element_ids,
                labels.session_ids,
                strict=True,
            ):
                self._label(key, ref_id, element, session)

    def _label(self, key: int, ref_id: str, element: str, session: str) -> None:
        self.labels[key] = (ref_id, element, session)
        self.by_element.setdefault(element, set()).add(key)
        self.by_session.setdefault(session, set()).add(key)

    def _unlabel(self, key: int) -> None:
        _, element, session = self.labels.pop(key)
        for groups, name in ((self.by_element, element), (self.by_session, session)):
            groups[name].discard(key)
            if not groups[name]:
                del groups[name]

    def rebuild(self, labels: Labels, chunks) -> None:
        """Replace everything from the store: labels, and (keys, embeddings) chunks."""
        with self.lock:
            self.set_labels(labels)
            self.index = self._new_index(len(labels.keys))
            for keys, embeddings in chunks:
                self.index.add_with_ids(np.ascontiguousarray(embeddings), keys)
            self._calibration = {}

    # -- updates (the caller has committed them to the store first) --------------------------
    def upsert(self, keys: list[int], refs: list, embeddings: np.ndarray) -> bool:
        """Add or replace; returns False when the index type cannot remove (caller rebuilds)."""
        with self.lock:
            replaced = [k for k in keys if k in self.labels]
            if replaced and not self.supports_removal:
                return False
            if replaced:
                self.index.remove_ids(np.array(replaced, dtype=np.int64))
                for k in replaced:
                    self._unlabel(k)
            for key, ref in zip(keys, refs, strict=True):
                self._label(key, ref.id, ref.element_id, ref.session_id)
            self.index.add_with_ids(
                np.ascontiguousarray(embeddings, dtype=np.float32), np.array(keys, dtype=np.int64)
            )
            self._calibration = {}
            return True

    def remove(self, key: int) -> bool:
        with self.lock:
            if key not in self.labels:
                return True
            if not self.supports_removal:
                return False
            self.index.remove_ids(np.array([key], dtype=np.int64))
            self._unlabel(key)
            self._calibration = {}
            return True

    # -- search ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.index.ntotal

    def _params(self, allowed: set[int] | None, excluded: set[int] | None):
        if allowed is None and not excluded:
            return None
        if allowed is not None:
            allowed = allowed - (excluded or set())
            selector = faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64))
        else:
            selector = faiss.IDSelectorNot(
                faiss.IDSelectorBatch(np.fromiter(excluded, dtype=np.int64))
            )
        if not self.supports_removal:  # HNSW
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
        else:
            params = faiss.SearchParameters(sel=selector)
        params._keep = selector  # the parameters hold a raw pointer: keep the selector alive
        return params

    def search(
        self,
        queries: np.ndarray,
        k: int,
        element_id: str | None = None,
        session_id: str | None = None,
        exclude_session_id: str | None = None,
    ) -> list[list[Neighbor]]:
        """Top-k neighbours per query (N, D), optionally restricted; fewer when fewer match."""
        with self.lock:
            allowed: set[int] | None = None
            if element_id is not None:
                allowed = set(self.by_element.get(element_id, ()))
            if session_id is not None:
                in_session = self.by_session.get(session_id, set())
                allowed = in_session if allowed is None else allowed & in_session
            excluded = self.by_session.get(exclude_session_id) if exclude_session_id else None
            if len(self) == 0 or (allowed is not None and not allowed):
                return [[] for _ in queries]
            params = self._params(allowed, excluded)
            sims, keys = self.index.search(
                np.ascontiguousarray(queries, dtype=np.float32),
                min(k, len(self)),
                params=params,
            )
            return [
                [
                    Neighbor(int(key), *self.labels[int(key)], float(sim))
                    for sim, key in zip(row_s, row_k, strict=True)
                    if key >= 0
                ]
                for row_s, row_k in zip(sims, keys, strict=True)
            ]

    # -- anomaly calibration -----------------------------------------------------------------

    def calibration(self, element_id: str | None) -> np.ndarray:
        """Sorted leave-one-out distances of (a sample of) the references (of ``element_id``)."""
        with self.lock:
            if element_id in self._calibration:
                return self._calibration[element_id]
            pool = sorted(self.by_element.get(element_id, ()) if element_id else self.labels)
            if len(pool) < 2:
                distances = np.array([], dtype=np.float64)
            else:
                rng = np.random.default_rng(0)
                sample = np.array(pool, dtype=np.int64)
                if len(sample) > CALIBRATION_SAMPLE:
                    sample = rng.choice(sample, CALIBRATION_SAMPLE, replace=False)
                vectors = np.stack([self.index.reconstruct(int(k)) for k in sample])
                k = min(self.anomaly_k, len(pool) - 1)
                rows = self.search(vectors, k + 1, element_id=element_id)
                distances = np.sort(
                    [
                        1.0 - np.mean([n.similarity for n in row if n.key != key][:k])
                        for key, row in zip(sample.tolist(), rows, strict=True)
                    ]
                )
            self._calibration[element_id] = distances
            return distances

    def anomaly_scores(
        self,
        queries: np.ndarray,
        element_id: str | None,
        neighbors: list[list[Neighbor]] | None = None,
    ) -> np.ndarray:
        """Calibrated scores in [0, 1]; NaN when there is nothing to calibrate against.

        A query's distance is 1 - mean similarity to its ``anomaly_k`` nearest references (of
        ``element_id``). ``neighbors``: the queries' nearest references from that same pool, at
        least ``anomaly_k`` deep, when the caller already searched it (saves a search).
        """
        reference = self.calibration(element_id)
        if len(reference) == 0:
            return np.full(len(queries), np.nan)
        if neighbors is None:
            neighbors = self.search(queries, self.anomaly_k, element_id=element_id)
        distances = np.array(
            [
                1.0 - np.mean([n.similarity for n in row[: self.anomaly_k]]) if row else np.nan
                for row in neighbors
            ]
        )
        return np.searchsorted(reference, distances, side="left") / len(reference)

    # -- snapshots ---------------------------------------------------------------------------
    def save(self, path: Path, generation: int, model_version: str) -> None:
        with self.lock:
            tmp = path.with_suffix(".tmp")
            faiss.write_index(self.index, str(tmp))
            tmp.replace(path)
            meta = {
                "generation": generation,
                "model_version": model_version,
                "count": len(self),
                "kind": self.kind,
            }
            path.with_suffix(".json").write_text(json.dumps(meta))

    def load(self, path: Path, labels: Labels, generation: int, model_version: str) -> bool:
        """Load a snapshot if it was made at this store generation; False if stale or broken."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            expected = {
                "generation": generation,
                "model_version": model_version,
                "count": len(labels.keys),
                "kind": self.kind,
            }
            if meta != expected:
                log.info("index snapshot is stale (%s, store at %s): rebuilding", meta, expected)
                return False
            index = faiss.read_index(str(path))
            if index.ntotal != len(labels.keys) or index.d != self.dim:
                raise ValueError(f"snapshot holds {index.ntotal} vectors of dim {index.d}")
        except Exception as exc:  # a truncated or corrupt file: FAISS raises RuntimeError
            log.warning("index snapshot %s unusable (%s): rebuilding from the store", path, exc)
            return False
        with self.lock:
            self.set_labels(labels)
            self.index = index
            self._calibration = {}
        return True
