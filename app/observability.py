"""Prometheus metrics, JSON logs and request ids."""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# what the access log line adds about a request (the API key's id), filled in as it is served
access: contextvars.ContextVar[dict] = contextvars.ContextVar("access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


SERVED_BY = f"{socket.gethostname()}:{os.getpid()}"  # answers the X-Served-By header


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hsn_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hsn_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_signals = Histogram(
            "hsn_request_signals",
            "signals per request",
            ["route"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=self.registry,
        )
        self.batch_signals = Histogram(
            "hsn_model_batch_signals",
            "signals per model call (after dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "hsn_inference_seconds",
            "model call duration",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Per collection: one series each (bounded by the collections that exist; a deleted
        # collection's series are removed)
        self.index_size = Gauge(
            "hsn_index_references",
            "references in the collection's search index",
            ["collection"],
            registry=self.registry,
        )
        self.index_memory = Gauge(
            "hsn_index_memory_bytes",
            "memory this process holds of the collection's index (the mutable segment, the"
            " tombstones, the large segment's in-memory part)",
            ["collection"],
            registry=self.registry,
        )
        self.index_mapped = Gauge(
            "hsn_index_mapped_bytes",
            "the large segment's files this process maps (page cache, shared by the machine)",
            ["collection"],
            registry=self.registry,
        )
        self.index_disk = Gauge(
            "hsn_index_disk_bytes",
            "the large segment's folder on disk",
            ["collection"],
            registry=self.registry,
        )
        self.index_mutable = Gauge(
            "hsn_index_mutable_references",
            "references written since the large segment was built (searched exactly)",
            ["collection"],
            registry=self.registry,
        )
        self.index_tombstones = Gauge(
            "hsn_index_tombstones",
            "the large segment's references deleted or replaced since it was built",
            ["collection"],
            registry=self.registry,
        )
        self.index_building = Gauge(
            "hsn_index_building",
            "1 while this process builds the collection's next large segment",
            ["collection"],
            registry=self.registry,
        )
        self.model_memory = Gauge(
            "hsn_model_memory_bytes",
            "resident memory the process grew by loading the collection's model (shared by the"
            " collections of one model)",
            ["collection"],
            registry=self.registry,
        )
        self.sync_lag_entries = Gauge(
            "hsn_sync_lag_entries",
            "change-log entries this process has not applied to the collection's index yet",
            ["collection"],
            registry=self.registry,
        )
        self.sync_lag_seconds = Gauge(
            "hsn_sync_lag_seconds",
            "age of the oldest change-log entry of the collection not applied here (0: none)",
            ["collection"],
            registry=self.registry,
        )
        self.upgrade_embedded = Gauge(
            "hsn_upgrade_embedded",
            "references with the target's embedding, while the collection's model changes",
            ["collection"],
            registry=self.registry,
        )
        self.upgrade_references = Gauge(
            "hsn_upgrade_references",
            "references in the collection, while its model changes",
            ["collection"],
            registry=self.registry,
        )
        self.database_up = Gauge(
            "hsn_database_up", "1 when the database answered the last check", registry=self.registry
        )

        # Drift and verification: never one series per element (unbounded cardinality)
        self.drift_scores = Histogram(
            "hsn_drift_score",
            "drift scores of the sessions scored (GET /elements/{id}/drift, POST /drift)",
            buckets=(0.5, 0.9, 0.95, 0.99, 0.999, 1.0),
            registry=self.registry,
        )
        self.elements_drifting = Gauge(
            "hsn_elements_drifting",
            "elements whose latest session scored (by this process) is drifting",
            registry=self.registry,
        )
        self.verifications = Counter(
            "hsn_verifications_total",
            "POST /verify answers",
            ["accepted"],
            registry=self.registry,
        )
        self._drifting: set[str] = set()
        self._drifting_lock = threading.Lock()

    def observe_drift(self, element_id: str, scores: list[float], latest_drifting: bool) -> None:
        """Scores of one element's sessions, and whether its latest one drifts."""
        for score in scores:
            self.drift_scores.observe(score)
        with self._drifting_lock:
            if latest_drifting:
                self._drifting.add(element_id)
            else:
                self._drifting.discard(element_id)
            self.elements_drifting.set(len(self._drifting))

    def index_observer(self, collection: str) -> _IndexSize:
        """What a collection's IndexSync tells of its index size (an IndexObserver)."""
        return _IndexSize(self.index_size.labels(collection=collection))

    def forget_collection(self, collection: str) -> None:
        """A deleted collection's series go."""
        self.forget(
            collection,
            self.index_size,
            self.index_memory,
            self.index_mapped,
            self.index_disk,
            self.index_mutable,
            self.index_tombstones,
            self.index_building,
            self.model_memory,
            self.sync_lag_entries,
            self.sync_lag_seconds,
            self.upgrade_embedded,
            self.upgrade_references,
        )

    @staticmethod
    def forget(collection: str, *gauges: Gauge) -> None:
        """The collection's series of ``gauges`` go (those it has)."""
        for gauge in gauges:
            try:
                gauge.remove(collection)
            except KeyError:
                pass

    def observe_inference(self, signals: int, seconds: float) -> None:
        self.batch_signals.observe(signals)
        self.inference_seconds.observe(seconds)


class _IndexSize:
    """Told by a collection's app.sync.IndexSync what reached its index (an IndexObserver)."""

    def __init__(self, gauge) -> None:
        self.gauge = gauge

    def changed(self, writes: int, total: int) -> None:
        self.gauge.set(total)

    def rebuilt(self, total: int) -> None:
        self.gauge.set(total)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": request_id.get(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the middleware logs each request


class RequestContextMiddleware:
    """Request id (from ``X-Request-ID`` or new), per-route metrics and one log line a request.

    Pure ASGI rather than BaseHTTPMiddleware, so bodies stream through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, served_by: str) -> None:
        self.app, self.metrics = app, metrics
        self.served_by = served_by.encode()
        self.log = logging.getLogger("app.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id.set(rid)
        noted: dict = {}
        access_token = access.set(noted)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                sent = message.setdefault("headers", [])
                sent.append((b"x-request-id", rid.encode()))
                sent.append((b"x-served-by", self.served_by))  # which process answered
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(seconds)
            self.log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "fields": {
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                        "route": path,
                        **noted,
                    }
                },
            )
            request_id.reset(token)
            access.reset(access_token)
