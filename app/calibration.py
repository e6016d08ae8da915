"""Scores calibrated on the references themselves: anomaly scores, and the cache that keeps them
and the drift and verification calibrations (:class:`FittedCache`).

A sample of references gives each its leave-one-out distance (1 - mean cosine similarity to its
``k`` nearest other references); a query's score is the share of those distances below its own.
At threshold 0.99 about 1% of the references would be flagged. Beyond the largest sampled
distance the share is extrapolated by an exponential tail (see :meth:`AnomalyCalibration.scores`),
so far queries stay ordered by how far they are.

Two calibrations, matching the two questions: without an expected element a query is compared
with all references, so each sampled reference is too; with one ("is this normal for X?") the
query is compared with X's references, so each sampled reference with its own element's. Both
are one distribution over every element, not one per element: a per-element share throws away
how far a signal is (past the element's few dozen references every query scores about 1), and
on the QT Database's cross-validated records it ranked abnormal beats worse than the plain
distance did (pooled AUROC .852 against .953; BENCHMARKS.md, "Real ECG, cross-validated, round
2"). The caller gives the vectors and the searches: this module never reads the store or the
index itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np

CALIBRATION_SAMPLE = 2000  # references whose leave-one-out distances calibrate the scores
REFIT_SHARE = 0.01  # a calibration over sampled references is refitted once this share changed
TAIL_SHARE = 0.1  # the largest tenth of the sampled distances sets the scale of the tail

# (keys (n,), their vectors (n, D), k) -> per key the (key, similarity) of its k nearest
# references among those it is compared with (all, or its own element's)
NeighbourSearch = Callable[[np.ndarray, np.ndarray, int], list[list[tuple[int, float]]]]
# keys (n,) -> (the keys that still have a vector, those vectors (m, D))
VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def distance(similarities: list[float]) -> float:
    """A query's anomaly distance from its nearest references' similarities."""
    return 1.0 - float(np.mean(similarities)) if similarities else float("nan")


class Calibration(Protocol):
    """What the change log drops: :class:`app.sync.IndexSync` calls these as it applies it."""

    def invalidate(self, elements: set[str], writes: int, total: int) -> None: ...

    def clear(self) -> None: ...


Fitted = TypeVar("Fitted")


class FittedCache(Generic[Fitted]):
    """Calibrations fitted on a sample of all references, one per key (a setting such as a
    baseline size), fitted once at a time per key and dropped once the writes since the fit
    pass REFIT_SHARE of the references, or at any write while there are at most ``small`` of
    them (then the sample is every reference). Thread-safe."""

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


class AnomalyCalibration:
    """Sorted leave-one-out distances of sampled references, one set per question (compared
    within their element or with all references), fitted lazily and dropped as
    :class:`FittedCache` drops its fits. Thread-safe."""

    def __init__(self, k: int, sample: int = CALIBRATION_SAMPLE) -> None:
        self.k, self.sample_size = k, sample
        self._fits: FittedCache[np.ndarray] = FittedCache(small=sample)

    def sample(self, keys: np.ndarray) -> np.ndarray:
        """The keys whose distances calibrate (all of them up to the sample size)."""
        if len(keys) <= self.sample_size:
            return keys
        rng = np.random.default_rng(0)
        return np.sort(rng.choice(keys, self.sample_size, replace=False))

    def calibrated(
        self,
        within_element: bool,
        keys: Callable[[], np.ndarray],
        vectors_of: VectorSource,
        search: NeighbourSearch,
    ) -> np.ndarray:
        """The sorted distances: cached, or fitted now on a sample of ``keys()`` (every
        reference's key) with the caller's ``vectors_of`` and ``search`` (asked only when
        fitting: a search's hot path must not copy every key). Concurrent misses wait for one
        fit: 64 connections each fitting 2,000 leave-one-out searches stalled a 1e5 index."""
        return self._fits.get(
            within_element, lambda: self.fit(*vectors_of(self.sample(keys())), search)
        )

    def fit(self, keys: np.ndarray, vectors: np.ndarray, search: NeighbourSearch) -> np.ndarray:
        """Sorted leave-one-out distances of the references ``keys`` with ``vectors``; a
        reference with no other to compare with (alone in its element) has none."""
        if len(keys) < 2:
            return np.array([], dtype=np.float64)
        rows = search(keys, vectors, self.k + 1)
        distances = np.array(
            [
                distance([sim for other, sim in row if other != key][: self.k])
                for key, row in zip(keys.tolist(), rows, strict=True)
            ]
        )
        return np.sort(distances[~np.isnan(distances)])

    def invalidate(self, elements: set[str], writes: int, total: int) -> None:
        self._fits.invalidate(elements, writes, total)

    def clear(self) -> None:
        self._fits.clear()

    def scores(self, calibrated: np.ndarray, similarities: list[list[float]]) -> np.ndarray:
        """Calibrated scores in [0, 1] from each query's nearest similarities; NaN when there
        is nothing to calibrate against.

        A score is the share of the sampled distances below the query's. Beyond the largest one
        that share would be 1 for every query however far, tying the clear anomalies; instead
        the tail is taken as exponential, its scale the mean excess of the top tenth over that
        tenth's smallest: ``1 - exp(-(d - max) / scale) / n``, continuous with the share at the
        largest distance."""
        n = len(calibrated)
        if n == 0:
            return np.full(len(similarities), np.nan)
        distances = np.array([distance(row[: self.k]) for row in similarities])
        shares = np.searchsorted(calibrated, distances, side="left") / n
        beyond = distances > calibrated[-1]
        if beyond.any():
            top = calibrated[int((1 - TAIL_SHARE) * n) :]
            scale = max(float(np.mean(top - top[0])), 1e-9)
            excess = (distances[beyond] - calibrated[-1]) / scale
            shares[beyond] = 1 - np.exp(-excess) / n
        return shares
