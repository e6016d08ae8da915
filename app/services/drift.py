"""Drift: how far an element's later sessions (or a new session not stored) moved from its
baseline, its first sessions, as a score calibrated on the stored elements (app/drift.py)."""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.calibration import FittedCache
from app.drift import (
    Baseline,
    DriftCalibration,
    NothingToCompare,
    RecordedSession,
    session_drift,
    split,
    two_sample_test,
)
from app.errors import Conflict, Invalid
from app.observability import Metrics
from app.reference_view import ReferenceView
from app.schemas import (
    BatchDriftResponse,
    DriftBaseline,
    DriftCalibratedOn,
    DriftResponse,
)
from app.services.embedding import EmbeddingService
from app.settings import Settings
from app.signals import SignalBatch, batch_size, signals_of


class DriftService:
    def __init__(
        self,
        embedding: EmbeddingService,
        view: ReferenceView,
        calibrations: FittedCache,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.embedding, self.view = embedding, view
        self.calibrations, self.settings, self.metrics = calibrations, settings, metrics

    async def element_drift(self, element_id: str, baseline_sessions: int | None) -> DriftResponse:
        return await run_in_threadpool(self._element_drift, element_id, baseline_sessions)

    def _element_drift(self, element_id: str, baseline_sessions: int | None) -> DriftResponse:
        n = baseline_sessions or self.settings.drift_baseline_sessions
        try:  # at most the element's sessions less one: what it can have
            baseline, later = split(self.view.recorded_sessions(element_id), n)
        except NothingToCompare as exc:  # what is stored, not the request, falls short: 409
            raise Conflict("baseline_sessions", str(exc)) from exc
        calibration = self._calibration(n)
        threshold = self.settings.drift_threshold
        sessions = session_drift(baseline, later, calibration, threshold)
        self.metrics.observe_drift(element_id, [s.score for s in sessions], sessions[-1].drifting)
        return DriftResponse(
            element_id=element_id,
            baseline=_summary(baseline),
            sessions=sessions,
            threshold=threshold,
            calibrated_on=_calibrated_on(calibration),
        )

    async def batch_drift(
        self, element_id: str, batch: SignalBatch, baseline_sessions: int | None
    ) -> BatchDriftResponse:
        if batch_size(batch) < 2:
            raise Invalid("signals", "a two-sample test needs at least two signals", "too_short")
        self.view.require_element(element_id)
        embeddings = (await self.embedding.infer(batch)).embeddings
        session = RecordedSession("", "", embeddings, signals_of(batch))
        return await run_in_threadpool(self._batch_drift, element_id, session, baseline_sessions)

    def _batch_drift(
        self, element_id: str, session: RecordedSession, baseline_sessions: int | None
    ) -> BatchDriftResponse:
        wanted = baseline_sessions or self.settings.drift_baseline_sessions
        sessions = self.view.recorded_sessions(element_id, first=wanted)
        # all the element has, when it has fewer: calibrated for the baseline it is
        n = len(sessions)
        try:
            baseline = Baseline.of(sessions)
        except NothingToCompare as exc:
            raise Conflict("element_id", str(exc)) from exc
        calibration = self._calibration(n)
        threshold = self.settings.drift_threshold
        (result,) = session_drift(baseline, [session], calibration, threshold)
        embeddings = session.embeddings
        reference = np.concatenate([s.embeddings for s in baseline.sessions])
        test = two_sample_test(embeddings, reference, self.settings.drift_permutations)
        centroid, mean = baseline.centroid, embeddings.mean(0)
        cosine = float(centroid @ mean / (np.linalg.norm(centroid) * np.linalg.norm(mean) + 1e-12))
        self.metrics.drift_scores.observe(result.score)
        return BatchDriftResponse(
            element_id=element_id,
            baseline=_summary(baseline),
            signals=len(embeddings),
            distance=result.distance,
            map_distance=result.map_distance,
            score=result.score,
            drifting=result.drifting,
            threshold=threshold,
            centroid_distance=1.0 - cosine,
            mmd=test.mmd,
            p_value=test.p_value,
            permutations=test.permutations,
            calibrated_on=_calibrated_on(calibration),
        )

    def _calibration(self, baseline_sessions: int) -> DriftCalibration:
        """The fit for baselines of this many sessions (the caller's baseline has them all, so
        there are never more fits than the most sessions an element has). Baselines of one
        session are calibrated on pairs (the least to leave out)."""
        n = max(2, baseline_sessions)
        return self.calibrations.get(("drift", n), lambda: self._fit(n))

    def _fit(self, n: int) -> DriftCalibration:
        baselines = []
        for element in self.view.sample_elements(2):
            try:
                baselines.append(Baseline.of(self.view.recorded_sessions(element, first=n)))
            except NothingToCompare:
                continue
        try:
            return DriftCalibration.fit(baselines)
        except NothingToCompare as exc:
            raise Conflict("element_id", str(exc)) from exc


def _summary(baseline: Baseline) -> DriftBaseline:
    return DriftBaseline(
        sessions=[s.session_id for s in baseline.sessions],
        references=sum(len(s.embeddings) for s in baseline.sessions),
        first_recorded_at=baseline.sessions[0].recorded_at,
        last_recorded_at=baseline.sessions[-1].recorded_at,
    )


def _calibrated_on(calibration: DriftCalibration) -> DriftCalibratedOn:
    return DriftCalibratedOn(elements=calibration.elements, sessions=len(calibration.null))
