"""A collection's search index: one large immutable segment, a small mutable one, tombstones.

- The large segment (:class:`app.segments.Segment`) is built from the store in the background and
  memory-mapped: every process of a machine shares one copy of its files. A compressed index
  (``ivfpq``) answers a shortlist of ``RESCORE_FACTOR`` x k, rescored exactly from the segment's
  float vectors.
- The mutable segment holds every reference written since that build, in this process's memory,
  searched exactly.
- Tombstones are the large segment's keys deleted or replaced since: filtered out of its
  searches, purged by the next build.

It is given rows and segments and never reads the store: :class:`app.sync.IndexSync` owns keeping
it in step with the store (through the change log) and decides when a segment is built.
Thread-safe: a search never waits for a build, only for the swap of one (a few pointers).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ann import FlatBackend, IVFBackend, set_search_threads
from app.index_policy import CurrentIndex, IndexPolicy
from app.labels import Filters, IndexRows, LabelTable, Selection, selection_of
from app.schemas import SegmentsStatus
from app.segments import BuildParameters, Segment, SegmentFolder, pair_codes

NO_FILTERS = Filters()
# A compressed index's shortlist: k x this many, rescored exactly. Measured on 1e6 clustered
# 128-d vectors (BENCHMARKS.md "Ten million references"): recall@10 0.636 from the codes alone,
# 0.986 with a 4x shortlist, 0.9993 with 10x (IVF on float vectors: 0.9993), at 0.44 ms a query.
RESCORE_FACTOR = 10
# A search filtered to at most this many of the large segment's references (an element, a
# session) scans their float vectors exactly instead of the index with a selector (which visits
# every list: 3.5 ms at 1e6 for one element of 50).
EXACT_WITHIN = 20_000


@dataclass
class Hit:
    """One reference a search found: its key in the index and its cosine similarity."""

    key: int
    similarity: float


class VectorIndex:
    def __init__(self, dim: int, policy: IndexPolicy, search_threads: int = 1) -> None:
        self.dim, self.policy, self.search_threads = dim, policy, search_threads
        self.lock = threading.RLock()
        self.base: Segment | None = None
        self.mutable = LabelTable()
        self.mutable_vectors = FlatBackend.empty(dim)
        self.tombstones = np.zeros(0, np.int64)  # sorted keys of the base's not to return
        self._tombstoned = Selection()  # the selection hiding them (its FAISS selector kept)

    def __len__(self) -> int:
        with self.lock:
            base = len(self.base) - len(self.tombstones) if self.base is not None else 0
            return base + len(self.mutable)

    @property
    def current_kind(self) -> str:
        """The large segment's index type (``flat`` before the first one)."""
        return self.base.kind if self.base is not None else "flat"

    def current(self) -> CurrentIndex:
        base = self.base
        if base is None:
            return CurrentIndex(None)
        lists = base.backend.lists if isinstance(base.backend, IVFBackend) else 0
        return CurrentIndex(base.kind, lists, len(base))  # type: ignore[arg-type]

    # -- updates -----------------------------------------------------------------------------
    def apply(self, rows: IndexRows, removed: np.ndarray) -> None:
        """Adds or replaces ``rows`` and removes the keys ``removed``: into the mutable segment,
        and the large segment's copies of them tombstoned."""
        removed = np.asarray(removed, dtype=np.int64)
        with self.lock:
            gone = np.concatenate([rows.keys[self.mutable.positions(rows.keys)[1]], removed])
            self.mutable_vectors.remove(gone)
            self.mutable.remove(removed)
            self.mutable.set(rows)
            self.mutable_vectors.add(rows.keys, rows.vectors)
            if self.base is not None:
                touched = np.concatenate([np.asarray(rows.keys, np.int64), removed])
                held = touched[self.base.positions(touched)[1]]
                if len(np.setdiff1d(held, self.tombstones, assume_unique=True)):
                    self._set_tombstones(np.union1d(self.tombstones, held))

    def adopt(self, segment: Segment, touched: np.ndarray | None) -> None:
        """Serves ``segment`` as the large segment. ``touched``: the keys of the change-log
        entries after the segment's that this process has applied (their state is in the
        mutable segment, or they are deleted); None when this process had not reached the
        segment's entry (the segment holds everything it had)."""
        with self.lock:
            if touched is None or not len(touched):
                self.mutable, self.mutable_vectors = LabelTable(), FlatBackend.empty(self.dim)
                self._set_tombstones(np.zeros(0, np.int64))
            else:
                touched = np.unique(np.asarray(touched, dtype=np.int64))
                stale = np.setdiff1d(self.mutable.keys, touched, assume_unique=True)
                self.mutable.remove(stale)
                self.mutable_vectors.remove(stale)
                self._set_tombstones(touched[segment.positions(touched)[1]])
            self.base = segment

    def _set_tombstones(self, tombstones: np.ndarray) -> None:
        self.tombstones = tombstones
        self._tombstoned = Selection(excluded=tombstones if len(tombstones) else None, memo={})

    def wants_build(self) -> bool:
        with self.lock:
            return self.policy.wants_build(
                len(self), self.current(), len(self.mutable), len(self.tombstones)
            )

    # -- reads -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, filters: Filters = NO_FILTERS) -> list[list[Hit]]:
        """Top-k neighbours per query (N, D), optionally restricted; fewer when fewer match.
        The mutable segment is searched under the lock (it changes); the large one after it,
        concurrently with other searches and writes (it never changes, and the tombstones are
        replaced, never changed in place)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        set_search_threads(self.search_threads)  # this thread's: searches come from many
        found_s, found_k = (
            [np.zeros((len(queries), 0), np.float32)],
            [np.zeros((len(queries), 0), np.int64)],
        )
        with self.lock:
            base, tombstones, tombstoned = self.base, self.tombstones, self._tombstoned
            selection = self.mutable.selection(filters)
            if len(self.mutable) and not selection.is_empty:
                sims, keys = self.mutable_vectors.search(
                    queries, min(k, len(self.mutable)), selection
                )
                found_s.append(sims)
                found_k.append(keys)
        if base is not None and len(base):
            sims, keys = _search_large(base, tombstones, tombstoned, queries, k, filters)
            found_s.append(sims)
            found_k.append(keys)
        sims, keys = np.concatenate(found_s, axis=1), np.concatenate(found_k, axis=1)
        sims = np.where(keys >= 0, sims, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        sims, keys = np.take_along_axis(sims, order, 1), np.take_along_axis(keys, order, 1)
        return [
            [Hit(int(key), float(sim)) for sim, key in zip(row_s, row_k, strict=True) if key >= 0]
            for row_s, row_k in zip(sims, keys, strict=True)
        ]

    def describe(self, keys: np.ndarray) -> dict[int, tuple[str, str, str]]:
        keys = np.asarray(keys, dtype=np.int64)
        with self.lock:
            described = self.mutable.describe(keys)
            rest = np.array([key for key in keys.tolist() if key not in described], np.int64)
            if self.base is not None and len(rest):
                rest = np.setdiff1d(rest, self.tombstones)
                at, found = self.base.positions(rest)
                at = at[found]
                ids = self.base.ids.at(at)
                elements = self.base.elements.at(self.base.element_of[at])
                sessions = self.base.sessions.at(self.base.session_of[at])
                for key, ref_id, element, session in zip(
                    rest[found].tolist(), ids, elements, sessions, strict=True
                ):
                    described[key] = (ref_id, element, session)
            return described

    def has_element(self, element_id: str) -> bool:
        with self.lock:
            return bool(len(self._element_keys(element_id, first_only=True)))

    def keys_of_element(self, element_id: str | None) -> np.ndarray:
        """The element's keys, ascending; every key for None."""
        with self.lock:
            return self._element_keys(element_id)

    def _element_keys(self, element_id: str | None, first_only: bool = False) -> np.ndarray:
        mutable = self.mutable.keys_of_element(element_id)
        if first_only and len(mutable):
            return mutable[:1]
        if self.base is None:
            return mutable.copy()
        if element_id is None:  # every key: no sort of the large segment's (10^7: ~1 s)
            live = np.ones(len(self.base), bool)
            live[self.base.positions(self.tombstones)[0]] = False
            base = self.base.keys[live]
        else:
            base = self.base.keys_of_element(element_id)
            base = base[~np.isin(base, self.tombstones, assume_unique=True)]
        # disjoint (the large segment's copies of mutable keys are tombstones); mostly ordered
        return np.sort(np.concatenate([base, mutable]), kind="stable")

    def session_counts(self) -> dict[str, int]:
        """element -> how many sessions it has references in, for every element that has any.
        The large segment's from its stored pairs (a tombstoned reference is taken off its
        pair's count), counted with numpy: 10^7 references hold ~10^6 pairs."""
        with self.lock:
            result: dict[str, int] = {}
            live: set[tuple[int, int]] = set()
            base = self.base
            if base is not None and len(base.pairs):
                codes = pair_codes(base.pairs[:, 0], base.pairs[:, 1])
                counts = base.pairs[:, 2].copy()
                if len(self.tombstones):  # the pairs whose every reference is tombstoned go
                    at, _ = base.positions(self.tombstones)
                    joined = pair_codes(base.element_of[at], base.session_of[at])
                    np.subtract.at(counts, np.searchsorted(codes, joined), 1)
                kept = counts > 0
                per_element = np.bincount(base.pairs[kept, 0], minlength=len(base.elements))
                present = np.flatnonzero(per_element)
                result = dict(
                    zip(base.elements.at(present), per_element[present].tolist(), strict=True)
                )
                live = set(codes[kept].tolist())
            table = self.mutable
            pairs = {
                (table.elements.names[e], table.sessions.names[s])
                for e, s in zip(table.element_of.tolist(), table.session_of.tolist(), strict=True)
            }
            for element, session in pairs:  # a session not in the large segment adds one
                if base is not None:
                    e, s = base.elements.find(element), base.sessions.find(session)
                    if e is not None and s is not None and int(pair_codes(e, s)) in live:
                        continue
                result[element] = result.get(element, 0) + 1
            return result

    def sessions_of_element(self, element_id: str) -> dict[str, np.ndarray]:
        """session name -> its keys, for one element's references."""
        with self.lock:
            keys = self._element_keys(element_id)
            described = self.describe(keys)
        sessions: dict[str, list[int]] = {}
        for key in keys.tolist():
            sessions.setdefault(described[key][2], []).append(key)
        return {name: np.array(ks, np.int64) for name, ks in sessions.items()}

    # -- what it holds -----------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """This process's own memory: the mutable segment (vectors, labels), the tombstones
        and the large segment's in-memory part; its mapped files are ``status().mapped_bytes``."""
        with self.lock:
            mutable = self.mutable_vectors.memory_bytes() + 16 * len(self.mutable)
            base = self.base.memory_bytes() if self.base is not None else 0
            return mutable + 8 * len(self.tombstones) + base

    def status(self, building: bool) -> SegmentsStatus:
        with self.lock:
            base = self.base
            return SegmentsStatus(
                large_references=len(base) if base is not None else 0,
                large_seq=base.seq if base is not None else None,
                large_built_at=base.meta["built_at"] if base is not None else None,
                mutable_references=len(self.mutable),
                tombstones=len(self.tombstones),
                building=building,
                memory_bytes=self.memory_bytes(),
                mapped_bytes=base.mapped_bytes() if base is not None else 0,
                disk_bytes=base.disk_bytes() if base is not None else 0,
            )


def _search_large(
    base: Segment,
    tombstones: np.ndarray,
    tombstoned: Selection,
    queries: np.ndarray,
    k: int,
    filters: Filters,
) -> tuple[np.ndarray, np.ndarray]:
    """The large segment's top-k (keys -1 padded): ``tombstoned`` is the selection hiding the
    tombstones alone, its FAISS selector built once for every search until they change."""
    chosen = selection_of(filters, base.keys_of_element, base.keys_of_session)
    allowed, excluded = chosen.allowed, chosen.excluded
    if allowed is not None:
        allowed = np.setdiff1d(allowed, tombstones, assume_unique=True)
        if len(allowed) <= EXACT_WITHIN:
            return _exact(base, allowed, queries, k)
        selection = Selection(allowed=allowed)
    elif excluded is not None:
        selection = Selection(excluded=np.union1d(excluded, tombstones))
    else:
        selection = tombstoned
    if not base.backend.compressed:
        return base.backend.search(queries, k, selection)
    _, short = base.backend.search(queries, RESCORE_FACTOR * k, selection)
    return _rescored(base, short, queries, k)


def _exact(
    base: Segment, keys: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among ``keys`` (of the large segment) from its float vectors."""
    if not len(keys):
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    at, _ = base.positions(keys)
    sims = queries @ np.asarray(base.vectors[at]).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), keys[order]


def _rescored(
    base: Segment, short: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of each query's shortlist (keys, -1 padded) by exact similarity."""
    sims = np.full(short.shape, -np.inf, np.float32)
    valid = short >= 0
    if valid.any():
        at, _ = base.positions(short[valid])
        rows = np.nonzero(valid)[0]
        vectors = np.asarray(base.vectors[at])
        sims[valid] = np.einsum("nd,nd->n", vectors, queries[rows])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    keys = np.take_along_axis(np.where(valid, short, -1), order, 1)
    return np.take_along_axis(sims, order, 1), keys


def index_of(
    rows: IndexRows,
    policy: IndexPolicy,
    folder: Path,
    params: BuildParameters | None = None,
    seed: int = 0,
) -> VectorIndex:
    """An index of ``rows`` (ascending keys) as the service serves one: a large segment of the
    type ``policy`` gives their number, written into ``folder`` and mapped. For evaluations and
    benchmarks that hold the vectors already (a trained type samples them with ``seed``)."""
    dim = rows.vectors.shape[1]
    segments = SegmentFolder(folder, params or BuildParameters(dim))
    order = np.random.default_rng(seed).permutation(len(rows.keys))
    path = segments.build(
        policy.kind_for(len(rows.keys)),
        0,
        len(rows.keys),
        [rows],
        lambda size: rows.vectors[order[:size]],
        "local",
        0,
    )
    index = VectorIndex(dim, policy)
    index.adopt(Segment.open(path, "local", 0, segments.params), None)
    return index
