"""The in-memory search index: a vector backend, the labels of its references, and snapshots.

It is given rows and never reads the store: :class:`app.sync.IndexSync` owns keeping it in step
with the store (through the change log) and decides when to rebuild it. Thread-safe.

A snapshot is one file (written to a temporary name, then renamed): the serialised FAISS index,
the labels, and the change-log sequence and model version they reflect, so several processes
saving into one data directory never mix their parts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ann import FlatBackend, HNSWBackend, IVFBackend, VectorBackend, set_search_threads
from app.index_policy import CurrentIndex, IndexKind, IndexPolicy
from app.labels import Filters, IndexRows, LabelTable

log = logging.getLogger(__name__)

NO_FILTERS = Filters()
SNAPSHOT_FORMAT = 3  # bump when what a snapshot holds changes: older ones are rebuilt


@dataclass
class Hit:
    """One reference a search found: its key in the index and its cosine similarity."""

    key: int
    similarity: float


@dataclass
class Snapshot:
    seq: int  # the last change-log entry the snapshot reflects
    references: int


class VectorIndex:
    def __init__(
        self,
        dim: int,
        policy: IndexPolicy,
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
        search_threads: int = 1,
    ) -> None:
        self.dim, self.policy, self.search_threads = dim, policy, search_threads
        self.ivf_nprobe, self.hnsw_m, self.ef_search = ivf_nprobe, hnsw_m, ef_search
        self.lock = threading.RLock()
        self.labels = LabelTable()
        self.backend: VectorBackend = self._empty(policy.kind_for(0))

    def __len__(self) -> int:
        return len(self.backend)

    @property
    def current_kind(self) -> str:
        return self.backend.kind

    def _current(self) -> CurrentIndex:
        lists = self.backend.lists if isinstance(self.backend, IVFBackend) else 0
        return CurrentIndex(self.backend.kind, lists)

    def _empty(
        self, kind: IndexKind, n: int = 0, sample: np.ndarray | None = None
    ) -> VectorBackend:
        if kind == "hnsw":
            return HNSWBackend.empty(self.dim, self.hnsw_m, self.ef_search)
        if kind == "ivf":
            assert sample is not None, "an IVF index is trained on a sample"
            return IVFBackend.trained(sample, n, self.ivf_nprobe)
        return FlatBackend.empty(self.dim)

    # -- updates -----------------------------------------------------------------------------
    def apply(self, rows: IndexRows, removed: np.ndarray) -> bool:
        """Adds or replaces ``rows`` and removes the keys ``removed``. False (and nothing
        changed) when the caller must rebuild instead: the backend cannot remove, or the new
        size calls for another index type."""
        with self.lock:
            _, replaced = self.labels.positions(rows.keys)
            _, held = self.labels.positions(removed)
            size = len(self.labels) + int((~replaced).sum()) - int(held.sum())
            if self.policy.needs_rebuild(size, self._current()):
                return False
            existing = np.concatenate([rows.keys[replaced], removed[held]])
            if not self.backend.remove(existing):
                return False
            self.labels.remove(removed)
            self.labels.set(rows)
            self.backend.add(rows.keys, rows.vectors)
            return True

    def rebuild(
        self, n: int, chunks: Iterable[IndexRows], sample_of: Callable[[int], np.ndarray]
    ) -> None:
        """Replaces everything with ``chunks`` (about ``n`` references). An index type that is
        trained (IVF) asks ``sample_of(size)`` for that many stored vectors first."""
        kind = self.policy.kind_for(n)
        sample = sample_of(IVFBackend.sample_size(n)) if kind == "ivf" else None
        backend = self._empty(kind, n, sample)
        labels = LabelTable()
        for chunk in chunks:
            labels.set(chunk)
            backend.add(chunk.keys, chunk.vectors)
        with self.lock:
            self.labels, self.backend = labels, backend

    def suits_its_size(self) -> bool:
        with self.lock:
            return not self.policy.needs_rebuild(len(self), self._current())

    # -- reads -------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: Filters = NO_FILTERS,
    ) -> list[list[Hit]]:
        """Top-k neighbours per query (N, D), optionally restricted; fewer when fewer match."""
        with self.lock:
            selection = self.labels.selection(filters)
            if len(self) == 0 or selection.is_empty:
                return [[] for _ in queries]
            set_search_threads(self.search_threads)  # this thread's: searches come from many
            sims, keys = self.backend.search(queries, min(k, len(self)), selection)
        return [
            [Hit(int(key), float(sim)) for sim, key in zip(row_s, row_k, strict=True) if key >= 0]
            for row_s, row_k in zip(sims, keys, strict=True)
        ]

    def describe(self, keys: np.ndarray) -> dict[int, tuple[str, str, str]]:
        with self.lock:
            return self.labels.describe(keys)

    def has_element(self, element_id: str) -> bool:
        with self.lock:
            return self.labels.has_element(element_id)

    def keys_of_element(self, element_id: str | None) -> np.ndarray:
        with self.lock:
            return self.labels.keys_of_element(element_id).copy()

    def session_counts(self) -> dict[str, int]:
        with self.lock:
            return self.labels.session_counts()

    def sessions_of_element(self, element_id: str) -> dict[str, np.ndarray]:
        with self.lock:
            return self.labels.sessions_of_element(element_id)

    def memory_bytes(self) -> int:
        with self.lock:
            return self.backend.memory_bytes()

    # -- snapshots ---------------------------------------------------------------------------
    def save(self, path: Path, seq: int, model_version: str, epoch: int) -> None:
        """Writes a snapshot of what the index holds: ``seq`` the change log's entry it
        reflects, of the database ``epoch`` (app.store.ReferenceStore.epoch)."""
        with self.lock:
            meta = {
                "format": SNAPSHOT_FORMAT,
                "seq": seq,
                "model_version": model_version,
                "epoch": epoch,
            }
            arrays = {
                **self.labels.to_arrays(),
                "faiss": self.backend.serialize(),
                "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    def load(self, path: Path, model_version: str, epoch: int) -> Snapshot | None:
        """Loads a snapshot made by this model of this database (``epoch``); None (and the
        index unchanged) when there is none, or it is of another model, database or format,
        or broken."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as arrays:
                meta = json.loads(arrays["meta"].tobytes())
                if meta.get("format") != SNAPSHOT_FORMAT or meta["model_version"] != model_version:
                    log.info("index snapshot is of another model or format: rebuilding")
                    return None
                if meta.get("epoch") != epoch:
                    log.info("index snapshot is of another database (a restore?): rebuilding")
                    return None
                labels = LabelTable.from_arrays(arrays)
                backend = VectorBackend.deserialize(
                    arrays["faiss"], self.ivf_nprobe, self.ef_search
                )
            if len(backend) != len(labels) or backend.dim != self.dim:
                raise ValueError(
                    f"{len(backend)} vectors of dim {backend.dim}, {len(labels)} labels"
                )
        except Exception as exc:  # a truncated or corrupt file
            log.warning("index snapshot %s unusable (%s): rebuilding from the store", path, exc)
            return None
        with self.lock:
            self.labels, self.backend = labels, backend
        return Snapshot(int(meta["seq"]), len(backend))
