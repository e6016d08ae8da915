"""The model as the other services use it: embeddings and keypoints of a batch, through the
dynamic batcher (concurrent requests share model calls)."""

from __future__ import annotations

import numpy as np

from app.runtime import DynamicBatcher, Inference, ModelRuntime
from app.schemas import EmbedResponse, Keypoint, KeypointsResponse
from app.signals import SignalBatch, SignalLimits


class EmbeddingService:
    def __init__(self, runtime: ModelRuntime, batcher: DynamicBatcher) -> None:
        self.runtime, self.batcher = runtime, batcher
        # what the loaded model is: fixed for the process's life
        self.version: str = runtime.version
        self.keypoint_names: list[str] = runtime.keypoint_names
        self.limits: SignalLimits = runtime.limits
        self.manifest: dict = runtime.manifest
        self.engine: str = runtime.engine  # what runs it: onnx or torchscript
        self.workers: int = batcher.workers  # model calls that may run at once

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def infer(self, batch: SignalBatch) -> Inference:
        return await self.batcher.infer(batch)

    async def embed_signals(self, signals: list[np.ndarray]) -> np.ndarray:
        """Signals, each (C, L) of any allowed length -> their embeddings (n, D)."""
        return (await self.infer([s[None] for s in signals])).embeddings

    async def embed(self, batch: SignalBatch) -> EmbedResponse:
        inference = await self.infer(batch)
        return EmbedResponse(
            embeddings=inference.embeddings, dim=self.runtime.dim, model_version=self.version
        )

    async def keypoints(self, batch: SignalBatch) -> KeypointsResponse:
        """Per signal, one entry per keypoint type in manifest order (positions to 1/1000 of a
        sample, confidences to 4 places)."""
        inference = await self.infer(batch)
        positions = np.round(inference.positions.astype(np.float64), 3).tolist()
        confidences = np.round(inference.confidences.astype(np.float64), 4).tolist()
        names = self.keypoint_names
        return KeypointsResponse(
            keypoints=[
                [
                    Keypoint.model_construct(name=n, position=p, confidence=c)
                    for n, p, c in zip(names, pos, conf, strict=True)
                ]
                for pos, conf in zip(positions, confidences, strict=True)
            ],
            model_version=self.version,
        )
