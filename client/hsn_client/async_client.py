"""``AsyncClient``: the same calls as ``Client``, awaited (one event loop, many in flight)."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np

from hsn_client.client import http_options
from hsn_client.errors import HsnError, no_answer, read_answer
from hsn_client.operations import Call, Operation, Operations
from hsn_client.results import (
    Alignment,
    BatchDrift,
    Collection,
    ElementDrift,
    ElementSummary,
    Keypoints,
    Page,
    Reference,
    ReferenceSummary,
    SearchResult,
    Verification,
)
from hsn_client.retry import RetryPolicy
from hsn_client.signals import Signals

T = TypeVar("T")


class AsyncClient:
    """``Client`` for asyncio: the same arguments, methods and results, each method awaited.
    Use it as an async context manager, or await ``aclose``. ``load_npz`` reads its file on
    the event loop's thread."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 5,
        backoff: float = 0.25,
        max_batch: int | None = None,
        npy: bool = True,
        collection: str | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(**http_options(base_url, api_key, timeout))
        self._retry = RetryPolicy(retries, backoff)
        self._ops = Operations(max_batch, npy, collection)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def embed(self, x: Signals) -> np.ndarray:
        """See ``Client.embed``."""
        return await self._run(self._ops.embed(x))

    async def keypoints(self, x: Signals) -> Keypoints:
        """See ``Client.keypoints``."""
        return await self._run(self._ops.keypoints(x))

    async def search(
        self,
        x: Signals,
        k: int = 5,
        *,
        element_id: str | None = None,
        session_id: str | None = None,
        exclude_session_id: str | None = None,
        expected_element: str | None = None,
        explain: bool = False,
    ) -> list[SearchResult]:
        """See ``Client.search``."""
        filters = {
            "element_id": element_id,
            "session_id": session_id,
            "exclude_session_id": exclude_session_id,
            "expected_element": expected_element,
            "explain": True if explain else None,
        }
        return await self._run(self._ops.search(x, k, **filters))

    async def align(
        self,
        x: Signals,
        *,
        positions: dict[str, float] | None = None,
        reference_id: str | None = None,
        element_id: str | None = None,
        mode: Literal["piecewise", "shift"] = "piecewise",
        keypoints: Sequence[str] | None = None,
        average: bool = False,
        length: int | None = None,
        min_confidence: float | None = None,
    ) -> Alignment:
        """See ``Client.align``."""
        return await self._run(
            self._ops.align(
                x,
                positions,
                reference_id,
                element_id,
                mode,
                keypoints,
                average,
                length,
                min_confidence,
            )
        )

    async def verify(self, x: Signals, element_id: str) -> Verification:
        """See ``Client.verify``."""
        return await self._run(self._ops.verify(x, element_id))

    async def drift(
        self, x: Signals, element_id: str, baseline_sessions: int | None = None
    ) -> BatchDrift:
        """See ``Client.drift``."""
        return await self._run(self._ops.drift(x, element_id, baseline_sessions))

    async def add_references(
        self,
        signals: Signals,
        element_ids: Sequence[str],
        session_ids: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        recorded_at: Sequence[datetime | str | None] | None = None,
    ) -> list[str]:
        """See ``Client.add_references``."""
        return await self._run(
            self._ops.add_references(signals, element_ids, session_ids, ids, metadata, recorded_at)
        )

    async def load_npz(self, path: str | Path, *, progress: bool | None = None) -> list[str]:
        """See ``Client.load_npz``."""
        shown = sys.stderr.isatty() if progress is None else progress
        return await self._run(self._ops.load_npz(path, shown))

    async def get_reference(self, ref_id: str) -> Reference:
        """See ``Client.get_reference``."""
        return await self._run(self._ops.get_reference(ref_id))

    async def delete_reference(self, ref_id: str) -> None:
        """See ``Client.delete_reference``."""
        await self._run(self._ops.delete_reference(ref_id))

    async def list_references(
        self, element_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[ReferenceSummary]:
        """See ``Client.list_references``."""
        return await self._run(self._ops.list_references(element_id, limit, offset))

    async def elements(
        self, limit: int = 100, offset: int = 0, contains: str | None = None
    ) -> Page[ElementSummary]:
        """See ``Client.elements``."""
        return await self._run(self._ops.elements(limit, offset, contains))

    async def element_drift(
        self, element_id: str, baseline_sessions: int | None = None
    ) -> ElementDrift:
        """See ``Client.element_drift``."""
        return await self._run(self._ops.element_drift(element_id, baseline_sessions))

    async def model(self) -> dict[str, Any]:
        """See ``Client.model``."""
        return await self._run(self._ops.model())

    async def collections(self) -> list[Collection]:
        """See ``Client.collections``."""
        return await self._run(self._ops.collections())

    async def collection(self, name: str) -> Collection:
        """See ``Client.collection``."""
        return await self._run(self._ops.collection(name))

    async def create_collection(self, name: str, model: str | None = None) -> Collection:
        """See ``Client.create_collection``."""
        return await self._run(self._ops.create_collection(name, model))

    async def delete_collection(self, name: str) -> None:
        """See ``Client.delete_collection``."""
        await self._run(self._ops.delete_collection(name))

    async def _run(self, operation: Operation[T]) -> T:
        try:
            call = next(operation)
            while True:
                try:
                    answer = await self._send(self._ops.located(call))
                except HsnError as exc:
                    call = operation.throw(exc)
                else:
                    call = operation.send(answer)
        except StopIteration as done:
            return done.value

    async def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                response = await self._http.request(call.method, call.path, **call.request)
            except httpx.TransportError as exc:
                delay = self._retry.after_error(exc, call.idempotent, attempt)
                if delay is None:
                    raise no_answer(self._http.base_url, exc) from exc
            else:
                delay = self._retry.after_response(response, attempt)
                if delay is None:
                    return read_answer(response)
            await asyncio.sleep(delay)
