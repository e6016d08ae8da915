"""The service's operations: the model, its batcher, the store and the index working together.

Operations return typed results (dataclasses); the routers serialise them through the schemas.
Writes commit to the store and then reach the index through :class:`app.sync.IndexSync`, the one
owner of their consistency; searches read the in-memory index (and the neighbours' metadata from
the store, left out while the database is unreachable).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.alignment import align, check_keypoints, check_target, keypoint_errors, median_target
from app.calibration import AnomalyCalibration, FittedCache
from app.database import Database, StoreUnavailable
from app.drift import (
    Baseline,
    DriftCalibration,
    NothingToCompare,
    Session,
    session_drift,
    split,
    two_sample_test,
)
from app.errors import InputError
from app.index import Neighbor, VectorIndex
from app.index_policy import IndexPolicy
from app.observability import Metrics
from app.runtime import DynamicBatcher, Inference, ModelRuntime
from app.settings import Settings
from app.signals import SignalBatch, as_json_signal, batch_size, signals_of
from app.store import (
    SCHEMA_VERSION,
    ElementSummary,
    NewReference,
    ReferenceStore,
    ReferenceSummary,
    StoredReference,
    timestamp,
)
from app.sync import IndexSync, SyncStatus
from app.verification import (
    SAMPLE_ELEMENTS,
    SESSIONS_PER_ELEMENT,
    CannotCalibrate,
    ElementSample,
    Threshold,
    calibrated_probe_size,
    fit_threshold,
    impostor_quantile,
    verification_score,
)

log = logging.getLogger(__name__)

SERVED_BY = f"{socket.gethostname()}:{os.getpid()}"
CALIBRATION_REFERENCES = 256  # of one session, at most, in the verification calibration
OPEN_SET_NEIGHBORS = 10  # x verify_k neighbours searched for a reference's best other element
NEAREST_CANDIDATES = 10  # elements of those neighbours scored in full for the nearest other one


@dataclass
class ReferenceInput:
    element_id: str
    session_id: str
    signal: np.ndarray  # (C, L)
    id: str | None = None
    metadata: dict | None = None
    recorded_at: datetime | None = None  # None: when stored


@dataclass
class NeighborResult:
    id: str
    element_id: str
    session_id: str
    similarity: float
    metadata: dict | None  # None while the database is unreachable


@dataclass
class PredictedElement:
    element_id: str
    confidence: float
    known: bool | None = None  # None: fewer than two elements stored, nothing to calibrate on


@dataclass
class AnomalyResult:
    score: float
    is_anomaly: bool
    threshold: float
    calibrated_on: str


@dataclass
class SearchResult:
    neighbors: list[NeighborResult]
    predicted_element: PredictedElement | None
    anomaly: AnomalyResult | None


@dataclass
class ReferencePage:
    items: list[ReferenceSummary]
    total: int
    limit: int
    offset: int


@dataclass
class ElementPage:
    items: list[ElementSummary]
    total: int
    limit: int
    offset: int


@dataclass
class DriftBaseline:
    sessions: list[str]
    references: int
    first_recorded_at: str
    last_recorded_at: str


@dataclass
class DriftCalibratedOn:
    elements: int  # elements whose baseline sessions calibrated the score
    sessions: int  # leave-one-session-out distances the score is a share of


@dataclass
class SessionDriftResult:
    session_id: str
    recorded_at: str
    references: int
    distance: float
    score: float
    drifting: bool


@dataclass
class DriftReport:
    element_id: str
    baseline: DriftBaseline
    sessions: list[SessionDriftResult]
    threshold: float
    calibrated_on: DriftCalibratedOn


@dataclass
class BatchDrift:
    element_id: str
    baseline: DriftBaseline
    signals: int
    distance: float
    score: float
    drifting: bool
    threshold: float
    centroid_distance: float  # 1 - cosine of the batch's and the baseline's mean embeddings
    mmd: float
    p_value: float
    permutations: int
    calibrated_on: DriftCalibratedOn


@dataclass
class NearestOther:
    element_id: str
    similarity: float


@dataclass
class VerifyResult:
    element_id: str
    score: float  # the similarity, marked down by a more similar other element
    accepted: bool
    threshold: float
    far: float
    signals_used: int
    similarity: float
    nearest_other: NearestOther | None


@dataclass
class AlignedResult:
    aligned: list  # the API's signal form
    warp: dict[str, list[float]]  # {"source", "target"}
    keypoints_used: list[str]
    skipped: list[dict[str, str]]  # {"name", "reason"}


@dataclass
class AlignResult:
    results: list[AlignedResult]
    target: dict[str, float]
    reference: str | None
    shrinkage: dict[str, float]
    average: dict[str, list] | None  # {"mean", "std"}
    model_version: str


@dataclass
class ReadyStatus:
    ready: bool
    references: int
    stored: int | None
    model_version: str
    engine: str
    index: str
    inference_workers: int
    database: str
    degraded: bool
    sync: SyncStatus
    served_by: str


class SignalService:
    def __init__(self, settings: Settings, metrics: Metrics, database: Database) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime = ModelRuntime(
            settings.model_dir, settings.max_batch, settings.threads, settings.engine
        )
        workers = settings.inference_worker_count
        self.batcher = DynamicBatcher(
            self.runtime,
            enabled=settings.dynamic_batching,
            max_signals=settings.batch_max_signals,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            observe=metrics.observe_inference,
            workers=workers,
        )
        log.info(
            "%d inference worker(s) x %d thread(s), dynamic batching %s, references in %s",
            workers,
            settings.threads,
            "on" if settings.dynamic_batching else "off",
            database.describe(),
        )
        self.store = ReferenceStore(database, settings.change_log_keep)
        with database.exclusive():  # one process at a time creates or migrates the schema
            found = self.store.migrate()
        if found not in (0, SCHEMA_VERSION):
            log.info("migrated the database from schema version %d", found)
        self.index = VectorIndex(
            self.runtime.dim,
            IndexPolicy(settings.index_type, settings.auto_approximate_above),
            ivf_nprobe=settings.ivf_nprobe,
            hnsw_m=settings.hnsw_m,
            ef_search=settings.hnsw_ef_search,
            search_threads=settings.search_threads,
        )
        # Drift and verification calibrations, by baseline size and probe size: refitted as
        # the references change (the change log drops them, see app/sync.py)
        self.drift_calibrations: FittedCache[DriftCalibration] = FittedCache()
        self.thresholds: FittedCache[Threshold] = FittedCache()
        self.sync = IndexSync(
            self.store,
            self.index,
            AnomalyCalibration(settings.anomaly_k),
            self.runtime.version,
            self._embed_signals,
            settings.data_dir / f"index-{self.runtime.version}.npz",
            settings.sync_interval_ms / 1000,
            other_calibrations=[self.drift_calibrations, self.thresholds],
        )
        self.keypoint_errors = keypoint_errors(self.runtime.manifest)  # for alignment's anchors
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.batcher.start()
        await self.sync.start()
        self.metrics.index_size.set(len(self.index))
        # Everything loaded so far (torch, ONNX Runtime, the app) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise took ~100 ms each under
        # load and stalled every request in flight.
        gc.collect()  # what is garbage now would otherwise never be collected
        gc.freeze()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.sync.stop()
        await self.batcher.stop()
        self.store.close()

    # -- inference ---------------------------------------------------------------------------
    async def embed(self, batch: SignalBatch) -> Inference:
        return await self.batcher.infer(batch)

    async def _embed_signals(self, signals: list[np.ndarray]) -> np.ndarray:
        return (await self.embed([s[None] for s in signals])).embeddings

    # -- references --------------------------------------------------------------------------
    async def upsert(self, refs: list[ReferenceInput]) -> list[str]:
        """Store references, in order: an id given twice ends as its last version. Returns
        each reference's id (new ones are made up) once committed and searchable here."""
        ids = [r.id or uuid.uuid4().hex for r in refs]
        last = sorted({ref_id: n for n, ref_id in enumerate(ids)}.values())
        kept = [refs[n] for n in last]
        embeddings = await self._embed_signals([r.signal for r in kept])
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
        committed = await run_in_threadpool(self.store.upsert, rows, self.runtime.version)
        await self.sync.after_commit(committed.seq)
        self.metrics.index_size.set(len(self.index))
        return ids

    async def delete(self, ref_id: str) -> bool:
        committed = await run_in_threadpool(self.store.delete, ref_id)
        if committed is None:
            return False
        await self.sync.after_commit(committed.seq)
        self.metrics.index_size.set(len(self.index))
        return True

    async def get_reference(self, ref_id: str, field: str = "path.ref_id") -> StoredReference:
        ref = await run_in_threadpool(self.store.get, ref_id)
        if ref is None:
            raise InputError(
                field, f"no reference with id {ref_id!r}", status=404, kind="not_found"
            )
        return ref

    async def list_references(
        self, element_id: str | None, limit: int, offset: int
    ) -> ReferencePage:
        items, total = await run_in_threadpool(self.store.list, element_id, limit, offset)
        return ReferencePage(items, total, limit, offset)

    # -- search ------------------------------------------------------------------------------
    async def search(
        self,
        batch: SignalBatch,
        k: int,
        element_id: str | None = None,
        session_id: str | None = None,
        exclude_session_id: str | None = None,
        expected_element: str | None = None,
    ) -> list[SearchResult]:
        if expected_element is not None and not self.index.has_element(expected_element):
            raise InputError(
                "expected_element",
                f"no references of element {expected_element!r}",
                status=404,
                kind="not_found",
            )
        embeddings = (await self.embed(batch)).embeddings
        await self.sync.ensure_fresh()
        return await run_in_threadpool(
            self._search,
            embeddings,
            k,
            element_id,
            session_id,
            exclude_session_id,
            expected_element,
        )

    def _search(
        self, embeddings, k, element_id, session_id, exclude_session_id, expected_element
    ) -> list[SearchResult]:
        rows = self.index.search(embeddings, k, element_id, session_id, exclude_session_id)
        # The neighbours serve the anomaly score too when they came from the same pool.
        same_pool = (
            session_id is None
            and exclude_session_id is None
            and element_id == expected_element
            and k >= self.settings.anomaly_k
        )
        scores = self._anomaly_scores(embeddings, expected_element, rows if same_pool else None)
        keys = np.array(sorted({n.key for row in rows for n in row}), dtype=np.int64)
        described = self.index.describe(keys)
        try:
            metadata: dict[int, dict] | None = self.store.metadata(keys.tolist())
        except StoreUnavailable:
            metadata = None
        threshold = self.settings.anomaly_threshold
        open_set = self._open_set_threshold()
        results = []
        for row, score in zip(rows, scores, strict=True):
            neighbors = [
                NeighborResult(
                    *described[n.key],
                    similarity=n.similarity,
                    metadata=None if metadata is None else metadata.get(n.key, {}),
                )
                for n in row
                if n.key in described
            ]
            anomaly = None
            if not np.isnan(score):
                anomaly = AnomalyResult(
                    float(score),
                    bool(score > threshold),
                    threshold,
                    expected_element or "all references",
                )
            results.append(SearchResult(neighbors, vote(neighbors), anomaly))
        if open_set is not None:
            self._mark_known(embeddings, results, open_set.threshold)
        return results

    def _mark_known(
        self, embeddings: np.ndarray, results: list[SearchResult], threshold: float
    ) -> None:
        """Sets each predicted element's ``known``: the signal's similarity to that element at
        least the open-set threshold. One search per predicted element, not per signal."""
        by_element: dict[str, list[int]] = {}
        for i, result in enumerate(results):
            if result.predicted_element is not None:
                by_element.setdefault(result.predicted_element.element_id, []).append(i)
        for element, at in by_element.items():
            for i, similarity in zip(at, self._similarities(embeddings[at], element), strict=True):
                results[i].predicted_element.known = bool(similarity >= threshold)

    def _anomaly_scores(
        self,
        queries: np.ndarray,
        expected_element: str | None,
        neighbors: list[list[Neighbor]] | None,
    ) -> np.ndarray:
        """Calibrated scores in [0, 1]; NaN when there is nothing to calibrate against (or the
        calibration must be made while the database is unreachable)."""
        try:
            calibrated = self.sync.calibrated(within_element=expected_element is not None)
        except StoreUnavailable:
            return np.full(len(queries), np.nan)
        if len(calibrated) == 0:
            return np.full(len(queries), np.nan)
        if neighbors is None:
            neighbors = self.index.search(
                queries, self.settings.anomaly_k, element_id=expected_element
            )
        similarities = [[n.similarity for n in row] for row in neighbors]
        return self.sync.calibration.scores(calibrated, similarities)

    # -- alignment ---------------------------------------------------------------------------
    async def align(
        self,
        batch: SignalBatch,
        *,
        positions: dict[str, float] | None = None,
        reference_id: str | None = None,
        element_id: str | None = None,
        mode: str = "piecewise",
        keypoints: list[str] | None = None,
        average: bool = False,
        length: int | None = None,
        min_confidence: float | None = None,
    ) -> AlignResult:
        """Aligns the batch's signals by their keypoints on a target: explicit ``positions``, a
        stored reference's keypoints, an element's median keypoints, or (none given) the
        median of the batch's own (see app/alignment.py)."""
        names = self.runtime.keypoint_names
        keypoints = check_keypoints(keypoints, names) if keypoints is not None else None
        confidence = (
            self.settings.align_min_confidence if min_confidence is None else min_confidence
        )
        if positions is not None:
            check_target(positions, names, keypoints, "body.target.positions")
        signals = signals_of(batch)
        inference = await self.embed(batch)
        if positions is not None:
            target = positions
        elif reference_id is not None or element_id is not None:
            target = await self._keypoint_target(reference_id, element_id, confidence)
        else:
            target = median_target(inference.positions, inference.confidences, names, confidence)
        result = await run_in_threadpool(
            align,
            signals,
            inference.positions,
            inference.confidences,
            names,
            target,
            mode=mode,
            keypoints=keypoints,
            min_confidence=confidence,
            errors=self.keypoint_errors,
            length=length,
            average=average,
        )
        return AlignResult(
            [
                AlignedResult(
                    as_json_signal(r.aligned),
                    {"source": r.warp.source, "target": r.warp.target},
                    r.keypoints_used,
                    [{"name": s.name, "reason": s.reason} for s in r.skipped],
                )
                for r in result.results
            ],
            result.target,
            result.reference,
            result.shrinkage,
            None
            if result.mean is None
            else {"mean": as_json_signal(result.mean), "std": as_json_signal(result.std)},
            self.runtime.version,
        )

    async def _keypoint_target(
        self, reference_id: str | None, element_id: str | None, min_confidence: float
    ) -> dict[str, float]:
        """The median confident keypoints of a stored reference, or of (up to
        HSN_ALIGN_TARGET_REFERENCES of) an element's references, by this model."""
        if reference_id is not None:
            stored = await self.get_reference(reference_id, "body.target.reference_id")
            signals = [np.atleast_2d(np.asarray(stored.signal, np.float32))]  # (C, L)
        else:
            self._require_element(element_id, "body.target.element_id")
            keys = self.index.keys_of_element(element_id)[: self.settings.align_target_references]
            signals = list((await run_in_threadpool(self.store.signals, keys.tolist())).values())
        inference = await self.embed([s[None] for s in signals])
        return median_target(
            inference.positions, inference.confidences, self.runtime.keypoint_names, min_confidence
        )

    # -- verification and the open set ------------------------------------------------------
    async def verify(self, element_id: str, batch: SignalBatch) -> VerifyResult:
        self._require_element(element_id, "body.element_id")
        embeddings = (await self.embed(batch)).embeddings
        await self.sync.ensure_fresh()
        return await run_in_threadpool(self._verify, element_id, embeddings)

    def _verify(self, element_id: str, probe: np.ndarray) -> VerifyResult:
        size = calibrated_probe_size(len(probe))
        try:
            threshold = self.thresholds.get(
                ("verify", size), lambda: self._fit_verify_threshold(size)
            )
        except CannotCalibrate as exc:
            raise InputError("body.element_id", str(exc), status=409, kind="conflict") from exc
        similarity = self._element_score(probe, element_id)
        nearest = self._nearest_other(probe, element_id)
        score = verification_score(similarity, nearest.similarity if nearest else None)
        accepted = bool(score >= threshold.threshold)
        self.metrics.verifications.labels(str(accepted).lower()).inc()
        return VerifyResult(
            element_id,
            score,
            accepted,
            threshold.threshold,
            threshold.far,
            len(probe),
            similarity,
            nearest,
        )

    def _element_score(self, probe: np.ndarray, element_id: str) -> float:
        """app.verification's similarity of a probe (its signals together) to an element."""
        return float(np.mean(self._similarities(probe, element_id)))

    def _similarities(self, signals: np.ndarray, element_id: str) -> np.ndarray:
        """Each signal's similarity to the element, from the index: the mean of its k nearest
        references of the element."""
        rows = self.index.search(signals, self.settings.verify_k, element_id=element_id)
        return np.array([np.mean([n.similarity for n in row]) for row in rows])

    def _nearest_other(self, probe: np.ndarray, element_id: str) -> NearestOther | None:
        """The stored element other than ``element_id`` most similar to the probe (None when
        there is none), scored in full among the elements nearest its signals."""
        closest: dict[str, float] = {}
        for by_element in self._other_elements_near(probe, element_id):
            for other, similarities in by_element.items():
                closest[other] = max(closest.get(other, -1.0), similarities[0])
        candidates = sorted(closest, key=closest.get, reverse=True)[:NEAREST_CANDIDATES]
        scored = [NearestOther(c, self._element_score(probe, c)) for c in candidates]
        return max(scored, key=lambda other: other.similarity, default=None)

    def _other_elements_near(
        self, probes: np.ndarray, element_id: str
    ) -> list[dict[str, list[float]]]:
        """Per probe signal, the elements but ``element_id`` among its OPEN_SET_NEIGHBORS x
        verify_k nearest references (where the most similar other element almost always is),
        each with those references' similarities, most similar first."""
        k = self.settings.verify_k
        rows = self.index.search(probes, OPEN_SET_NEIGHBORS * k, exclude_element_id=element_id)
        found = []
        for row in rows:
            described = self.index.describe(np.array([n.key for n in row], dtype=np.int64))
            by_element: dict[str, list[float]] = {}
            for n in row:  # most similar first
                if n.key in described:
                    by_element.setdefault(described[n.key][1], []).append(n.similarity)
            found.append(by_element)
        return found

    def _sample_elements(self, min_sessions: int) -> list[str]:
        """Up to SAMPLE_ELEMENTS elements with at least ``min_sessions`` sessions (the same
        ones while the references stay the same)."""
        counts = self.index.session_counts()
        names = [e for e, n in counts.items() if n >= min_sessions]
        if len(names) <= SAMPLE_ELEMENTS:
            return names
        picked = np.random.default_rng(0).choice(len(names), SAMPLE_ELEMENTS, replace=False)
        return [names[i] for i in sorted(picked)]

    def _element_sample(self, element_id: str) -> ElementSample:
        sessions = []
        for keys in self.index.sessions_of_element(element_id).values():
            _, vectors = self.store.embeddings(keys[:CALIBRATION_REFERENCES], self.runtime.version)
            if len(vectors):
                sessions.append(vectors)
        return ElementSample(element_id, sessions)

    def _fit_verify_threshold(self, probe_size: int) -> Threshold:
        elements = [self._element_sample(e) for e in self._sample_elements(1)]
        return fit_threshold(
            [e for e in elements if e.sessions],
            probe_size,
            self.settings.verify_far,
            self.settings.verify_k,
        )

    def _open_set_threshold(self) -> Threshold | None:
        """None while it cannot be calibrated (fewer than two elements), or must be fitted while
        the database is unreachable."""
        try:
            return self.thresholds.get("open set", self._fit_open_set_threshold)
        except (CannotCalibrate, StoreUnavailable):
            return None

    def _fit_open_set_threshold(self) -> Threshold:
        """Each sampled reference (a few per element) against the best element but its own."""
        elements = self._sample_elements(1)
        if len(elements) < 2:
            raise CannotCalibrate("the open set needs references of at least two elements")
        k = self.settings.verify_k
        best_other = []
        for element in elements:
            # the first reference of each of a few sessions: one signal per probe
            firsts = [keys[:1] for keys in self.index.sessions_of_element(element).values()]
            keys = np.concatenate(firsts[:SESSIONS_PER_ELEMENT])
            _, probes = self.store.embeddings(keys, self.runtime.version)
            if not len(probes):
                continue
            best_other += [
                max(float(np.mean(similarities[:k])) for similarities in by_element.values())
                for by_element in self._other_elements_near(probes, element)
                if by_element
            ]
        far = self.settings.verify_far
        return Threshold(
            impostor_quantile(np.array(best_other), far), far, len(best_other), 0, None
        )

    # -- drift -------------------------------------------------------------------------------
    async def elements(self, limit: int, offset: int, contains: str | None = None) -> ElementPage:
        items, total = await run_in_threadpool(self.store.elements, limit, offset, contains)
        return ElementPage(items, total, limit, offset)

    async def drift(self, element_id: str, baseline_sessions: int | None) -> DriftReport:
        return await run_in_threadpool(self._drift, element_id, baseline_sessions)

    def _drift(self, element_id: str, baseline_sessions: int | None) -> DriftReport:
        n = baseline_sessions or self.settings.drift_baseline_sessions
        sessions = self._sessions_of(element_id, "path.element_id")
        try:
            baseline, later = split(sessions, n)
        except NothingToCompare as exc:  # what is stored, not the request, falls short: 409
            raise InputError(
                "query.baseline_sessions", str(exc), status=409, kind="conflict"
            ) from exc
        calibration = self._drift_calibration(n)
        threshold = self.settings.drift_threshold
        results = [
            SessionDriftResult(**vars(d), drifting=d.score > threshold)
            for d in session_drift(baseline, later, calibration)
        ]
        self.metrics.observe_drift(element_id, [r.score for r in results], results[-1].drifting)
        return DriftReport(
            element_id,
            _baseline_summary(baseline),
            results,
            threshold,
            DriftCalibratedOn(calibration.elements, len(calibration.null_distances)),
        )

    async def drift_batch(
        self, element_id: str, batch: SignalBatch, baseline_sessions: int | None
    ) -> BatchDrift:
        if batch_size(batch) < 2:
            raise InputError(
                "body.signals", "a two-sample test needs at least two signals", kind="too_short"
            )
        self._require_element(element_id, "body.element_id")
        embeddings = (await self.embed(batch)).embeddings
        return await run_in_threadpool(self._drift_batch, element_id, embeddings, baseline_sessions)

    def _drift_batch(
        self, element_id: str, embeddings: np.ndarray, baseline_sessions: int | None
    ) -> BatchDrift:
        n = baseline_sessions or self.settings.drift_baseline_sessions
        sessions = self._sessions_of(element_id, "body.element_id")
        try:
            baseline = Baseline.of(sessions[:n])  # all the element has, when fewer
        except NothingToCompare as exc:
            raise InputError("body.element_id", str(exc), status=409, kind="conflict") from exc
        calibration = self._drift_calibration(n)
        (result,) = session_drift(baseline, [Session("", "", embeddings)], calibration)
        reference = np.concatenate([s.embeddings for s in baseline.sessions])
        test = two_sample_test(embeddings, reference, self.settings.drift_permutations)
        centroid, mean = baseline.centroid, embeddings.mean(0)
        cosine = float(centroid @ mean / (np.linalg.norm(centroid) * np.linalg.norm(mean) + 1e-12))
        threshold = self.settings.drift_threshold
        self.metrics.drift_scores.observe(result.score)
        return BatchDrift(
            element_id,
            _baseline_summary(baseline),
            len(embeddings),
            result.distance,
            result.score,
            result.score > threshold,
            threshold,
            1.0 - cosine,
            test.mmd,
            test.p_value,
            test.permutations,
            DriftCalibratedOn(calibration.elements, len(calibration.null_distances)),
        )

    def _sessions_of(self, element_id: str, field: str) -> list[Session]:
        """The element's sessions in the order of their first recording, with this model's
        embeddings."""
        refs = self.store.element_references(element_id)
        if not refs:
            raise InputError(
                field, f"no references of element {element_id!r}", status=404, kind="not_found"
            )
        keys, vectors = self.store.embeddings(np.array([r.key for r in refs]), self.runtime.version)
        vector_of = dict(zip(keys.tolist(), vectors, strict=True))
        grouped: dict[str, list[np.ndarray]] = {}
        first: dict[str, str] = {}
        for ref in refs:  # in time order: a session's first row is its first recording
            if ref.key in vector_of:
                grouped.setdefault(ref.session_id, []).append(vector_of[ref.key])
                first.setdefault(ref.session_id, ref.recorded_at)
        return [Session(s, first[s], np.stack(v)) for s, v in grouped.items()]

    def _drift_calibration(self, baseline_sessions: int) -> DriftCalibration:
        # a baseline of one session is calibrated on pairs of sessions (the least to leave out)
        n = max(2, baseline_sessions)
        return self.drift_calibrations.get(("drift", n), lambda: self._fit_drift_calibration(n))

    def _fit_drift_calibration(self, n: int) -> DriftCalibration:
        baselines = []
        for element in self._sample_elements(2):
            try:
                baselines.append(Baseline.of(self._sessions_of(element, "")[:n]))
            except NothingToCompare:
                continue
        try:
            return DriftCalibration.fit(baselines)
        except NothingToCompare as exc:
            raise InputError("path.element_id", str(exc), status=409, kind="conflict") from exc

    def _require_element(self, element_id: str, field: str) -> None:
        if not self.index.has_element(element_id):
            raise InputError(
                field, f"no references of element {element_id!r}", status=404, kind="not_found"
            )

    # -- operations --------------------------------------------------------------------------
    async def status(self) -> ReadyStatus:
        sync = self.sync.status()
        stored = None  # not asked while the database is known to be down: a probe must not wait
        if sync.database == "ok":
            try:
                stored = await run_in_threadpool(self.store.count)
            except StoreUnavailable:
                pass
        return ReadyStatus(
            ready=self.ready,
            references=len(self.index),
            stored=stored,
            model_version=self.runtime.version,
            engine=self.runtime.engine,
            index=self.index.current_kind,
            inference_workers=self.batcher.workers,
            database="ok" if stored is not None else "unreachable",
            degraded=stored is None,
            sync=sync,
            served_by=SERVED_BY,
        )


def _baseline_summary(baseline: Baseline) -> DriftBaseline:
    return DriftBaseline(
        [s.session_id for s in baseline.sessions],
        sum(len(s.embeddings) for s in baseline.sessions),
        baseline.sessions[0].recorded_at,
        baseline.sessions[-1].recorded_at,
    )


def vote(neighbors: list[NeighborResult]) -> PredictedElement | None:
    """kNN vote weighted by similarity (shifted to be positive): the element and its share."""
    if not neighbors:
        return None
    weights: dict[str, float] = {}
    for n in neighbors:
        weights[n.element_id] = weights.get(n.element_id, 0.0) + (1.0 + n.similarity) / 2
    element = max(weights, key=weights.get)
    return PredictedElement(element, weights[element] / sum(weights.values()))
