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

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def keypoint_names(self) -> list[str]:
        return self.runtime.keypoint_names

    @property
    def limits(self) -> SignalLimits:
        return self.runtime.limits

    @property
    def manifest(self) -> dict:
        return self.runtime.manifest

    @property
    def engine(self) -> str:
        """What runs the model: onnx or torchscript."""
        return self.runtime.engine

    @property
    def workers(self) -> int:
        """Model calls that may run at once."""
        return self.batcher.workers

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
