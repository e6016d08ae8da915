"""Backups through the API: the archive of app/backup.py, streamed while it is written."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import AsyncIterator

from app.backup import write_backup
from app.database import Database

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes handed to the response at a time
AHEAD = 8  # chunks written ahead of the client: the writer waits for a slow reader


class _Pipe(io.RawIOBase):
    """A file the backup writes into from its thread; the event loop reads it chunk by chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue(AHEAD)
        self.buffer = bytearray()
        self.cancelled = threading.Event()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.cancelled.is_set():
            raise OSError("the client went away")
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self._put(bytes(self.buffer))
            self.buffer.clear()
        return len(data)

    def _put(self, item: bytes | BaseException | None) -> None:
        asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop).result()

    def finish(self, error: BaseException | None) -> None:
        if error is None and self.buffer:
            self._put(bytes(self.buffer))
        self._put(error)  # None: the end


class BackupService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def stream(self) -> AsyncIterator[bytes]:
        """The archive's bytes as they are written (in a thread of its own, from a snapshot on
        a connection of its own: searches and writes go on meanwhile)."""
        pipe = _Pipe(asyncio.get_running_loop())

        def run() -> None:
            error = None
            try:
                summary = write_backup(self.db, pipe, log.debug)
                log.info(
                    "backup streamed: %d references at change %d",
                    summary.references,
                    summary.position,
                )
            except BaseException as exc:  # handed to the response, which ends broken
                error = exc
            if not pipe.cancelled.is_set():
                pipe.finish(error)

        writer = threading.Thread(target=run, name="backup", daemon=True)
        writer.start()
        try:
            while (item := await pipe.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            pipe.cancelled.set()
            while not pipe.queue.empty():  # let a writer waiting on a full queue see the cancel
                pipe.queue.get_nowait()
