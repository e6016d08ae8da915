"""Alignment: signals aligned by their predicted keypoints onto a target (explicit positions, a
stored reference's keypoints, an element's median keypoints, or the batch's own median)."""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.alignment import align, check_keypoints, check_target, keypoint_errors, median_target
from app.reference_view import ReferenceView
from app.schemas import AlignAverage, AlignOptions, AlignResponse
from app.services.embedding import EmbeddingService
from app.settings import Settings
from app.signals import SignalBatch, signals_of
from app.store import ReferenceStore


class AlignmentService:
    def __init__(
        self,
        embedding: EmbeddingService,
        view: ReferenceView,
        store: ReferenceStore,
        settings: Settings,
    ) -> None:
        self.embedding, self.view, self.store, self.settings = embedding, view, store, settings
        self.keypoint_errors = keypoint_errors(embedding.manifest)  # for the anchors

    async def align(self, batch: SignalBatch, options: AlignOptions) -> AlignResponse:
        names = self.embedding.keypoint_names
        keypoints = options.keypoints
        if keypoints is not None:
            keypoints = check_keypoints(keypoints, names)
        confidence = options.min_confidence
        if confidence is None:
            confidence = self.settings.align_min_confidence
        target = options.target
        if target is not None and target.positions is not None:
            check_target(target.positions, names, keypoints, "target.positions")
        inference = await self.embedding.infer(batch)
        if target is None:
            positions = median_target(inference.positions, inference.confidences, names, confidence)
        elif target.positions is not None:
            positions = target.positions
        else:
            positions = await self._keypoint_target(
                target.reference_id, target.element_id, confidence
            )
        result = await run_in_threadpool(
            align,
            signals_of(batch),
            inference.positions,
            inference.confidences,
            names,
            positions,
            mode=options.mode,
            keypoints=keypoints,
            min_confidence=confidence,
            errors=self.keypoint_errors,
            length=options.length,
            average=options.average,
        )
        return AlignResponse(
            results=result.results,
            target=result.target,
            reference=result.reference,
            shrinkage=result.shrinkage,
            average=None if result.mean is None else AlignAverage(mean=result.mean, std=result.std),
            model_version=self.embedding.version,
        )

    async def _keypoint_target(
        self, reference_id: str | None, element_id: str | None, min_confidence: float
    ) -> dict[str, float]:
        """The median confident keypoints of a stored reference, or of (up to
        HSN_ALIGN_TARGET_REFERENCES of) an element's references, by this model."""
        if reference_id is not None:
            stored = await run_in_threadpool(
                self.view.reference, reference_id, "target.reference_id"
            )
            signals = [stored.signal]  # (C, L)
        else:
            self.view.require_element(element_id, "target.element_id")
            keys = self.view.keys_of_element(element_id)[: self.settings.align_target_references]
            signals = list((await run_in_threadpool(self.store.signals, keys.tolist())).values())
        inference = await self.embedding.infer([np.asarray(s)[None] for s in signals])
        return median_target(
            inference.positions,
            inference.confidences,
            self.embedding.keypoint_names,
            min_confidence,
        )
