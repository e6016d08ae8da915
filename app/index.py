"""FAISS search over reference embeddings, kept in step with the store.

Index types: ``flat`` (exact inner product on unit vectors), ``ivf`` (inverted lists: the query
scans the ``ivf_nprobe`` lists nearest to it), ``hnsw`` (a graph; cannot remove, so every
replacement or deletion rebuilds it), and ``auto``, the default: flat up to
``auto_approximate_above`` references, IVF past it. FAISS ids are the store's keys.

The index keeps, per reference, only its key and integer codes of its element and session (in
numpy arrays: about 16 bytes a reference), enough for filters and calibration; the ids and names
of the few neighbours a search returns are read from the store.

Anomaly scores are calibrated on the references themselves: each reference's leave-one-out
distance (1 - mean cosine similarity to its ``anomaly_k`` nearest other references) forms an
empirical distribution, and a query's score is the share of references whose distance is below
the query's. At threshold 0.99 about 1% of the references would be flagged.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from app.store import Labels

log = logging.getLogger(__name__)

# Batched exact search skips BLAS below this many queries x vectors by default (128000 in
# faiss 1.15), which made 64-query batches ~10x slower; use BLAS from a handful of queries.
faiss.cvar.distance_compute_blas_threshold = 20

CALIBRATION_SAMPLE = 2000  # references whose leave-one-out distance calibrates anomaly scores
IVF_TRAINING_PER_LIST = 40  # k-means sample per inverted list (FAISS warns below 39)
SNAPSHOT_FORMAT = 2  # bump when what a snapshot holds changes: older ones are rebuilt

IVF_MIN_REFERENCES = 1000  # fewer: an exact scan is as fast, and k-means has too little to learn
IVF_REGROW = 4  # retrain (rebuild) an IVF index once it holds this many times nlist² vectors

# keys (N,) int64 -> (the keys the store still holds, their embeddings (n, D) float32)
VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Neighbor:
    key: int
    similarity: float


class _Codes:
    """Names <-> dense integer codes, for elements or sessions."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = list(names)
        self.codes: dict[str, int] = {name: code for code, name in enumerate(self.names)}

    def code(self, name: str) -> int:
        """The name's code, made if new."""
        if name not in self.codes:
            self.codes[name] = len(self.names)
            self.names.append(name)
        return self.codes[name]


def unwrapped(index: faiss.Index) -> faiss.Index:
    """The index that searches: flat and HNSW sit inside an id map, IVF keeps ids itself."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def kind_of(index: faiss.Index) -> str:
    """flat, ivf or hnsw: what an index built here (or read from a snapshot) is."""
    inner = unwrapped(index)
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


class VectorIndex:
    """Thread-safe FAISS index + compact labels + anomaly calibration."""

    def __init__(
        self,
        dim: int,
        kind: str,
        vectors_of: VectorSource,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ivf_nprobe: int = 32,
        auto_approximate_above: int = 200_000,
        anomaly_k: int = 3,
    ) -> None:
        self.dim, self.kind, self.vectors_of = dim, kind, vectors_of
        self.hnsw_m, self.ef_search, self.ivf_nprobe = hnsw_m, ef_search, ivf_nprobe
        self.auto_approximate_above, self.anomaly_k = auto_approximate_above, anomaly_k
        self.lock = threading.RLock()
        self.set_labels(Labels.empty())
        self.index = self._new_index(self._resolved_kind(0))
        self._set_search_breadth()
        self._calibration: dict[str | None, np.ndarray] = {}  # element (None: all) -> distances
        self._writes_since_global = 0

    # -- labels: sorted keys and, in step, element and session codes --------------------------
    def set_labels(self, labels: Labels) -> None:
        with self.lock:
            order = np.argsort(labels.keys, kind="stable")
            self.keys = labels.keys[order]
            self.element_of = labels.element_codes[order]
            self.session_of = labels.session_codes[order]
            self.elements = _Codes(labels.element_names)
            self.sessions = _Codes(labels.session_names)

    def _positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where ``keys`` sit in ``self.keys``, and which of them are there."""
        at = np.searchsorted(self.keys, keys)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == keys[found]
        return at, found

    def _label(self, keys: np.ndarray, refs: list) -> None:
        """Set the labels of ``keys`` (existing ones change in place, new ones are added)."""
        elements = np.array([self.elements.code(r.element_id) for r in refs], dtype=np.int32)
        sessions = np.array([self.sessions.code(r.session_id) for r in refs], dtype=np.int32)
        at, found = self._positions(keys)
        self.element_of[at[found]] = elements[found]
        self.session_of[at[found]] = sessions[found]
        new, kept = ~found, len(self.keys)
        self.keys = np.concatenate([self.keys, keys[new]])
        self.element_of = np.concatenate([self.element_of, elements[new]])
        self.session_of = np.concatenate([self.session_of, sessions[new]])
        if (np.diff(self.keys[max(0, kept - 1) :]) < 0).any():  # the appended part out of order
            order = np.argsort(self.keys, kind="stable")  # keys are AUTOINCREMENT: rarely needed
            self.keys, self.element_of = self.keys[order], self.element_of[order]
            self.session_of = self.session_of[order]

    def has_element(self, element_id: str) -> bool:
        code = self.elements.codes.get(element_id)
        return code is not None and bool((self.element_of == code).any())

    def _keys_where(self, codes: _Codes, of: np.ndarray, name: str) -> np.ndarray:
        code = codes.codes.get(name)
        return self.keys[of == code] if code is not None else self.keys[:0]

    # -- building ----------------------------------------------------------------------------
    @property
    def _approximate_above(self) -> int:
        """Past this many references ``auto`` and ``ivf`` use IVF (below: exact search)."""
        if self.kind == "auto":
            return max(self.auto_approximate_above, IVF_MIN_REFERENCES)
        return IVF_MIN_REFERENCES

    def _resolved_kind(self, n: int) -> str:
        if self.kind in ("auto", "ivf"):
            return "ivf" if n > self._approximate_above else "flat"
        return self.kind

    def _needs_rebuild(self, n: int, index: faiss.Index | None = None) -> bool:
        """Whether ``index`` (the current one by default) is the wrong type for ``n``
        references, or an IVF index that has outgrown its lists (about sqrt(n) of them)."""
        index = self.index if index is None else index
        kind, wanted = kind_of(index), self._resolved_kind(n)
        if kind == "ivf" and wanted == "flat" and self.kind in ("auto", "ivf"):
            # An IVF index stays until the set shrinks to half the threshold: a size hovering
            # at the threshold must not rebuild on every write.
            return n <= self._approximate_above // 2
        if kind != wanted:
            return True
        return kind == "ivf" and n > IVF_REGROW * faiss.extract_index_ivf(index).nlist ** 2

    @property
    def current_kind(self) -> str:
        return kind_of(self.index)

    def _new_index(self, kind: str, n: int = 0) -> faiss.Index:
        """An empty index of ``kind``; IVF is trained on a sample of the stored references."""
        if kind == "ivf":
            lists = max(1, min(int(math.sqrt(n)), n // IVF_TRAINING_PER_LIST))
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, lists, faiss.METRIC_INNER_PRODUCT
            )
            sample = self.keys
            if len(sample) > lists * IVF_TRAINING_PER_LIST:
                rng = np.random.default_rng(0)
                sample = np.sort(rng.choice(sample, lists * IVF_TRAINING_PER_LIST, replace=False))
            _, vectors = self.vectors_of(sample)
            index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            return index  # IVF stores the ids itself
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap(inner)

    def rebuild(self, labels: Labels, chunks) -> None:
        """Replace everything from the store: labels, and (keys, embeddings) chunks."""
        with self.lock:
            self.set_labels(labels)
            self.index = self._new_index(self._resolved_kind(len(labels.keys)), len(labels.keys))
            for keys, embeddings in chunks:
                self.index.add_with_ids(np.ascontiguousarray(embeddings), keys)
            self._set_search_breadth()
            self._calibration = {}

    def _set_search_breadth(self) -> None:
        inner = unwrapped(self.index)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = min(self.ivf_nprobe, inner.nlist)
        elif isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self.ef_search

    # -- updates (the caller has committed them to the store first) --------------------------
    def upsert(self, keys: list[int], refs: list, embeddings: np.ndarray) -> bool:
        """Add or replace; False when the caller must rebuild instead: the index cannot remove
        (HNSW), or the new size calls for another type or a retrained IVF."""
        with self.lock:
            key_array = np.array(keys, dtype=np.int64)
            _, found = self._positions(key_array)
            if self._needs_rebuild(len(self.keys) + int((~found).sum())):
                return False
            if found.any():
                if self.current_kind == "hnsw":
                    return False
                self.index.remove_ids(key_array[found])
            touched = {r.element_id for r in refs} | self._element_names(key_array[found])
            self._label(key_array, refs)
            self.index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), key_array)
            self._recalibrate(touched, len(keys))
            return True

    def remove(self, key: int) -> bool:
        with self.lock:
            at, found = self._positions(np.array([key], dtype=np.int64))
            if not found[0]:
                return True
            if self.current_kind == "hnsw":
                return False
            self.index.remove_ids(np.array([key], dtype=np.int64))
            self._recalibrate({self.elements.names[self.element_of[at[0]]]}, 1)
            self.keys = np.delete(self.keys, at[0])
            self.element_of = np.delete(self.element_of, at[0])
            self.session_of = np.delete(self.session_of, at[0])
            return True

    # -- search ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.index.ntotal

    def _params(self, allowed: np.ndarray | None, excluded: np.ndarray | None, nprobe: int):
        if allowed is None and excluded is None:
            return None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        else:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
        kind = self.current_kind
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
        elif kind == "ivf":
            # A filter to an element or session may have nothing in the nearest lists: scan
            # them all (the selector is checked before any distance, so this stays cheap).
            nprobe = self.index.nlist if allowed is not None else nprobe
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
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
            allowed: np.ndarray | None = None
            if element_id is not None:
                allowed = self._keys_where(self.elements, self.element_of, element_id)
            if session_id is not None:
                in_session = self._keys_where(self.sessions, self.session_of, session_id)
                allowed = in_session if allowed is None else np.intersect1d(allowed, in_session)
            excluded = None
            if exclude_session_id is not None:
                excluded = self._keys_where(self.sessions, self.session_of, exclude_session_id)
                if allowed is not None:
                    allowed, excluded = np.setdiff1d(allowed, excluded), None
                elif not len(excluded):
                    excluded = None
            if len(self) == 0 or (allowed is not None and not len(allowed)):
                return [[] for _ in queries]
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            k = min(k, len(self))
            nprobe = getattr(self.index, "nprobe", 0)
            params = self._params(allowed, excluded, nprobe)
            sims, keys = self.index.search(queries, k, params=params)
            if excluded is not None and self.current_kind == "ivf":
                # The lists nearest a query may hold little but the excluded session: probe
                # more of them until every query has what is there to find.
                eligible = min(k, len(self) - len(excluded))
                while (keys[:, :eligible] < 0).any() and nprobe < self.index.nlist:
                    nprobe = min(self.index.nlist, 2 * nprobe)
                    params = self._params(None, excluded, nprobe)
                    sims, keys = self.index.search(queries, k, params=params)
            return [
                [
                    Neighbor(int(key), float(sim))
                    for sim, key in zip(row_s, row_k, strict=True)
                    if key >= 0
                ]
                for row_s, row_k in zip(sims, keys, strict=True)
            ]

    # -- anomaly calibration -----------------------------------------------------------------
    def _element_names(self, keys: np.ndarray) -> set[str]:
        at, found = self._positions(keys)
        return {self.elements.names[code] for code in self.element_of[at[found]].tolist()}

    def _recalibrate(self, elements: set[str], writes: int) -> None:
        """After a write: the touched elements' calibrations are redone at their next use; the
        global one only once the writes since it passed 1% of the references (it is a sample
        of CALIBRATION_SAMPLE of them, which a few writes hardly move, and costs about a second
        at a million), or always while it covers every reference."""
        for element in elements:
            self._calibration.pop(element, None)
        self._writes_since_global += writes
        if len(self) <= CALIBRATION_SAMPLE or self._writes_since_global > 0.01 * len(self):
            self._calibration.pop(None, None)

    def calibration(self, element_id: str | None) -> np.ndarray:
        """Sorted leave-one-out distances of (a sample of) the references (of ``element_id``)."""
        with self.lock:
            if element_id in self._calibration:
                return self._calibration[element_id]
            pool = (
                self._keys_where(self.elements, self.element_of, element_id)
                if element_id is not None
                else self.keys
            )
            if len(pool) < 2:
                distances = np.array([], dtype=np.float64)
            else:
                sample = pool
                if len(sample) > CALIBRATION_SAMPLE:
                    rng = np.random.default_rng(0)
                    sample = np.sort(rng.choice(sample, CALIBRATION_SAMPLE, replace=False))
                k = min(self.anomaly_k, len(pool) - 1)
                sample, vectors = self.vectors_of(sample)  # less any deleted meanwhile
                rows = self.search(vectors, k + 1, element_id=element_id)
                distances = np.sort(
                    [
                        1.0 - np.mean([n.similarity for n in row if n.key != key][:k])
                        for key, row in zip(sample.tolist(), rows, strict=True)
                    ]
                )
            self._calibration[element_id] = distances
            if element_id is None:
                self._writes_since_global = 0
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
    def _snapshot_meta(self, generation: int, model_version: str, count: int, kind: str) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "generation": generation,
            "model_version": model_version,
            "count": count,
            "kind": kind,
        }

    def save(self, path, generation: int, model_version: str) -> None:
        with self.lock:
            tmp = path.with_suffix(".tmp")
            faiss.write_index(self.index, str(tmp))
            tmp.replace(path)
            meta = self._snapshot_meta(generation, model_version, len(self), self.current_kind)
            path.with_suffix(".json").write_text(json.dumps(meta))

    def load(self, path, labels: Labels, generation: int, model_version: str) -> bool:
        """Load a snapshot if it was made at this store generation, of the index type this
        size calls for; False if stale or broken."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return False
        count = len(labels.keys)
        try:
            meta = json.loads(meta_path.read_text())
            expected = self._snapshot_meta(generation, model_version, count, meta.get("kind"))
            if meta != expected:
                log.info("index snapshot is stale (%s, store at %s): rebuilding", meta, expected)
                return False
            index = faiss.read_index(str(path))
            if index.ntotal != count or index.d != self.dim:
                raise ValueError(f"snapshot holds {index.ntotal} vectors of dim {index.d}")
            if self._needs_rebuild(count, index):
                kind = kind_of(index)
                log.info("a %s snapshot does not suit %d references: rebuilding", kind, count)
                return False
        except Exception as exc:  # a truncated or corrupt file: FAISS raises RuntimeError
            log.warning("index snapshot %s unusable (%s): rebuilding from the store", path, exc)
            return False
        with self.lock:
            self.set_labels(labels)
            self.index = index
            self._set_search_breadth()
            self._calibration = {}
        return True
