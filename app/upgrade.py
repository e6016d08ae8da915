"""Changing a collection's model while serving: the background job that re-embeds every
reference with the target model, and switches the collection to it when none is left.

``PUT /collections/{name}/model`` records the change (``upgrades`` table). From then on every
process embeds the collection's writes with both models (:class:`app.services.references.
ReferenceService`'s ``upgrade``), and each runs an :class:`UpgradeJob`; one of them at a time
holds the job through a lease in the database (renewed with every batch; a holder that dies is
replaced once its lease runs out) and embeds, a batch at a time, the references that have no
embedding of the target yet. A batch is committed whole or not at all, so a new holder resumes
from what is committed: no reference is embedded twice, none missed (writes during the job
already carry both embeddings). When none is left, the holder switches the collection in one
transaction (:meth:`app.catalog.CollectionTable.finish_upgrade`), and every process builds the
target's index beside the old one and swaps it in (app/catalog.py): searches, verification and
drift use the old version until then, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

from starlette.concurrency import run_in_threadpool

from app.database import StoreUnavailable
from app.observability import SERVED_BY
from app.services.embedding import EmbeddingService
from app.store import ReferenceStore

log = logging.getLogger(__name__)

BATCH = 256  # references embedded and committed at a time
HOLDER = f"{SERVED_BY}/{uuid.uuid4().hex[:8]}"  # this process, as a lease names it


class UpgradeJob:
    """One process's part in one collection's model change."""

    def __init__(
        self,
        name: str,
        collection: int,
        table,  # app.catalog.CollectionTable
        store: ReferenceStore,
        target: EmbeddingService,
        keep: int,
        interval_s: float,
        lease_s: float,
        pause: float = 1.0,
    ) -> None:
        self.name, self.collection, self.table, self.store = name, collection, table, store
        self.target, self.keep, self.interval_s, self.lease_s = target, keep, interval_s, lease_s
        self.pause = pause
        self._stop = threading.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        version = self.target.version
        total = done = 0
        shown = -1  # the last tenth logged
        after = -1  # the last key seen: each batch goes on from it, and a pass that found
        # nothing is followed by one from the start (a reference rewritten since without the
        # target's embedding keeps its key, behind the cursor) before the switch is tried
        while not self._stop.is_set():
            try:
                if not await run_in_threadpool(
                    self.table.take_lease, self.collection, HOLDER, self.lease_s
                ):
                    await asyncio.sleep(self.lease_s / 3)  # another process holds it
                    continue
                if not total:
                    total = await run_in_threadpool(self.store.count)
                    done = await run_in_threadpool(self.store.count_embedded, version)
                rows = await run_in_threadpool(self.store.unembedded, version, BATCH, after)
                if not rows and after >= 0:
                    after = -1
                    continue
                if not rows:
                    if await run_in_threadpool(
                        self.table.finish_upgrade, self.collection, HOLDER, self.keep
                    ):
                        log.info("collection %r switched to model %s", self.name, version)
                        return
                    await asyncio.sleep(self.interval_s)  # a write without it: embed it next
                    continue
                after = rows[-1].key
                started = time.perf_counter()
                vectors = await self.target.embed_signals([r.signal for r in rows])
                await run_in_threadpool(self.store.add_embeddings, rows, vectors, version)
                # A pause as long as the batch took leaves the cores to searches half the time:
                # unthrottled, search p99 during the job was 2.4x steady state (BENCHMARKS.md)
                await asyncio.sleep(self.pause * (time.perf_counter() - started))
                done += len(rows)
                tenth = min(10, 10 * done // max(total, 1))
                if tenth > shown:
                    shown = tenth
                    log.info(
                        "collection %r: %d/%d references embedded by model %s (%d%%)",
                        self.name,
                        min(done, total),
                        total,
                        version,
                        10 * tenth,
                    )
            except StoreUnavailable as exc:
                log.warning("model change of %r waits for the database (%s)", self.name, exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("model change of %r failed a batch; retrying", self.name)
                await asyncio.sleep(1.0)
