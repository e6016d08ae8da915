"""``Client``: the service's API as blocking method calls."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np

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


def http_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """What httpx's Client and AsyncClient are made with."""
    headers = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


class Client:
    """The service at ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    ``api_key`` is sent as ``Authorization: Bearer`` (HSN_API_KEY, or a key of ``python -m app
    keys create``). ``collection``: the collection the data calls (embed, search, references,
    ...) are for; None: the routes without one, which serve ``default``. Signals go as
    ``.npy`` bodies unless ``npy`` is False. Batches larger than the service takes are sent in
    several requests (its limit is read from ``/openapi.json`` once, unless ``max_batch`` is
    given). A call is sent again, ``backoff`` seconds doubling, at most ``retries`` times: when
    it never reached the service, on 503 (after ``Retry-After`` when given), and when the
    connection broke after sending for calls that are safe to repeat. Failures raise HsnError.
    Use it as a context manager, or call ``close``.
    """

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
        self._http = httpx.Client(**http_options(base_url, api_key, timeout))
        self._retry = RetryPolicy(retries, backoff)
        self._ops = Operations(max_batch, npy, collection)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def embed(self, x: Signals) -> np.ndarray:
        """One L2-normalised embedding per signal: (B, D) float32, in input order.

        ``x``: an array (B, L) or (B, C, L), or a sequence of signals each (L,) or (C, L),
        of any lengths the model takes."""
        return self._run(self._ops.embed(x))

    def keypoints(self, x: Signals) -> Keypoints:
        """Each signal's keypoints: positions in its own samples and confidences, (B, K)."""
        return self._run(self._ops.keypoints(x))

    def search(
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
        """Per signal its ``k`` nearest references (optionally only of ``element_id`` or
        ``session_id``, or none of ``exclude_session_id``), the element they vote for and an
        anomaly score (calibrated on ``expected_element``'s references alone when given); with
        ``explain``, each anomaly's ``map`` (one value per sample: where the signal is least
        like the references it was compared with) and its ``peak``."""
        filters = {
            "element_id": element_id,
            "session_id": session_id,
            "exclude_session_id": exclude_session_id,
            "expected_element": expected_element,
            "explain": True if explain else None,
        }
        return self._run(self._ops.search(x, k, **filters))

    def align(
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
        """Signals lined up by their keypoints onto one target: keypoint ``positions``, a stored
        reference's keypoints, an element's median ones, or (none given) the signals' own
        median. Sent as one request: the target, shrinkage and average are the whole batch's."""
        return self._run(
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

    def verify(self, x: Signals, element_id: str) -> Verification:
        """Are these signals (one session) of ``element_id``? One request."""
        return self._run(self._ops.verify(x, element_id))

    def drift(
        self, x: Signals, element_id: str, baseline_sessions: int | None = None
    ) -> BatchDrift:
        """How far a session just recorded (two or more signals, not stored) has moved from
        ``element_id``'s baseline. One request."""
        return self._run(self._ops.drift(x, element_id, baseline_sessions))

    def add_references(
        self,
        signals: Signals,
        element_ids: Sequence[str],
        session_ids: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        recorded_at: Sequence[datetime | str | None] | None = None,
    ) -> list[str]:
        """Store (or, for an existing id, replace) one reference per signal; their ids. Each
        request is committed before the next is sent. Only calls with ``ids`` are retried
        after a broken connection: without them a repeat would store the references twice."""
        return self._run(
            self._ops.add_references(signals, element_ids, session_ids, ids, metadata, recorded_at)
        )

    def load_npz(self, path: str | Path, *, progress: bool | None = None) -> list[str]:
        """Store the references of an NPZ file of the training format (or of every shard of a
        directory ``python -m training shard`` wrote), a batch per request, with a progress
        line on stderr (default: when stderr is a terminal); their ids."""
        shown = sys.stderr.isatty() if progress is None else progress
        return self._run(self._ops.load_npz(path, shown))

    def get_reference(self, ref_id: str) -> Reference:
        return self._run(self._ops.get_reference(ref_id))

    def delete_reference(self, ref_id: str) -> None:
        """HsnError with status 404 for an unknown id."""
        self._run(self._ops.delete_reference(ref_id))

    def list_references(
        self, element_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[ReferenceSummary]:
        return self._run(self._ops.list_references(element_id, limit, offset))

    def elements(
        self, limit: int = 100, offset: int = 0, contains: str | None = None
    ) -> Page[ElementSummary]:
        """Stored elements in id order, with their references, sessions and recording span;
        with ``contains``, those whose id contains it (any case)."""
        return self._run(self._ops.elements(limit, offset, contains))

    def element_drift(self, element_id: str, baseline_sessions: int | None = None) -> ElementDrift:
        """A stored element's baseline and the drift of each later session."""
        return self._run(self._ops.element_drift(element_id, baseline_sessions))

    def model(self) -> dict[str, Any]:
        """The manifest of the collection's model."""
        return self._run(self._ops.model())

    def collections(self) -> list[Collection]:
        """Every collection (those the API key covers), oldest first."""
        return self._run(self._ops.collections())

    def collection(self, name: str) -> Collection:
        """HsnError with status 404 for an unknown name."""
        return self._run(self._ops.collection(name))

    def create_collection(self, name: str, model: str | None = None) -> Collection:
        """A new, empty collection on ``model``, a folder of the service's model repository
        (None: the default collection's model). Needs an admin key; 409 if it exists."""
        return self._run(self._ops.create_collection(name, model))

    def delete_collection(self, name: str) -> None:
        """Deletes the collection and every reference in it (admin key; 409 for default)."""
        self._run(self._ops.delete_collection(name))

    def _run(self, operation: Operation[T]) -> T:
        try:
            call = next(operation)
            while True:
                try:
                    answer = self._send(self._ops.located(call))
                except HsnError as exc:
                    call = operation.throw(exc)
                else:
                    call = operation.send(answer)
        except StopIteration as done:
            return done.value

    def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                response = self._http.request(call.method, call.path, **call.request)
            except httpx.TransportError as exc:
                delay = self._retry.after_error(exc, call.idempotent, attempt)
                if delay is None:
                    raise no_answer(self._http.base_url, exc) from exc
            else:
                delay = self._retry.after_response(response, attempt)
                if delay is None:
                    return read_answer(response)
            time.sleep(delay)
