"""Collections as the API shows them: listed, made, read, deleted, and their model changed
(app/catalog.py keeps them; app/upgrade.py runs a change)."""

from __future__ import annotations

import time
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from app.catalog import Collection, CollectionRegistry
from app.schemas import CollectionList, CollectionOut, ServedVersion, UpgradeProgress


class CollectionService:
    def __init__(self, registry: CollectionRegistry) -> None:
        self.registry = registry

    async def list(self, visible=lambda name: True) -> CollectionList:
        """Every collection served here that ``visible(name)`` lets through."""
        shown = [c for c in self.registry.items() if visible(c.name)]
        return CollectionList(items=[await self._out(c) for c in shown])

    async def get(self, name: str) -> CollectionOut:
        return await self._out(self.registry.get(name))

    async def create(self, name: str, model: str | None) -> CollectionOut:
        return await self._out(await self.registry.create(name, model))

    async def delete(self, name: str) -> None:
        await self.registry.delete(name)

    async def change_model(self, name: str, model: str | None) -> CollectionOut:
        return await self._out(await self.registry.change_model(name, model))

    async def forget_version(self, name: str, version: str) -> None:
        await self.registry.forget_version(name, version)

    async def _out(self, collection: Collection) -> CollectionOut:
        embedding = collection.embedding
        limits = embedding.limits
        store = collection.store
        total = await run_in_threadpool(store.count)
        served = await run_in_threadpool(self.registry.table.served, collection.row.id)
        upgrade = None
        if (job := self.registry.upgrade_of(collection.name)) is not None:
            embedded = await run_in_threadpool(store.count_embedded, job.model_version)
            elapsed = time.time() - datetime.fromisoformat(job.started_at).timestamp()
            rate = (embedded - job.embedded_at_start) / max(elapsed, 1e-3)
            upgrade = UpgradeProgress(
                target_version=job.model_version,
                model=job.model,
                embedded=embedded,
                total=total,
                started_at=job.started_at,
                eta_s=round(max(0, total - embedded) / rate, 1) if rate > 0 else None,
            )
        return CollectionOut(
            name=collection.name,
            model=collection.row.model,
            model_version=embedding.version,
            references=total,
            dim=embedding.runtime.dim,
            in_channels=limits.in_channels,
            min_length=limits.min_length,
            max_length=limits.max_length,
            created_at=collection.row.created_at,
            upgrade=upgrade,
            versions=[ServedVersion(**vars(v)) for v in served],
        )
