"""Verification: is this session (one or more signals) element X? Scored against the element's
references and the most similar other element; thresholds calibrated per probe size on the
references (app/verification.py)."""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.calibration import FittedCache
from app.errors import Conflict
from app.observability import Metrics
from app.reference_view import ReferenceView
from app.schemas import NearestOther, VerifyResponse
from app.services.embedding import EmbeddingService
from app.settings import Settings
from app.signals import SignalBatch
from app.sync import IndexSync
from app.verification import (
    CannotCalibrate,
    Threshold,
    calibrated_probe_size,
    fit_threshold,
    verification_score,
)

NEIGHBOURS_PER_K = 10  # x verify_k neighbours searched for the elements nearest a probe
NEAREST_CANDIDATES = 10  # elements of those neighbours scored in full for the nearest other one


class VerificationService:
    def __init__(
        self,
        embedding: EmbeddingService,
        view: ReferenceView,
        sync: IndexSync,
        calibrations: FittedCache,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.embedding, self.view, self.sync = embedding, view, sync
        self.calibrations, self.settings, self.metrics = calibrations, settings, metrics

    async def verify(self, element_id: str, batch: SignalBatch) -> VerifyResponse:
        self.view.require_element(element_id)
        embeddings = (await self.embedding.infer(batch)).embeddings
        await self.sync.ensure_fresh()
        return await run_in_threadpool(self._verify, element_id, embeddings)

    def _verify(self, element_id: str, probe: np.ndarray) -> VerifyResponse:
        size = calibrated_probe_size(len(probe))
        try:
            threshold = self.calibrations.get(("verify", size), lambda: self._fit(size))
        except CannotCalibrate as exc:
            raise Conflict("element_id", str(exc)) from exc
        k = self.settings.verify_k
        similarity = float(np.mean(self.view.similarities(probe, element_id, k)))
        nearest = self._nearest_other(probe, element_id)
        score = verification_score(similarity, nearest.similarity if nearest else None)
        accepted = bool(score >= threshold.threshold)
        self.metrics.verifications.labels(str(accepted).lower()).inc()
        return VerifyResponse(
            element_id=element_id,
            score=score,
            accepted=accepted,
            threshold=threshold.threshold,
            far=threshold.far,
            signals_used=len(probe),
            similarity=similarity,
            nearest_other=nearest,
        )

    def _nearest_other(self, probe: np.ndarray, element_id: str) -> NearestOther | None:
        """The stored element other than ``element_id`` most similar to the probe (None when
        there is none), scored in full among the elements nearest its signals."""
        k = self.settings.verify_k
        closest: dict[str, float] = {}
        for by_element in self.view.other_elements_near(probe, element_id, NEIGHBOURS_PER_K * k):
            for other, similarities in by_element.items():
                closest[other] = max(closest.get(other, -1.0), similarities[0])
        candidates = sorted(closest, key=closest.get, reverse=True)[:NEAREST_CANDIDATES]
        scored = [
            NearestOther(
                element_id=c, similarity=float(np.mean(self.view.similarities(probe, c, k)))
            )
            for c in candidates
        ]
        return max(scored, key=lambda other: other.similarity, default=None)

    def _fit(self, probe_size: int) -> Threshold:
        elements = [self.view.element_sample(e) for e in self.view.sample_elements(1)]
        return fit_threshold(
            [e for e in elements if e.sessions],
            probe_size,
            self.settings.verify_far,
            self.settings.verify_k,
        )
