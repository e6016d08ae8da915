"""Collections as the API shows them: listed, made, read and deleted (app/catalog.py keeps
them)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from app.catalog import Collection, CollectionRegistry
from app.schemas import CollectionList, CollectionOut


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

    @staticmethod
    async def _out(collection: Collection) -> CollectionOut:
        embedding = collection.embedding
        limits = embedding.limits
        return CollectionOut(
            name=collection.name,
            model=collection.row.model,
            model_version=embedding.version,
            references=await run_in_threadpool(collection.store.count),
            dim=embedding.runtime.dim,
            in_channels=limits.in_channels,
            min_length=limits.min_length,
            max_length=limits.max_length,
            created_at=collection.row.created_at,
        )
