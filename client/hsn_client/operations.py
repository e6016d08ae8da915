"""Every call of the service's API, written once for both clients: what to send, in how many
requests, and how to read the answers.

An operation is a generator: it yields each ``Call`` it needs, is sent that call's JSON answer
(or has the call's HsnError thrown in) and returns its result. ``Client`` and ``AsyncClient``
only carry calls over the network, one blocking and one awaiting; nothing here does network
I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np

from hsn_client.errors import HsnError
from hsn_client.npz import NpzReferences, npz_files
from hsn_client.progress import ProgressLine
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
    page_from_json,
)
from hsn_client.signals import Batch, Signals, as_batch, batch_body, json_body

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request: ``request`` holds httpx's keyword arguments (params, json, content,
    headers). ``idempotent``: sending it twice does what sending it once does."""

    method: str
    path: str
    request: dict[str, Any] = field(default_factory=dict)
    idempotent: bool = True
    of_collection: bool = True  # a data route: under /collections/{name} for a collection


Operation = Generator[Call, Any, T]


class Operations:
    """The API's calls. ``max_batch``: signals a request may carry (None: read from the
    service's OpenAPI document on first need, with the largest body it takes);
    ``npy``: send signals as ``.npy`` bodies; ``collection``: the collection the data calls
    are for (None: the routes without a collection, which serve ``default``)."""

    def __init__(self, max_batch: int | None, npy: bool, collection: str | None = None) -> None:
        self.max_batch = max_batch
        self.max_body_bytes: int | None = None  # unknown: pieces are cut by count alone
        self.npy = npy
        self.prefix = "" if collection is None else f"/collections/{_segment(collection)}"

    def located(self, call: Call) -> Call:
        """``call`` with its path where the service serves it for this client's collection."""
        if not call.of_collection or not self.prefix:
            return call
        return replace(call, path=self.prefix + call.path)

    def batch_limit(self) -> Operation[int]:
        if self.max_batch is None:
            spec = yield Call("GET", "/openapi.json", of_collection=False)
            self.max_batch, self.max_body_bytes = batch_limit_of(spec), body_limit_of(spec)
        return self.max_batch

    def _pieces(
        self, count: int, limit: int, body_of: Callable[[int, int], dict]
    ) -> Iterator[tuple[int, int, dict]]:
        """(start, stop, request arguments) for items [0, count) cut into pieces of at most
        ``limit``, a piece whose body is over the service's byte limit cut in halves until it
        fits (one item goes as it is: the service's 413 then names it); once a piece had to be
        cut, the next start at the longest size that fitted, so a large load does not build
        and drop an oversized body for every piece. Made one at a time, so a load never holds
        more than a piece's body."""

        def fitting(start: int, stop: int) -> Iterator[tuple[int, int, dict]]:
            body = body_of(start, stop)
            over = self.max_body_bytes is not None and len(body["content"]) > self.max_body_bytes
            if not over or stop - start == 1:
                yield start, stop, body
                return
            middle = (start + stop) // 2
            yield from fitting(start, middle)
            yield from fitting(middle, stop)

        start, size = 0, limit
        while start < count:
            stop = min(start + size, count)
            longest = 0
            for piece in fitting(start, stop):
                longest = max(longest, piece[1] - piece[0])
                yield piece
            if longest < stop - start:
                size = longest
            start = stop

    def _split(self, x: Signals, path: str, query: dict[str, Any]) -> Operation[list[Any]]:
        """One request per piece of the batch the service's limits allow; the answers in
        order. Only for routes whose answer for a signal does not depend on the other signals
        sent with it."""
        batch = as_batch(x)
        limit = yield from self.batch_limit()
        answers = []

        def body_of(start: int, stop: int) -> dict:
            return batch_body(batch[start:stop], query, query, self.npy)

        for start, stop, body in self._pieces(len(batch), limit, body_of):
            label = f"signals {start} to {stop - 1}" if stop - start < len(batch) else None
            answers.append((yield from _piece(Call("POST", path, body), label)))
        return answers

    def embed(self, x: Signals) -> Operation[np.ndarray]:
        answers = yield from self._split(x, "/embed", {})
        return np.concatenate([np.asarray(a["embeddings"], dtype=np.float32) for a in answers])

    def keypoints(self, x: Signals) -> Operation[Keypoints]:
        answers = yield from self._split(x, "/keypoints", {})
        per_signal = [signal for a in answers for signal in a["keypoints"]]
        return Keypoints.from_json(
            {"keypoints": per_signal, "model_version": answers[-1]["model_version"]}
        )

    def search(
        self, x: Signals, k: int, **filters: str | bool | None
    ) -> Operation[list[SearchResult]]:
        answers = yield from self._split(x, "/search", {"k": k, **filters})
        return [SearchResult.from_json(r) for a in answers for r in a["results"]]

    def align(
        self,
        x: Signals,
        positions: dict[str, float] | None,
        reference_id: str | None,
        element_id: str | None,
        mode: str,
        keypoints: Sequence[str] | None,
        average: bool,
        length: int | None,
        min_confidence: float | None,
    ) -> Operation[Alignment]:
        # Never split: the target, shrinkage and average are the whole request's.
        given = {"positions": positions, "reference_id": reference_id, "element_id": element_id}
        target = {name: value for name, value in given.items() if value is not None}
        options = {
            "mode": mode,
            "average": average,
            "length": length,
            "min_confidence": min_confidence,
        }
        fields = {
            **options,
            "target": target or None,
            "keypoints": None if keypoints is None else list(keypoints),
        }
        query = {
            **options,
            "reference_id": reference_id,
            "element_id": element_id,
            "keypoints": None if keypoints is None else ",".join(keypoints),
        }
        # Explicit positions have no query form: such a request goes as JSON.
        body = batch_body(as_batch(x), fields, query, self.npy and positions is None)
        return Alignment.from_json((yield Call("POST", "/align", body)))

    def verify(self, x: Signals, element_id: str) -> Operation[Verification]:
        # Never split: the score averages over the session's signals.
        options = {"element_id": element_id}
        body = batch_body(as_batch(x), options, options, self.npy)
        return Verification.from_json((yield Call("POST", "/verify", body)))

    def drift(
        self, x: Signals, element_id: str, baseline_sessions: int | None
    ) -> Operation[BatchDrift]:
        # Never split: the score and the two-sample test are of the whole session.
        options = {"element_id": element_id, "baseline_sessions": baseline_sessions}
        body = batch_body(as_batch(x), options, options, self.npy)
        return BatchDrift.from_json((yield Call("POST", "/drift", body)))

    def add_references(
        self,
        signals: Signals,
        element_ids: Sequence[str],
        session_ids: Sequence[str],
        ids: Sequence[str] | None,
        metadata: Sequence[dict[str, Any] | None] | None,
        recorded_at: Sequence[datetime | str | None] | None,
    ) -> Operation[list[str]]:
        batch = as_batch(signals)
        columns = {
            "element_id": element_ids,
            "session_id": session_ids,
            "id": ids,
            "metadata": metadata,
            "recorded_at": recorded_at,
        }
        for name, column in columns.items():
            if column is not None and len(column) != len(batch):
                raise ValueError(f"{len(column)} values of {name} for {len(batch)} signals")
        limit = yield from self.batch_limit()

        def body_of(start: int, stop: int) -> dict:
            return json_body(
                {"references": [_reference(batch, columns, i) for i in range(start, stop)]}
            )

        stored: list[str] = []
        for start, stop, body in self._pieces(len(batch), limit, body_of):
            # Without ids each attempt would store new references: only ids make it repeatable.
            call = Call("POST", "/references", body, ids is not None)
            label = f"references {start} to {stop - 1}" if stop - start < len(batch) else None
            stored += (yield from _piece(call, label))["ids"]
        return stored

    def load_npz(self, path: str | Path, progress: bool) -> Operation[list[str]]:
        stored: list[str] = []
        for file in npz_files(path):
            stored += yield from self._load_npz_file(file, progress)
        return stored

    def _load_npz_file(self, path: Path, progress: bool) -> Operation[list[str]]:
        references = NpzReferences.read(path)
        limit = yield from self.batch_limit()
        stored: list[str] = []
        label = f"loading {references.path.name}"
        with ProgressLine(label, len(references), "references", progress) as shown:

            def body_of(start: int, stop: int) -> dict:
                return {
                    "content": references.piece(start, stop),
                    "headers": {"content-type": "application/octet-stream"},
                }

            for start, stop, body in self._pieces(len(references), limit, body_of):
                call = Call("POST", "/references/npz", body, references.has_ids)
                answer = yield from _piece(
                    call, f"{references.path}, references {start} to {stop - 1}"
                )
                stored += answer["ids"]
                shown.update(stop)
        return stored

    def get_reference(self, ref_id: str) -> Operation[Reference]:
        return Reference.from_json((yield Call("GET", f"/references/{_segment(ref_id)}")))

    def delete_reference(self, ref_id: str) -> Operation[None]:
        yield Call("DELETE", f"/references/{_segment(ref_id)}")

    def list_references(
        self, element_id: str | None, limit: int, offset: int
    ) -> Operation[Page[ReferenceSummary]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if element_id is not None:
            params["element_id"] = element_id
        answer = yield Call("GET", "/references", {"params": params})
        return page_from_json(answer, ReferenceSummary)

    def elements(
        self, limit: int, offset: int, contains: str | None
    ) -> Operation[Page[ElementSummary]]:
        params = {"limit": limit, "offset": offset}
        if contains:
            params["contains"] = contains
        answer = yield Call("GET", "/elements", {"params": params})
        return page_from_json(answer, ElementSummary)

    def element_drift(
        self, element_id: str, baseline_sessions: int | None
    ) -> Operation[ElementDrift]:
        params = {} if baseline_sessions is None else {"baseline_sessions": baseline_sessions}
        path = f"/elements/{_segment(element_id)}/drift"
        return ElementDrift.from_json((yield Call("GET", path, {"params": params})))

    def model(self) -> Operation[dict[str, Any]]:
        return (yield Call("GET", "/model"))

    def collections(self) -> Operation[list[Collection]]:
        answer = yield Call("GET", "/collections", of_collection=False)
        return [Collection.from_json(item) for item in answer["items"]]

    def collection(self, name: str) -> Operation[Collection]:
        path = f"/collections/{_segment(name)}"
        return Collection.from_json((yield Call("GET", path, of_collection=False)))

    def create_collection(self, name: str, model: str | None) -> Operation[Collection]:
        body = {"json": {"name": name, "model": model}}
        # not repeated after a broken connection: a second try would answer 409
        call = Call("POST", "/collections", body, idempotent=False, of_collection=False)
        return Collection.from_json((yield call))

    def delete_collection(self, name: str) -> Operation[None]:
        yield Call("DELETE", f"/collections/{_segment(name)}", of_collection=False)


def body_limit_of(spec: dict[str, Any]) -> int | None:
    """The largest request body the service takes, in bytes, as its OpenAPI document states
    it (``x-max-body-bytes`` of ``info``, app/openapi.py; None from a service that does not)."""
    limit = spec.get("info", {}).get("x-max-body-bytes")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def batch_limit_of(spec: dict[str, Any]) -> int:
    """The largest batch the service takes, as its OpenAPI document states it: ``maxItems`` of
    ``/embed``'s ``signals`` (app/openapi.py writes HSN_MAX_BATCH there)."""
    try:
        body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
        return int(body["schema"]["properties"]["signals"]["maxItems"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HsnError(
            "the service's /openapi.json states no batch limit (maxItems of /embed's signals):"
            " give the client max_batch"
        ) from exc


def _piece(call: Call, label: str | None) -> Operation[Any]:
    """The answer to ``call``, one piece of a split batch; its error is prefixed with
    ``label`` naming the piece, since the indices in the service's detail count from the
    piece's first item."""
    try:
        return (yield call)
    except HsnError as exc:
        if label is None:
            raise
        raise HsnError(f"{label}: {exc}", exc.status, exc.detail) from exc


def _reference(batch: Batch, columns: dict[str, Sequence[Any] | None], i: int) -> dict[str, Any]:
    """Reference ``i`` as the JSON ``POST /references`` takes."""
    reference: dict[str, Any] = {"signal": batch[i].tolist()}
    for name, column in columns.items():
        if column is not None and column[i] is not None:
            value = column[i]
            reference[name] = value.isoformat() if isinstance(value, datetime) else value
    return reference


def _segment(value: str) -> str:
    """``value`` as one path segment."""
    return quote(value, safe="")
