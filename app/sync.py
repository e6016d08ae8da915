"""The one owner of store-index consistency: every change reaches the index through the change log.

A write commits to the store (appending change-log entries in its transaction); the writing
process then applies the log up to its write before it answers (read-your-writes), and every
other process applies it within ``HSN_SYNC_INTERVAL_MS``: woken by PostgreSQL NOTIFY, or by
polling (always, and the only way on SQLite). Entries name keys only; applying one reads the
key's current row, so replaying an entry twice or out of date is harmless. A process that has
fallen behind what the log keeps rebuilds from the store. If applying fails after a commit, the
index is marked stale and brought back in step before the next search answers.

What the index holds changes only here, so this is where its observers hear of it: the
calibrations fitted on the references (:class:`app.calibration.FittedCache`) are told how many
changes were applied, or that the index was rebuilt, whichever process wrote.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.database import StoreUnavailable
from app.index import VectorIndex
from app.labels import IndexRows
from app.schemas import SyncStatus
from app.segments import BuildProcess, Segment, SegmentFolder, StoreSource, build_from_store
from app.store import ReferenceStore

log = logging.getLogger(__name__)

PAGE = 10_000  # change-log entries applied at a time
EMBED_BATCH = 256  # references re-embedded per model call at start-up
BUILD_RETRY_S = 30  # a failed segment build (disk full?) is tried again after this long
# A background build of more references than this runs in a process of its own
# (app.segments.BuildProcess: ~1 s to start it); a smaller one in a thread here holds Python's
# interpreter lock for a few milliseconds a batch of rows.
BUILD_IN_PROCESS_MAX = 20_000

# signals, each (C, L) -> their embeddings (n, D) by this process's model
Embedder = Callable[[list[np.ndarray]], Awaitable[np.ndarray]]


async def next_round(wake: asyncio.Event, stop: threading.Event, interval_s: float) -> bool:
    """Waits until woken or ``interval_s`` passed: whether to go on (False once stopped).
    The loop of everything that follows the database: a sync, the collections' registry."""
    try:
        async with asyncio.timeout(interval_s):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()
    return not stop.is_set()


class BuildAbandoned(Exception):
    """A segment build stopped because the service is stopping."""


class IndexObserver(Protocol):
    """Told what reached the index: ``changed`` after ``writes`` changes were applied,
    ``rebuilt`` after it was rebuilt from the store or a segment was mapped at start; ``total``
    references are held now."""

    def changed(self, writes: int, total: int) -> None: ...

    def rebuilt(self, total: int) -> None: ...


class IndexSync:
    def __init__(
        self,
        store: ReferenceStore,
        index: VectorIndex,
        model_version: str,
        embed: Embedder,
        segments: SegmentFolder,
        interval_s: float,
        observers: Sequence[IndexObserver],
    ) -> None:
        self.store, self.index, self.observers = store, index, list(observers)
        self.version, self.embed, self.segments, self.interval_s = (
            model_version,
            embed,
            segments,
            interval_s,
        )
        self.applied_seq = 0
        self.store_seq = 0
        self.epoch = 0  # the database's, read at start: its segments carry it
        self.stale = False  # a catch-up failed after a local commit
        self.database_ok = True
        self.building = False  # this process is building the next large segment
        self._oldest_pending: float | None = None  # committed_at of the first unapplied entry
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._task: asyncio.Task | None = None
        self._build: asyncio.Task | None = None
        self._child: BuildProcess | None = None  # a background build's process, while it runs
        self._build_again_at = 0.0  # after a failed build: not before this (monotonic) time
        self._looked_at: Path | None = None  # the newest published folder last opened

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Under the store's start-up lock (one process at a time, the others wait): embed what
        this model has not. Then map the newest large segment (or build one) and replay the log
        after it; then follow the log in the background."""
        lock = self.store.exclusive()
        await run_in_threadpool(lock.__enter__)
        try:
            await self._embed_missing()
        finally:
            await run_in_threadpool(lock.__exit__, None, None, None)
        await self._load_or_build()
        self._task = asyncio.create_task(self._follow())

    def wake(self) -> None:
        """Look at the log now (on the event loop): another process committed."""
        self._wake.set()

    async def stop(self, remove: bool = False) -> None:
        """Stops following the log; a build under way is abandoned at its next batch of rows
        (not inside FAISS's training of a new index). ``remove``: its collection was deleted,
        its segments go too."""
        # A flag, not cancellation: asyncio.wait_for in 3.11 can swallow a cancel that races its
        # timeout, which left the loop running and shutdown waiting for it forever.
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._child is not None:
            self._child.stop()
        if self._build is not None:
            await asyncio.gather(self._build, return_exceptions=True)
        if remove:
            await run_in_threadpool(self.segments.remove)

    async def _embed_missing(self) -> None:
        """References without this model's embedding (stored by another model) get one."""
        total = await run_in_threadpool(self.store.count_unembedded, self.version)
        if not total:
            return
        log.info("embedding %d references stored by another model", total)
        done, started = 0, time.perf_counter()
        while rows := await run_in_threadpool(self.store.unembedded, self.version, EMBED_BATCH):
            vectors = await self.embed([r.signal for r in rows])
            await run_in_threadpool(self.store.add_embeddings, rows, vectors, self.version)
            done += len(rows)
            log.info(
                "embedded %d/%d references (%.0f%%, %.1fs)",
                done,
                total,
                100 * min(done, total) / total,
                time.perf_counter() - started,
            )

    async def _load_or_build(self) -> None:
        async with self._lock:
            started = time.perf_counter()
            self.epoch = await run_in_threadpool(self.store.epoch)
            segment = await run_in_threadpool(self.segments.latest, self.version, self.epoch)
            if segment is not None:
                self.index.adopt(segment, None)
                self.applied_seq = self.store_seq = segment.seq
                await self._apply_pending()
                expected = await run_in_threadpool(self.store.count_embedded, self.version)
                if len(self.index) == expected:
                    self._tell_rebuilt()
                    log.info(
                        "mapped index segment: %d references at change %d, replayed to %d "
                        "(%d since) in %.2fs",
                        len(segment),
                        segment.seq,
                        self.applied_seq,
                        len(self.index.mutable),
                        time.perf_counter() - started,
                    )
                    return
                log.info("index segment disagrees with the store after replay: rebuilding")
            await self._rebuild(newer_than=segment.seq if segment is not None else -1)
            await self._apply_pending()
            log.info(
                "built index from the store: %d references in %.2fs",
                len(self.index),
                time.perf_counter() - started,
            )

    async def _rebuild(self, newer_than: int) -> None:
        """Everything from the store, now: a large segment built (or, when another process of
        this machine built one meanwhile, mapped) and served with an empty mutable segment;
        the log is then replayed from where it begins. A segment published by another process
        counts only past change ``newer_than`` (the log is not kept before it, or the one
        there disagreed with the store). References without this model's
        embedding get one first: one written by a process of another model at or before that
        point would otherwise never be replayed here (a switch of models)."""
        await self._embed_missing()
        segment = await run_in_threadpool(self._build_segment, True, newer_than)
        assert segment is not None  # waited for the lock
        self.index.adopt(segment, None)
        self.applied_seq = self.store_seq = segment.seq
        self._tell_rebuilt()

    def _build_segment(
        self, wait: bool, newer_than: int, background: bool = False
    ) -> Segment | None:
        """(In a thread.) Under the folder's build lock: a segment past change ``newer_than``
        that another process published meanwhile, or one built now (``background``: past
        BUILD_IN_PROCESS_MAX references, in a process of its own); None when another process
        holds the lock and ``wait`` is False."""
        with self.segments.build_lock(wait) as got:
            if not got:
                return None
            published = self.segments.latest(self.version, self.epoch, newer_than)
            if published is not None:
                return published
            source = StoreSource(
                self.store.db.address(), self.store.collection, self.version, self.epoch
            )
            kind_for = self.index.policy.kind_for
            if background and len(self.index) > BUILD_IN_PROCESS_MAX:
                self._child = BuildProcess()
                path = self._child.run(source, self.segments, kind_for)
            else:
                path = build_from_store(
                    self.store, source, self.segments, kind_for, self._until_stopped
                )
            return Segment.open(path, self.version, self.epoch, self.segments.params)

    def _until_stopped(self, chunks: Iterator[IndexRows]) -> Iterator[IndexRows]:
        """``chunks`` until the sync is stopped: a shutdown abandons a build under way (its
        hidden folder is removed) instead of waiting minutes for it."""
        for chunk in chunks:
            if self._stop.is_set():
                raise BuildAbandoned("the service is stopping")
            yield chunk

    def _build_later(self) -> None:
        """Starts building the next large segment in the background unless one is under way
        (here, or by another process of the machine: then its result is mapped when
        published). Writes and searches go on meanwhile."""
        if (self._build is None or self._build.done()) and time.monotonic() >= self._build_again_at:
            self.building = True
            self._build = asyncio.create_task(self._build_in_background())

    async def _build_in_background(self) -> None:
        base = self.index.base
        try:
            newer_than = base.seq if base is not None else -1
            segment = await asyncio.to_thread(self._build_segment, False, newer_than, True)
            if segment is not None:
                await self._adopt(segment)
        except Exception:
            if self._stop.is_set():
                log.info("building the next index segment abandoned: the service is stopping")
                return
            self._build_again_at = time.monotonic() + BUILD_RETRY_S
            log.exception("building the next index segment failed: retried in %ds", BUILD_RETRY_S)
        finally:
            self.building = False

    async def _adopt(self, segment: Segment) -> None:
        """Serves ``segment``: what this process applied after the segment's change stays in
        the mutable segment (and hides the segment's copies). When the log no longer holds
        those entries, a segment past where it was pruned is built (or mapped) instead."""
        async with self._lock:
            current = self.index.base
            if current is not None and current.seq >= segment.seq:
                return
            touched: list[int] = []
            seq = segment.seq
            while seq < self.applied_seq:
                page = await run_in_threadpool(self.store.changes_after, seq, PAGE)
                if page.pruned_through > segment.seq:
                    await self._rebuild(newer_than=page.pruned_through - 1)
                    return
                entries = [c for c in page.entries if c.seq <= self.applied_seq]
                touched.extend(c.key for c in entries)
                if len(page.entries) < PAGE or len(entries) < len(page.entries):
                    break
                seq = page.entries[-1].seq
            behind = self.applied_seq <= segment.seq
            self.index.adopt(segment, None if behind else np.array(touched, np.int64))
            self.applied_seq = max(self.applied_seq, segment.seq)
            log.info(
                "serving index segment of %d references at change %d (%d written since)",
                len(segment),
                segment.seq,
                len(self.index.mutable),
            )

    async def _adopt_published(self) -> None:
        """Maps a segment another process of the machine published since."""
        base = self.index.base
        newest = self.segments.published()
        if not newest or self.building or base is None or newest[0] in (base.path, self._looked_at):
            return
        self._looked_at = newest[0]  # an unusable one is logged once, not on every poll
        segment = await run_in_threadpool(self.segments.latest, self.version, self.epoch, base.seq)
        if segment is not None:
            await self._adopt(segment)

    def _tell_rebuilt(self) -> None:
        for observer in self.observers:
            observer.rebuilt(len(self.index))

    # -- following the log -------------------------------------------------------------------
    async def after_commit(self, seq: int) -> None:
        """Called by a writer once its write (ending at ``seq``) is committed: the index has it
        when this returns, or is marked stale and caught up before the next search."""
        try:
            await self.catch_up(through=seq)
        except Exception:
            self.stale = True
            log.exception(
                "applying a committed write to the index failed: retried before the next search"
            )

    async def ensure_fresh(self) -> None:
        """Before a search: catch up if a catch-up failed after a commit. A database that is
        unreachable leaves the index as it is (searches answer from memory)."""
        if self.stale:
            try:
                await self.catch_up()
            except StoreUnavailable:
                pass

    async def catch_up(self, through: int | None = None) -> None:
        async with self._lock:
            if through is not None and self.applied_seq >= through:
                return
            try:
                await self._apply_pending()
            except StoreUnavailable:
                self.database_ok = False
                raise
            self.stale, self.database_ok = False, True

    async def _apply_pending(self) -> None:
        while True:
            page = await run_in_threadpool(self.store.changes_after, self.applied_seq, PAGE)
            if page.pruned_through > self.applied_seq:
                log.warning(
                    "the change log was pruned past change %d (this process applied up to "
                    "%d): rebuilding from the store",
                    page.pruned_through,
                    self.applied_seq,
                )
                await self._rebuild(newer_than=page.pruned_through - 1)
                continue
            self.store_seq = max(self.store_seq, page.through)
            if not page.entries:  # none of this collection's up to the log's end
                self._oldest_pending = None
                self.applied_seq = max(self.applied_seq, page.through)
                break
            self._oldest_pending = page.entries[0].committed_at
            keys = sorted({c.key for c in page.entries})
            rows, removed = await self._rows_of(keys)
            await run_in_threadpool(self.index.apply, rows, removed)
            for observer in self.observers:
                observer.changed(len(keys), len(self.index))
            if len(page.entries) < PAGE:  # the log's end when read: what came since waits
                self.applied_seq = max(page.entries[-1].seq, page.through)
                self._oldest_pending = None  # for the next poll or notification
                break
            self.applied_seq = page.entries[-1].seq
        if self.index.wants_build():
            self._build_later()

    async def _rows_of(self, keys: list[int]) -> tuple[IndexRows, np.ndarray]:
        """The index rows of ``keys`` and those no longer stored; references another model
        wrote get this model's embedding first (rare: a rollout), then all are read again."""
        rows, removed, missing = await run_in_threadpool(self.store.index_rows, keys, self.version)
        if missing:
            vectors = await self.embed([m.signal for m in missing])
            await run_in_threadpool(self.store.add_embeddings, missing, vectors, self.version)
            rows, removed, _ = await run_in_threadpool(self.store.index_rows, keys, self.version)
        return rows, removed

    async def _follow(self) -> None:
        """Polls the store's last sequence number (and wakes on NOTIFY); catches up when behind."""
        while await next_round(self._wake, self._stop, self.interval_s):
            was_ok = self.database_ok
            try:
                self.store_seq = await run_in_threadpool(self.store.last_seq)
                if self.store_seq > self.applied_seq or self.stale:
                    await self.catch_up()
                await self._adopt_published()
                if not was_ok:
                    log.info("database reachable again: caught up to change %d", self.applied_seq)
                self.database_ok = True
            except StoreUnavailable as exc:
                if self.database_ok:
                    log.warning("database unreachable (%s): searches answer from memory", exc)
                self.database_ok = False
            except Exception:
                log.exception("following the change log failed; retrying")

    def status(self) -> SyncStatus:
        pending = self._oldest_pending
        behind = max(0, self.store_seq - self.applied_seq)
        return SyncStatus(
            applied_seq=self.applied_seq,
            store_seq=self.store_seq,
            lag_entries=behind,
            lag_seconds=max(0.0, time.time() - pending) if pending is not None and behind else 0.0,
            database="ok" if self.database_ok else "unreachable",
        )
