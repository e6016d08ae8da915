"""References: stored (embedded, committed, then searchable here before the answer), read,
listed, deleted; and the elements they belong to."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.errors import NotFound
from app.reference_view import ReferenceView
from app.schemas import ElementList, ReferenceList, ReferenceOut, ReferencesCreated
from app.services.embedding import EmbeddingService
from app.store import NewReference, ReferenceStore, timestamp
from app.sync import IndexSync


@dataclass
class ReferenceInput:
    """A reference to store, as a request gives it (its signal parsed and checked)."""

    element_id: str
    session_id: str
    signal: np.ndarray  # (C, L)
    id: str | None = None
    metadata: dict | None = None
    recorded_at: datetime | None = None  # None: when stored


class ReferenceService:
    def __init__(
        self,
        embedding: EmbeddingService,
        store: ReferenceStore,
        view: ReferenceView,
        sync: IndexSync,
    ) -> None:
        self.embedding, self.store, self.view, self.sync = embedding, store, view, sync
        # the target of a model change under way (app/upgrade.py): writes are embedded by both
        self.upgrade: EmbeddingService | None = None

    async def upsert(self, refs: list[ReferenceInput]) -> ReferencesCreated:
        """Stores references, in order: an id given twice ends as its last version. Answers
        each reference's id (new ones are made up) once committed and searchable here."""
        ids = [r.id or uuid.uuid4().hex for r in refs]
        last = sorted({ref_id: n for n, ref_id in enumerate(ids)}.values())
        kept = [refs[n] for n in last]
        signals = [r.signal for r in kept]
        also = {}
        if (target := self.upgrade) is None:
            embeddings = await self.embedding.embed_signals(signals)
        else:  # a model change under way: both models at once, on their own batchers
            embeddings, also[target.version] = await asyncio.gather(
                self.embedding.embed_signals(signals), target.embed_signals(signals)
            )
        rows = [
            NewReference(
                ids[n],
                r.element_id,
                r.session_id,
                r.metadata or {},
                r.signal,
                e,
                None if r.recorded_at is None else timestamp(r.recorded_at),
            )
            for n, r, e in zip(last, kept, embeddings, strict=True)
        ]
        committed = await run_in_threadpool(self.store.upsert, rows, self.embedding.version, also)
        await self.sync.after_commit(committed.seq)
        return ReferencesCreated(ids=ids)

    async def delete(self, ref_id: str) -> None:
        committed = await run_in_threadpool(self.store.delete, ref_id)
        if committed is None:
            raise NotFound("ref_id", f"no reference with id {ref_id!r}")
        await self.sync.after_commit(committed.seq)

    async def get(self, ref_id: str) -> ReferenceOut:
        return await run_in_threadpool(self.view.reference, ref_id)

    async def list(self, element_id: str | None, limit: int, offset: int) -> ReferenceList:
        items, total = await run_in_threadpool(self.store.list, element_id, limit, offset)
        return ReferenceList(items=items, total=total, limit=limit, offset=offset)

    async def elements(self, limit: int, offset: int, contains: str | None) -> ElementList:
        items, total = await run_in_threadpool(self.store.elements, limit, offset, contains)
        return ElementList(items=items, total=total, limit=limit, offset=offset)
