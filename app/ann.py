"""Vector index backends behind one small interface: exact (flat), IVF and HNSW over FAISS.

Vectors are unit embeddings searched by inner product (cosine similarity); FAISS ids are the
store's keys. Which backend suits how many references is :mod:`app.index_policy`'s decision.
"""

from __future__ import annotations

import math
from abc import ABC
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from app.labels import Selection

# Batched exact search skips BLAS below this many queries x vectors by default (128000 in
# faiss 1.15), which made 64-query batches ~10x slower; use BLAS from a handful of queries.
faiss.cvar.distance_compute_blas_threshold = 20

IVF_TRAINING_PER_LIST = 40  # k-means sample per inverted list (FAISS warns below 39)


def set_search_threads(threads: int) -> None:
    """OpenMP threads of FAISS calls made by the calling thread (OpenMP keeps the setting per
    thread: set it on the thread that searches). A server runs many searches at once, one per
    request: FAISS's own threads then only contend. Measured at 1e5 references under 64
    connections: 1 thread 413 searches/s, all cores 309; two worker processes 780 against 419."""
    faiss.omp_set_num_threads(threads)


class VectorBackend(ABC):
    """A FAISS index of (key, unit vector) pairs. Not thread-safe: its owner holds a lock."""

    kind: ClassVar[str]

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(keys, dtype=np.int64)
        )

    def remove(self, keys: np.ndarray) -> bool:
        """Removes ``keys`` (absent ones are ignored); False when this backend cannot remove
        and must be rebuilt instead."""
        if len(keys):
            self.index.remove_ids(np.asarray(keys, dtype=np.int64))
        return True

    def search(
        self, queries: np.ndarray, k: int, selection: Selection
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, keys), each (Q, k); key -1 where fewer than k are eligible."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, k, params=self._params(selection))

    def _params(self, selection: Selection, **breadth) -> faiss.SearchParameters | None:
        if selection.allowed is None and selection.excluded is None:
            return None
        memo_key = tuple(sorted(breadth.items()))
        if selection.memo is not None and memo_key in selection.memo:
            return selection.memo[memo_key]
        if selection.allowed is not None:
            selector = faiss.IDSelectorBatch(selection.allowed)
        else:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(selection.excluded))
        params = self._parameters_class()(sel=selector, **breadth)
        params._keep = selector  # the parameters hold a raw pointer: keep the selector alive
        if selection.memo is not None:
            selection.memo[memo_key] = params
        return params

    def _parameters_class(self) -> type:
        return faiss.SearchParameters

    def memory_bytes(self) -> int:
        """What the index holds in memory, counted from its sizes (its float32 vectors and
        int64 ids; subclasses add their structure) without copying it: probes ask often."""
        return self.index.ntotal * (4 * self.index.d + 8)

    def mapped_bytes(self) -> int:
        """What it reads from its file through the page cache, shared by every process that
        maps it."""
        return 0

    def write(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @staticmethod
    def read(path: Path, ivf_nprobe: int, ef_search: int) -> VectorBackend:
        """The backend of an index file written by any backend's ``write``. Its arrays (an
        IVF index's lists, a flat index's vectors) stay in the file, mapped: every process on a
        machine shares one copy through the page cache instead of holding its own.
        ``IO_FLAG_MMAP_IFC`` maps them as plain arrays; ``IO_FLAG_MMAP`` would read an IVF
        index's lists as OnDiskInvertedLists, measured 17x slower a query (1.04 against 0.066
        ms, 30,000 vectors, nprobe 32)."""
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if isinstance(inner, faiss.IndexIVFPQ):
            return IVFPQBackend(inner, ivf_nprobe)
        if isinstance(inner, faiss.IndexIVF):
            return IVFBackend(inner, ivf_nprobe)
        if isinstance(inner, faiss.IndexHNSW):
            return HNSWBackend(index, ef_search)
        return FlatBackend(index)

    @property
    def compressed(self) -> bool:
        """Whether its similarities are approximate (codes, not the vectors): a shortlist is
        then rescored from the vectors."""
        return False


class FlatBackend(VectorBackend):
    """Exact search: every query scans every vector."""

    kind = "flat"

    @classmethod
    def empty(cls, dim: int) -> FlatBackend:
        return cls(faiss.IndexIDMap(faiss.IndexFlatIP(dim)))


class HNSWBackend(VectorBackend):
    """A graph: fast approximate search, but FAISS cannot remove from it."""

    kind = "hnsw"

    def __init__(self, index: faiss.Index, ef_search: int) -> None:
        super().__init__(index)
        self.set_breadth(ef_search)

    def set_breadth(self, ef_search: int) -> None:
        """Candidates kept while walking the graph: recall against speed."""
        self.ef_search = ef_search
        faiss.downcast_index(self.index.index).hnsw.efSearch = ef_search

    @classmethod
    def empty(cls, dim: int, m: int, ef_search: int) -> HNSWBackend:
        return cls(
            faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)), ef_search
        )

    def remove(self, keys: np.ndarray) -> bool:
        return not len(keys)

    def memory_bytes(self) -> int:
        hnsw = faiss.downcast_index(self.index.index).hnsw
        return super().memory_bytes() + 4 * hnsw.neighbors.size() + 8 * hnsw.offsets.size()

    def _params(self, selection: Selection, **breadth) -> faiss.SearchParameters | None:
        return super()._params(selection, efSearch=self.ef_search)

    def _parameters_class(self) -> type:
        return faiss.SearchParametersHNSW


class IVFBackend(VectorBackend):
    """Inverted lists (about sqrt(N) of them, k-means trained) of float vectors: a query scans
    the ``nprobe`` lists nearest to it."""

    kind = "ivf"

    def __init__(self, index: faiss.IndexIVF, nprobe: int) -> None:
        super().__init__(index)
        self.set_breadth(nprobe)

    def set_breadth(self, nprobe: int) -> None:
        """Lists one query scans: recall against speed."""
        self.nprobe = min(nprobe, self.index.nlist)
        self.index.nprobe = self.nprobe

    @property
    def lists(self) -> int:
        return self.index.nlist

    def memory_bytes(self) -> int:
        """The centroids (and a product quantizer's codebooks); the lists are in the file,
        mapped, once the index has been written and read back (``mapped_bytes``)."""
        return 4 * self.index.nlist * self.index.d + self._codebook_bytes()

    def mapped_bytes(self) -> int:
        return self.index.ntotal * (self.index.code_size + 8)

    def _codebook_bytes(self) -> int:
        return 0

    @staticmethod
    def lists_for(n: int) -> int:
        return max(1, min(int(math.sqrt(n)), n // IVF_TRAINING_PER_LIST))

    @staticmethod
    def sample_size(n: int) -> int:
        """Vectors the k-means of an index for ``n`` references is trained on."""
        return IVFBackend.lists_for(n) * IVF_TRAINING_PER_LIST

    @classmethod
    def trained(cls, sample: np.ndarray, n: int, nprobe: int) -> IVFBackend:
        """An empty index for ``n`` references whose lists are k-means of ``sample`` (at most
        ``sample_size(n)`` of its vectors are used)."""
        dim, lists = sample.shape[1], cls.lists_for(n)
        index = cls._untrained(dim, lists)
        index.train(np.ascontiguousarray(sample[: cls.sample_size(n)], np.float32))
        return cls(index, nprobe)

    @staticmethod
    def _untrained(dim: int, lists: int) -> faiss.IndexIVF:
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)

    def search(
        self, queries: np.ndarray, k: int, selection: Selection
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if selection.allowed is not None:
            # A filter to an element or session may have nothing in the nearest lists: scan
            # them all (the selector is checked before any distance, so this stays cheap).
            return self.index.search(queries, k, params=self._params(selection, nprobe=self.lists))
        nprobe = self.nprobe
        sims, keys = self.index.search(queries, k, params=self._params(selection, nprobe=nprobe))
        if selection.excluded is not None:
            # The lists nearest a query may hold little but the excluded session: probe more of
            # them until every query has what is there to find.
            eligible = min(k, len(self) - len(selection.excluded))
            while (keys[:, :eligible] < 0).any() and nprobe < self.lists:
                nprobe = min(self.lists, 2 * nprobe)
                params = self._params(selection, nprobe=nprobe)
                sims, keys = self.index.search(queries, k, params=params)
        return sims, keys

    def _params(self, selection: Selection, **breadth) -> faiss.SearchParameters | None:
        params = super()._params(selection, **breadth)
        if params is None and breadth.get("nprobe", self.nprobe) != self.nprobe:
            params = faiss.SearchParametersIVF(nprobe=breadth["nprobe"])
        return params

    def _parameters_class(self) -> type:
        return faiss.SearchParametersIVF


class IVFPQBackend(IVFBackend):
    """Inverted lists of product-quantised codes, a byte per 4 dimensions (32 bytes for a
    128-d vector against 512): similarities are approximate, so the index's owner rescores a
    shortlist from the float vectors (``compressed``)."""

    kind = "ivfpq"

    @property
    def compressed(self) -> bool:
        return True

    @staticmethod
    def sample_size(n: int) -> int:
        # k-means of the lists as IVF's, and the 256 centroids of each sub-quantiser want
        # about 40 vectors each (FAISS warns below 39)
        return max(IVFBackend.sample_size(n), min(n, 256 * IVF_TRAINING_PER_LIST))

    @staticmethod
    def _untrained(dim: int, lists: int) -> faiss.IndexIVF:
        return faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, lists, pq_bytes(dim), 8, faiss.METRIC_INNER_PRODUCT
        )

    def _codebook_bytes(self) -> int:
        return 4 * 256 * self.index.d


def pq_bytes(dim: int) -> int:
    """Sub-quantisers (bytes a code) for ``dim`` dimensions: a byte per 4 dimensions, or the
    nearest count below that divides ``dim``."""
    return next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)
