"""Scores calibrated on the references themselves: anomaly scores, and the cache that keeps the
drift and verification calibrations (:class:`FittedCache`).

Each reference's leave-one-out distance (1 - mean cosine similarity to its ``k`` nearest other
references) forms an empirical distribution; a query's score is the share of references whose
distance is below the query's. At threshold 0.99 about 1% of the references would be flagged.
A calibration is made per pool: all references (``None``), or one element's. The caller gives
the vectors and a search over the pool: this module never reads the store or the index itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np

CALIBRATION_SAMPLE = 2000  # references whose leave-one-out distance calibrates a pool
REFIT_SHARE = 0.01  # a calibration over sampled references is refitted once this share changed

# (queries (n, D), k) -> per query the (key, similarity) of its k nearest references of the pool
PoolSearch = Callable[[np.ndarray, int], list[list[tuple[int, float]]]]
# keys (n,) -> (the keys that still have a vector, those vectors (m, D))
VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def distance(similarities: list[float]) -> float:
    """A query's anomaly distance from its nearest references' similarities."""
    return 1.0 - float(np.mean(similarities)) if similarities else float("nan")


class AnomalyCalibration:
    """Sorted leave-one-out distances per pool, made lazily and dropped when the change log
    touches the pool. Thread-safe."""

    def __init__(self, k: int, sample: int = CALIBRATION_SAMPLE) -> None:
        self.k, self.sample_size = k, sample
        self._lock = threading.Lock()
        self._pools: dict[str | None, np.ndarray] = {}
        self._fitting: dict[str | None, threading.Lock] = {}  # one fit per pool at a time
        self._epoch = 0  # bumped by every invalidation: a fit that raced one is not kept
        self._writes_since_global = 0

    def sample(self, pool_keys: np.ndarray) -> np.ndarray:
        """The keys whose distances calibrate a pool (all of them up to the sample size)."""
        if len(pool_keys) <= self.sample_size:
            return pool_keys
        rng = np.random.default_rng(0)
        return np.sort(rng.choice(pool_keys, self.sample_size, replace=False))

    def cached(self, pool: str | None) -> np.ndarray | None:
        with self._lock:
            return self._pools.get(pool)

    def calibrated(
        self,
        pool: str | None,
        pool_keys: Callable[[], np.ndarray],
        vectors_of: VectorSource,
        search: PoolSearch,
    ) -> np.ndarray:
        """The pool's calibration: cached, or fitted now on a sample of ``pool_keys()`` whose
        vectors the caller's ``vectors_of`` gives (both asked only when fitting: a search's
        hot path must not copy every key)."""
        cached = self.cached(pool)
        if cached is not None:
            return cached
        with self._lock:
            fitting = self._fitting.setdefault(pool, threading.Lock())
        # Concurrent searches that miss the cache wait for one fit instead of each making their
        # own: 64 connections each fitting 2,000 leave-one-out searches stalled a 1e5 index.
        with fitting:
            cached = self.cached(pool)
            if cached is not None:
                return cached
            keys, vectors = vectors_of(self.sample(pool_keys()))
            return self.fit(pool, keys, vectors, search)

    def fit(
        self, pool: str | None, keys: np.ndarray, vectors: np.ndarray, search: PoolSearch
    ) -> np.ndarray:
        """Calibrates ``pool`` from the sampled references ``keys`` and their ``vectors``."""
        with self._lock:
            epoch = self._epoch
        if len(keys) < 2:
            distances = np.array([], dtype=np.float64)
        else:
            k = min(self.k, len(keys) - 1)
            rows = search(vectors, k + 1)
            distances = np.sort(
                [
                    distance([sim for other, sim in row if other != key][:k])
                    for key, row in zip(keys.tolist(), rows, strict=True)
                ]
            )
        with self._lock:
            if epoch == self._epoch:
                self._pools[pool] = distances
                if pool is None:
                    self._writes_since_global = 0
        return distances

    def invalidate(self, elements: set[str], writes: int, total: int) -> None:
        """After ``writes`` changes to ``elements``' references: their calibrations are redone
        at the next use; the global one only once the writes since it passed 1% of the
        references (a sample of CALIBRATION_SAMPLE, which a few writes hardly move, costing
        about a second at a million), or always while it covers every reference."""
        with self._lock:
            self._epoch += 1
            for element in elements:
                self._pools.pop(element, None)
            self._writes_since_global += writes
            if total <= self.sample_size or self._writes_since_global > REFIT_SHARE * total:
                self._pools.pop(None, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._pools.clear()

    def scores(self, calibrated: np.ndarray, similarities: list[list[float]]) -> np.ndarray:
        """Calibrated scores in [0, 1] from each query's nearest similarities in the pool; NaN
        when the pool has nothing to calibrate against."""
        if len(calibrated) == 0:
            return np.full(len(similarities), np.nan)
        distances = np.array([distance(row[: self.k]) for row in similarities])
        return np.searchsorted(calibrated, distances, side="left") / len(calibrated)


class Calibration(Protocol):
    """What the change log drops: :class:`app.sync.IndexSync` calls these as it applies it."""

    def invalidate(self, elements: set[str], writes: int, total: int) -> None: ...

    def clear(self) -> None: ...


Fitted = TypeVar("Fitted")


class FittedCache(Generic[Fitted]):
    """Calibrations fitted on a sample of all references, one per key (a setting such as a
    baseline size), fitted once at a time per key and dropped like the anomaly calibration's
    global pool: once the writes since the fit pass REFIT_SHARE of the references, or at any
    write while there are at most ``small`` of them. Thread-safe."""

    def __init__(self, small: int = CALIBRATION_SAMPLE) -> None:
        self.small = small
        self._lock = threading.Lock()
        self._fitted: dict[object, Fitted] = {}
        self._fitting: dict[object, threading.Lock] = {}
        self._epoch = 0
        self._writes = 0

    def get(self, key: object, fit: Callable[[], Fitted]) -> Fitted:
        with self._lock:
            if key in self._fitted:
                return self._fitted[key]
            fitting = self._fitting.setdefault(key, threading.Lock())
        with fitting:  # concurrent misses wait for one fit
            with self._lock:
                if key in self._fitted:
                    return self._fitted[key]
                epoch = self._epoch
            value = fit()
            with self._lock:
                if epoch == self._epoch:  # no write dropped the cache while this fitted
                    self._fitted[key] = value
            return value

    def invalidate(self, elements: set[str], writes: int, total: int) -> None:
        """After ``writes`` changes (``elements`` unused: every fit covers all of them)."""
        with self._lock:
            self._writes += writes
            if total <= self.small or self._writes > REFIT_SHARE * total:
                self._clear()

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._epoch += 1
        self._writes = 0
        self._fitted.clear()
