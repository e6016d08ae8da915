"""Anomaly scores: how unlike the references a signal is, calibrated on the references.

A sample of references gives each its leave-one-out distance (1 - mean cosine similarity to its
``k`` nearest other references); a query's score is the share of those distances below its own
(:class:`app.calibration.EmpiricalCDF`, with its exponential tail beyond the largest sampled
distance, so far queries stay ordered by how far they are). At threshold 0.99 about 1% of the
references would be flagged.

Two calibrations, matching the two questions: without an expected element a query is compared
with all references, so each sampled reference is too; with one ("is this normal for X?") the
query is compared with X's references, so each sampled reference with its own element's. Both
are one distribution over every element, not one per element: a per-element share throws away
how far a signal is (past the element's few dozen references every query scores about 1), and
on the QT Database's cross-validated records it ranked abnormal beats worse than the plain
distance did (pooled AUROC .852 against .953; BENCHMARKS.md, "Real ECG, cross-validated, round
2"). The caller gives the vectors and the searches (:func:`neighbour_search` over an index).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.calibration import CALIBRATION_SAMPLE, EmpiricalCDF, seeded_sample
from app.index import VectorIndex
from app.labels import Filters

# (keys (n,), their vectors (n, D), k) -> per key the (key, similarity) of its k nearest
# references among those it is compared with (all, or its own element's)
NeighbourSearch = Callable[[np.ndarray, np.ndarray, int], list[list[tuple[int, float]]]]


def distance(similarities: list[float]) -> float:
    """A query's anomaly distance from its nearest references' similarities."""
    return 1.0 - float(np.mean(similarities)) if similarities else float("nan")


class AnomalyCalibration:
    """Fits and applies the leave-one-out distance distribution of ``k`` neighbours."""

    def __init__(self, k: int, sample: int = CALIBRATION_SAMPLE) -> None:
        self.k, self.sample_size = k, sample

    def sample(self, keys: np.ndarray) -> np.ndarray:
        """The keys whose distances calibrate (all of them up to the sample size)."""
        return seeded_sample(keys, self.sample_size)

    def fit(self, keys: np.ndarray, vectors: np.ndarray, search: NeighbourSearch) -> EmpiricalCDF:
        """The leave-one-out distances of the references ``keys`` with ``vectors``; a reference
        with no other to compare with (alone in its element) has none."""
        if len(keys) < 2:
            return EmpiricalCDF(np.array([]), tail=True)
        rows = search(keys, vectors, self.k + 1)
        distances = np.array(
            [
                distance([sim for other, sim in row if other != key][: self.k])
                for key, row in zip(keys.tolist(), rows, strict=True)
            ]
        )
        return EmpiricalCDF(distances[~np.isnan(distances)], tail=True)

    def scores(self, calibrated: EmpiricalCDF, similarities: list[list[float]]) -> np.ndarray:
        """Calibrated scores in [0, 1] from each query's nearest similarities; NaN when there
        is nothing to calibrate against."""
        return calibrated(np.array([distance(row[: self.k]) for row in similarities]))


def neighbour_search(index: VectorIndex, within_element: bool) -> NeighbourSearch:
    """Each given reference's nearest references, as the calibration takes them: among all
    references, or among those of the reference's own element (one search per element)."""

    def search(keys: np.ndarray, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        if not within_element:
            return [[(h.key, h.similarity) for h in row] for row in index.search(vectors, k)]
        described = index.describe(keys)
        members: dict[str, list[int]] = {}
        for i, key in enumerate(keys.tolist()):
            if key in described:  # deleted since it was sampled: no neighbours
                members.setdefault(described[key][1], []).append(i)
        rows: list[list[tuple[int, float]]] = [[] for _ in range(len(keys))]
        for element, at in members.items():
            found = index.search(vectors[at], k, Filters(element_id=element))
            for i, row in zip(at, found, strict=True):
                rows[i] = [(h.key, h.similarity) for h in row]
        return rows

    return search
