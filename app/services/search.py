"""Search: each signal's nearest references, the element they vote for, whether that element is
one the service knows (the open set), and an anomaly score calibrated on the references."""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.anomaly import AnomalyCalibration, neighbour_search
from app.anomaly_map import anomaly_map
from app.calibration import EmpiricalCDF, FittedCache
from app.database import StoreUnavailable
from app.errors import Invalid
from app.index import Hit, VectorIndex
from app.labels import Filters
from app.reference_view import ReferenceView
from app.schemas import (
    Anomaly,
    Neighbor,
    PredictedElement,
    SearchOptions,
    SearchResponse,
    SearchResult,
)
from app.services.embedding import EmbeddingService
from app.settings import Settings
from app.signals import SignalBatch, signals_of
from app.store import ReferenceStore
from app.sync import IndexSync
from app.verification import SESSIONS_PER_ELEMENT, CannotCalibrate, Threshold, impostor_quantile

OPEN_SET_NEIGHBORS = 10  # x verify_k neighbours searched for a reference's best other element


class SearchService:
    def __init__(
        self,
        embedding: EmbeddingService,
        view: ReferenceView,
        index: VectorIndex,
        store: ReferenceStore,
        sync: IndexSync,
        calibrations: FittedCache,
        settings: Settings,
    ) -> None:
        self.embedding, self.view, self.index, self.store, self.sync = (
            embedding,
            view,
            index,
            store,
            sync,
        )
        self.calibrations, self.settings = calibrations, settings
        self.anomaly = AnomalyCalibration(settings.anomaly_k)

    async def search(self, batch: SignalBatch, options: SearchOptions) -> SearchResponse:
        if options.k > self.settings.max_k:
            raise Invalid(
                "k", f"{options.k} is over the limit of {self.settings.max_k}", "less_than_equal"
            )
        if options.expected_element is not None:
            self.view.require_element(options.expected_element, "expected_element")
        embeddings = (await self.embedding.infer(batch)).embeddings
        await self.sync.ensure_fresh()
        signals = signals_of(batch) if options.explain else None
        results = await run_in_threadpool(self._search, embeddings, options, signals)
        return SearchResponse(results=results, model_version=self.embedding.version)

    def _search(
        self,
        embeddings: np.ndarray,
        options: SearchOptions,
        signals: list[np.ndarray] | None = None,
    ) -> list[SearchResult]:
        filters = Filters(
            element_id=options.element_id,
            session_id=options.session_id,
            exclude_session_id=options.exclude_session_id,
        )
        rows = self.index.search(embeddings, options.k, filters)
        expected = options.expected_element
        # The neighbours serve the anomaly score too when they came from the same pool.
        same_pool = filters == Filters(element_id=expected) and options.k >= self.anomaly.k
        scores, compared = self._anomaly_scores(embeddings, expected, rows if same_pool else None)
        maps = self._maps(signals, compared) if signals is not None else None
        keys = np.array(sorted({h.key for row in rows for h in row}), dtype=np.int64)
        described = self.index.describe(keys)
        try:
            metadata: dict[int, dict] | None = self.store.metadata(keys.tolist())
        except StoreUnavailable:
            metadata = None
        threshold = self.settings.anomaly_threshold
        results = []
        for i, (row, score) in enumerate(zip(rows, scores, strict=True)):
            neighbors = [
                Neighbor(
                    id=described[h.key][0],
                    element_id=described[h.key][1],
                    session_id=described[h.key][2],
                    similarity=h.similarity,
                    metadata=None if metadata is None else metadata.get(h.key, {}),
                )
                for h in row
                if h.key in described
            ]
            anomaly = None
            if not np.isnan(score):
                anomaly = Anomaly(
                    score=float(score),
                    is_anomaly=bool(score > threshold),
                    threshold=threshold,
                    calibrated_on=expected or "all references",
                )
                if maps is not None:
                    anomaly.map = np.round(maps[i], 4)
                    anomaly.peak = int(np.argmax(maps[i]))
            results.append(
                SearchResult(
                    neighbors=neighbors, predicted_element=vote(neighbors), anomaly=anomaly
                )
            )
        open_set = self._open_set_threshold()
        if open_set is not None:
            self._mark_known(embeddings, results, open_set.threshold)
        return results

    def prepare(self) -> None:
        """Fits what a plain search needs (the anomaly score over all references, the open
        set's threshold) before the collection serves: a collection swapped in on a new model
        made every search of its process wait for these (1.4-2.2 s; BENCHMARKS.md "Model
        changes and backups")."""
        try:
            self.calibrations.get(("anomaly", False), lambda: self._fit(False))
        except StoreUnavailable:
            return
        self._open_set_threshold()

    # -- the open set ------------------------------------------------------------------------
    def _mark_known(
        self, embeddings: np.ndarray, results: list[SearchResult], threshold: float
    ) -> None:
        """Sets each predicted element's ``known``: the signal's similarity to that element at
        least the open-set threshold. One search per predicted element, not per signal."""
        by_element: dict[str, list[int]] = {}
        for i, result in enumerate(results):
            if result.predicted_element is not None:
                by_element.setdefault(result.predicted_element.element_id, []).append(i)
        k = self.settings.verify_k
        for element, at in by_element.items():
            similarities = self.view.similarities(embeddings[at], element, k)
            for i, similarity in zip(at, similarities, strict=True):
                results[i].predicted_element.known = bool(similarity >= threshold)

    def _open_set_threshold(self) -> Threshold | None:
        """None while it cannot be calibrated (fewer than two elements), or must be fitted while
        the database is unreachable."""
        try:
            return self.calibrations.get("open set", self._fit_open_set_threshold)
        except (CannotCalibrate, StoreUnavailable):
            return None

    def _fit_open_set_threshold(self) -> Threshold:
        """Each sampled reference (a few per element) against the best element but its own."""
        elements = self.view.sample_elements(1)
        if len(elements) < 2:
            raise CannotCalibrate("the open set needs references of at least two elements")
        k = self.settings.verify_k
        best_other = []
        for element in elements:
            # the first reference of each of a few sessions: one signal per probe
            probes = self.view.first_of_sessions(element, SESSIONS_PER_ELEMENT)
            if not len(probes):
                continue
            best_other += [
                max(float(np.mean(similarities[:k])) for similarities in by_element.values())
                for by_element in self.view.other_elements_near(
                    probes, element, OPEN_SET_NEIGHBORS * k
                )
                if by_element
            ]
        far = self.settings.verify_far
        return Threshold(
            impostor_quantile(np.array(best_other), far), far, len(best_other), 0, None
        )

    # -- anomaly -----------------------------------------------------------------------------
    def _anomaly_scores(
        self, queries: np.ndarray, expected_element: str | None, rows: list[list[Hit]] | None
    ) -> tuple[np.ndarray, list[list[Hit]]]:
        """Calibrated scores in [0, 1], and the references each was compared with; NaN (and
        none) when there is nothing to calibrate against (or the calibration must be made
        while the database is unreachable)."""
        within = expected_element is not None
        nothing = np.full(len(queries), np.nan), [[] for _ in range(len(queries))]
        try:
            calibrated = self.calibrations.get(("anomaly", within), lambda: self._fit(within))
        except StoreUnavailable:
            return nothing
        if len(calibrated) == 0:
            return nothing
        if rows is None:
            rows = self.index.search(queries, self.anomaly.k, Filters(element_id=expected_element))
        rows = [row[: self.anomaly.k] for row in rows]
        return self.anomaly.scores(calibrated, [[h.similarity for h in row] for row in rows]), rows

    def _maps(self, signals: list[np.ndarray], compared: list[list[Hit]]) -> list[np.ndarray]:
        """Each signal's anomaly map against the references its score compared it with (none
        while the database is unreachable: their signals live there)."""
        try:
            stored = self.store.signals(sorted({h.key for row in compared for h in row}))
        except StoreUnavailable:
            stored = {}
        return [
            anomaly_map(signal, [stored[h.key] for h in row if h.key in stored])
            for signal, row in zip(signals, compared, strict=True)
        ]

    def _fit(self, within_element: bool) -> EmpiricalCDF:
        """Leave-one-out distances of sampled references to their nearest others within their
        element, or among all references, from the store's vectors."""
        keys, vectors = self.view.vectors(self.anomaly.sample(self.index.keys_of_element(None)))
        return self.anomaly.fit(keys, vectors, neighbour_search(self.index, within_element))


def vote(neighbors: list[Neighbor]) -> PredictedElement | None:
    """kNN vote weighted by similarity (shifted to be positive): the element and its share."""
    if not neighbors:
        return None
    weights: dict[str, float] = {}
    for n in neighbors:
        weights[n.element_id] = weights.get(n.element_id, 0.0) + (1.0 + n.similarity) / 2
    element = max(weights, key=weights.get)
    return PredictedElement(
        element_id=element, confidence=weights[element] / sum(weights.values()), known=None
    )
