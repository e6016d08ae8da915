"""Request and response bodies: the API's field names are a contract (fields may be added).

Each shape is defined once, here: services return these models, routers name them as their
``response_model`` (the OpenAPI document) and :func:`app.responses.respond` serialises them.
Arrays (embeddings, signals) stay numpy arrays inside a model until orjson writes them: their
fields are typed by their JSON schema alone (``Vectors``, ``SignalOut``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# One channel: a list of numbers; C channels: a list of C lists (channels first).
Signal = list[float] | list[list[float]]

_NUMBERS = {"type": "array", "items": {"type": "number"}}


def _signal_form(value: Any) -> Any:
    """A (C, L) array in the API's signal form: one channel as its list of numbers, each value
    written as the float64 it is exactly (as the API always has), not float32's shortest form."""
    if isinstance(value, np.ndarray):
        value = value.astype(np.float64)
        return value[0] if value.ndim == 2 and value.shape[0] == 1 else value
    return value


# A (C, L) signal answered as the API's signal form; (n, D) vectors answered as lists.
SignalOut = Annotated[
    Any,
    PlainSerializer(_signal_form),
    WithJsonSchema({"anyOf": [_NUMBERS, {"type": "array", "items": _NUMBERS}]}),
]
Vectors = Annotated[Any, WithJsonSchema({"type": "array", "items": _NUMBERS})]

EXAMPLE_SIGNAL = [0.0, 0.1, 0.4, 1.0, 0.4, 0.1, 0.0, -0.2] * 8


class Options(BaseModel):
    """The non-signal fields of a request with signals: from its JSON body, or from the query
    with a .npy body (fields they do not know are ignored)."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def from_query(cls, query: dict) -> dict:
        """A .npy request's query parameters as these fields (as they are, unless a request
        type's fields need more than one string each)."""
        return dict(query)


class NoOptions(Options):
    """The non-signal fields of /embed and /keypoints: none."""


class SignalsRequest(NoOptions):
    model_config = ConfigDict(json_schema_extra={"examples": [{"signals": [EXAMPLE_SIGNAL]}]})
    signals: list[Signal] = Field(min_length=1, description="a batch of signals")


class SearchOptions(Options):
    """The non-signal fields of a search (JSON, or query parameters with a .npy body)."""

    k: int = Field(5, ge=1, description="neighbours per signal (at most HSN_MAX_K)")
    element_id: str | None = Field(None, description="only neighbours of this element")
    session_id: str | None = Field(None, description="only neighbours of this session")
    exclude_session_id: str | None = Field(None, description="no neighbours of this session")
    expected_element: str | None = Field(
        None, description="calibrate the anomaly score on this element's references alone"
    )
    explain: bool = Field(
        False,
        description="add each anomaly's map: per sample, how unlike the signal is to the"
        " references its score compared it with (app/anomaly_map.py), and its peak",
    )


class SearchRequest(SearchOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"signals": [EXAMPLE_SIGNAL], "k": 5, "exclude_session_id": "pump-7/2026-11-02"}
            ]
        }
    )
    signals: list[Signal] = Field(min_length=1, description="a batch of signals")


class EmbedResponse(BaseModel):
    embeddings: Vectors = Field(description="one L2-normalised embedding per signal")
    dim: int
    model_version: str


class Keypoint(BaseModel):
    name: str
    position: float = Field(description="in the signal's own samples, sub-sample precision")
    confidence: float = Field(ge=0, le=1)


class KeypointsResponse(BaseModel):
    keypoints: list[list[Keypoint]]
    model_version: str


class ReferenceIn(BaseModel):
    id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="omit for a new id; an existing id is replaced",
    )
    element_id: str = Field(min_length=1, max_length=256)
    session_id: str = Field(min_length=1, max_length=256)
    signal: Signal
    metadata: dict[str, Any] | None = None
    recorded_at: datetime | None = Field(
        None,
        description="when the signal was recorded (ISO 8601; no zone: UTC); default: when stored."
        " An element's sessions are ordered by their first recording.",
    )

    @field_validator("metadata")
    @classmethod
    def _storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            json.dumps(value, allow_nan=False)
        except ValueError as exc:
            raise ValueError("NaN or infinite numbers cannot be stored") from exc
        return value


class ReferencesRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "references": [
                        {
                            "id": "pump-7-cycle-0001",
                            "element_id": "pump-7",
                            "session_id": "pump-7/2026-11-02",
                            "signal": EXAMPLE_SIGNAL,
                            "metadata": {"operator": "night shift"},
                            "recorded_at": "2026-11-02T22:15:00Z",
                        }
                    ]
                }
            ]
        }
    )
    references: list[ReferenceIn] = Field(min_length=1)


class ReferencesCreated(BaseModel):
    ids: list[str]


class ReferenceOut(BaseModel):
    id: str
    element_id: str
    session_id: str
    metadata: dict[str, Any]
    signal: SignalOut
    model_version: str
    updated_at: str
    recorded_at: str


class ReferenceSummary(BaseModel):
    id: str
    element_id: str
    session_id: str
    metadata: dict[str, Any]
    length: int
    model_version: str
    updated_at: str
    recorded_at: str


class ReferenceList(BaseModel):
    items: list[ReferenceSummary]
    total: int
    limit: int
    offset: int


class Neighbor(BaseModel):
    id: str
    element_id: str
    session_id: str
    similarity: float = Field(description="cosine similarity, in [-1, 1]")
    metadata: dict[str, Any] | None = Field(
        description="null only while the database is unreachable (the search answers from memory)"
    )


class PredictedElement(BaseModel):
    element_id: str
    confidence: float = Field(ge=0, le=1, description="similarity-weighted share of the vote")
    known: bool | None = Field(
        description="false when the signal is less like this element than the open-set threshold"
        " (HSN_VERIFY_FAR) allows: most likely an element the service has never stored. Null"
        " while fewer than two elements are stored (nothing to calibrate on)"
    )


class Anomaly(BaseModel):
    score: float = Field(
        ge=0,
        le=1,
        description="share of sampled references less unusual (to their own nearest others, or "
        "with expected_element to their own element's) than this signal is",
    )
    is_anomaly: bool
    threshold: float
    calibrated_on: str = Field(
        description="whose references the signal was compared with: the expected element, or "
        "'all references'"
    )
    map: Vectors | None = Field(
        None,
        description="with explain: one non-negative value per sample of the signal (channels"
        " combined), higher where it is least like the references it was compared with",
    )
    peak: int | None = Field(None, description="with explain: the sample where the map peaks")


class SearchResult(BaseModel):
    neighbors: list[Neighbor]
    predicted_element: PredictedElement | None
    anomaly: Anomaly | None


class SearchResponse(BaseModel):
    results: list[SearchResult]
    model_version: str


class ElementSummary(BaseModel):
    element_id: str
    references: int
    sessions: int
    first_recorded_at: str
    last_recorded_at: str


class ElementList(BaseModel):
    items: list[ElementSummary]
    total: int
    limit: int
    offset: int


class DriftBaseline(BaseModel):
    sessions: list[str] = Field(description="the element's first sessions, in time order")
    references: int
    first_recorded_at: str
    last_recorded_at: str = Field(description="when the baseline's last session began")


class DriftCalibratedOn(BaseModel):
    elements: int = Field(description="elements whose baseline sessions calibrated the score")
    sessions: int = Field(description="leave-one-session-out distances the score is a share of")


class SessionDrift(BaseModel):
    session_id: str
    recorded_at: str = Field(description="the session's first recording")
    references: int
    distance: float = Field(
        ge=0,
        description="how far the session's centroid moved from the baseline's, along the"
        " directions sessions vary in, in units of the element's spread: about 1 for a baseline"
        " session against the others",
    )
    map_distance: float = Field(
        ge=0,
        description="how far the session's signals are from their nearest baseline signals,"
        " sample by sample: the mean of their anomaly maps' maxima (search's explain)",
    )
    score: float = Field(
        ge=0,
        le=1,
        description="share of baseline sessions, each against the others, less unusual than"
        " this one: the distance's and the map distance's surprises added",
    )
    drifting: bool = Field(description="score above the threshold (HSN_DRIFT_THRESHOLD)")


class DriftResponse(BaseModel):
    element_id: str
    baseline: DriftBaseline
    sessions: list[SessionDrift] = Field(description="every session after the baseline, in order")
    threshold: float
    calibrated_on: DriftCalibratedOn


class DriftOptions(Options):
    """The non-signal fields of POST /drift (JSON, or query parameters with a .npy body)."""

    element_id: str = Field(min_length=1, max_length=256)
    baseline_sessions: int | None = Field(
        None, ge=1, le=10_000, description="default HSN_DRIFT_BASELINE_SESSIONS"
    )


class DriftRequest(DriftOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"element_id": "pump-7", "signals": [EXAMPLE_SIGNAL, EXAMPLE_SIGNAL]}]
        }
    )
    signals: list[Signal] = Field(min_length=2, description="a session just recorded")


class BatchDriftResponse(BaseModel):
    element_id: str
    baseline: DriftBaseline
    signals: int
    distance: float = Field(ge=0, description="as for a stored session")
    map_distance: float = Field(ge=0, description="as for a stored session")
    score: float = Field(ge=0, le=1)
    drifting: bool
    threshold: float
    centroid_distance: float = Field(
        description="1 - cosine of the batch's and the baseline's mean embeddings"
    )
    mmd: float = Field(description="squared maximum mean discrepancy of the embeddings (RBF)")
    p_value: float = Field(
        ge=0, le=1, description="permutation p-value of the MMD: small = distributions differ"
    )
    permutations: int
    calibrated_on: DriftCalibratedOn


class VerifyOptions(Options):
    """The non-signal fields of POST /verify (JSON, or query parameters with a .npy body)."""

    element_id: str = Field(min_length=1, max_length=256, description="the claimed element")


class VerifyRequest(VerifyOptions):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"element_id": "pump-7", "signals": [EXAMPLE_SIGNAL]}]}
    )
    signals: list[Signal] = Field(min_length=1, description="signals of one session")


class NearestOther(BaseModel):
    element_id: str
    similarity: float


class VerifyResponse(BaseModel):
    element_id: str
    score: float = Field(
        description="the similarity, less how far the most similar other element's exceeds it"
        " (nothing when none does): higher = more likely the claimed element"
    )
    accepted: bool = Field(description="score >= threshold")
    threshold: float = Field(
        description="calibrated on the references for this many signals: impostors reach it at"
        " the rate far"
    )
    far: float = Field(description="the target false-accept rate (HSN_VERIFY_FAR)")
    signals_used: int
    similarity: float = Field(
        description="per signal the mean cosine similarity of its HSN_VERIFY_K most similar"
        " references of the claimed element, averaged over the signals"
    )
    nearest_other: NearestOther | None = Field(
        description="the most similar other stored element (null: none is stored)"
    )


def _one_of_three(schema: dict) -> None:
    """The JSON schema says what the validator checks: exactly one of the three fields."""
    properties = schema.pop("properties")
    schema.pop("required", None)
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {name: next(o for o in value["anyOf"] if o.get("type") != "null")},
            "required": [name],
            "additionalProperties": False,
        }
        for name, value in properties.items()
    ]


class AlignTarget(BaseModel):
    """Where the keypoints should land: exactly one of the three."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_three)
    positions: dict[str, float] | None = Field(
        None, min_length=1, description="keypoint name -> position in samples of the output grid"
    )
    reference_id: str | None = Field(
        None, min_length=1, description="a stored reference's predicted keypoints"
    )
    element_id: str | None = Field(
        None, min_length=1, description="the median keypoints of an element's references"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> AlignTarget:
        given = [n for n in ("positions", "reference_id", "element_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of positions, reference_id or element_id"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class AlignOptions(Options):
    """The non-signal fields of POST /align (JSON; with a .npy body, query parameters:
    ``mode``, ``average``, ``length``, ``min_confidence``, ``keypoints`` comma-separated and a
    target as ``reference_id`` or ``element_id``)."""

    target: AlignTarget | None = Field(
        None, description="absent: the median keypoints of the request's own signals"
    )
    mode: Literal["piecewise", "shift"] = Field(
        "piecewise",
        description="shift: move each signal by one keypoint; piecewise: warp time piecewise"
        " linearly between consecutive keypoints",
    )
    keypoints: list[str] | None = Field(
        None,
        min_length=1,
        description="the anchors to use, by name (shift: the first); default all, and for shift"
        " the most confident",
    )
    average: bool = Field(False, description="also return the mean and SD of the aligned signals")
    length: int | None = Field(
        None,
        ge=2,
        le=1_000_000,
        description="samples of the output grid (default: each signal's own; with average, the"
        " longest signal's)",
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keypoints below are skipped; default HSN_ALIGN_MIN_CONFIDENCE",
    )

    @classmethod
    def from_query(cls, query: dict) -> dict:
        """The query parameters of a .npy request as the JSON fields: ``keypoints``
        comma-separated, a target as ``reference_id`` or ``element_id``."""
        values = dict(query)
        if "keypoints" in values:
            values["keypoints"] = [k for k in values["keypoints"].split(",") if k]
        targets = {k: values.pop(k) for k in ("reference_id", "element_id") if k in values}
        if targets:
            values["target"] = targets
        return values


class AlignRequest(AlignOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "signals": [EXAMPLE_SIGNAL, EXAMPLE_SIGNAL[3:] + EXAMPLE_SIGNAL[:3]],
                    "mode": "piecewise",
                    "average": True,
                }
            ]
        }
    )
    signals: list[Signal] = Field(min_length=1, description="a batch of signals")


class Warp(BaseModel):
    source: list[float] = Field(description="ascending samples of the signal, from 0 to L - 1")
    target: list[float] = Field(
        description="where each lands on the output grid: aligned[t] = signal[w^-1(t)],"
        " linear in between and beyond"
    )


class SkippedKeypoint(BaseModel):
    name: str
    reason: str


class AlignedSignal(BaseModel):
    aligned: SignalOut = Field(description="the signal on the target's grid (edges held)")
    warp: Warp
    keypoints_used: list[str]
    skipped: list[SkippedKeypoint]


class AlignAverage(BaseModel):
    mean: SignalOut
    std: SignalOut


class AlignResponse(BaseModel):
    results: list[AlignedSignal]
    target: dict[str, float] = Field(description="keypoint -> position on the output grid")
    reference: str | None = Field(
        description="the shift keypoint; piecewise anchors are shrunk towards it"
    )
    shrinkage: dict[str, float] = Field(
        description="per anchor, the weight of its own observed interval to the reference (1:"
        " trusted as predicted; 0: the model's error exceeds the signals' own variation)"
    )
    average: AlignAverage | None
    model_version: str


NAME_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"  # a collection's name


class CollectionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "pump", "model": "pump"}]}
    )

    name: str = Field(
        pattern=NAME_PATTERN, description="[a-z0-9][a-z0-9_-]{0,62}, unique in the deployment"
    )
    model: str | None = Field(
        None,
        description="a folder of the model repository (HSN_MODEL_REPOSITORY); null or absent:"
        " the model of the collection default (HSN_MODEL_DIR)",
    )


class ModelChange(BaseModel):
    model: str | None = Field(
        description="a folder of the model repository; null: HSN_MODEL_DIR",
    )
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model": "ecg-v2"}]})


class UpgradeProgress(BaseModel):
    target_version: str
    model: str | None = Field(description="the target's folder in the model repository")
    embedded: int = Field(description="references with the target's embedding")
    total: int = Field(description="references in the collection")
    started_at: str
    eta_s: float | None = Field(description="seconds left at the rate so far (null: no rate yet)")


class ServedVersion(BaseModel):
    model_version: str
    model: str | None
    served_from: str = Field(description="when the collection switched to it (or was made)")


class CollectionOut(BaseModel):
    name: str
    model: str | None = Field(
        description="its folder in the model repository (null: HSN_MODEL_DIR)"
    )
    model_version: str
    references: int = Field(description="references stored in it")
    dim: int = Field(description="its embeddings' size")
    in_channels: int = Field(description="channels a signal must have")
    min_length: int = Field(description="the shortest signal its model takes")
    max_length: int = Field(description="the longest signal its model takes")
    created_at: str
    upgrade: UpgradeProgress | None = Field(
        None, description="a change of its model under way (PUT /collections/{name}/model)"
    )
    versions: list[ServedVersion] = Field(
        [], description="the model versions it served whose embeddings are kept, latest first"
    )


class CollectionList(BaseModel):
    items: list[CollectionOut]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: body, a field, an index")
    msg: str = Field(description="what is wrong")
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]


def error_responses(*codes: int) -> dict:
    reasons = {
        400: "malformed JSON",
        401: "missing or wrong API key",
        403: "the API key's scope or collections do not cover this",
        404: "unknown id",
        409: "nothing stored to calibrate against",
        413: "body or batch over its limit",
        422: "invalid input, field named",
    }
    return {code: {"model": ErrorResponse, "description": reasons[code]} for code in codes}


class Health(BaseModel):
    status: str


class SyncStatus(BaseModel):
    applied_seq: int = Field(description="the last change-log entry this process's index reflects")
    store_seq: int = Field(description="the last change-log entry in the database, when last asked")
    lag_entries: int = Field(description="entries not applied here yet")
    lag_seconds: float = Field(description="age of the oldest entry not applied here (0: none)")
    database: str = Field(description="ok, or unreachable")


class SegmentsStatus(BaseModel):
    """A collection's index as segments: the large one (built in the background, mapped from
    disk, shared by the machine's processes), the mutable one (writes since, in memory) and
    tombstones (the large one's deleted or replaced references, purged by the next build)."""

    large_references: int = Field(description="references in the large segment")
    large_seq: int | None = Field(description="the change-log entry the large segment reflects")
    large_built_at: float | None = Field(description="when it was built (Unix time)")
    mutable_references: int = Field(description="references written since, searched exactly")
    tombstones: int = Field(description="the large segment's references hidden since")
    building: bool = Field(description="whether this process is building the next one")
    memory_bytes: int = Field(description="what this process holds of the index in memory")
    mapped_bytes: int = Field(description="the large segment's files it maps (page cache, shared)")
    disk_bytes: int = Field(description="the large segment's folder on disk")


class CollectionStatus(BaseModel):
    name: str
    model_version: str
    references: int = Field(description="vectors in this process's index of the collection")
    index: str = Field(
        description="the large segment's index type: flat (exact), ivf, ivfpq or hnsw"
    )
    index_memory_bytes: int = Field(description="memory its index holds in this process")
    segments: SegmentsStatus
    model_memory_bytes: int = Field(
        description="resident memory the process grew by loading its model (shared by the"
        " collections of one model)"
    )
    sync: SyncStatus


class Ready(BaseModel):
    """The process, and the collection default in the top-level fields (as before
    collections); every collection in ``collections``."""

    ready: bool
    references: int = Field(description="vectors in this process's search index")
    stored: int | None = Field(
        description="references in the database (null while it is unreachable)"
    )
    database: str = Field(description="ok, or unreachable")
    degraded: bool = Field(description="searches answer from memory; writes get 503")
    sync: SyncStatus
    served_by: str = Field(description="host:pid of the process that answered")
    engine: str = Field(description="what runs the model: onnx or torchscript")
    index: str = Field(
        description="the large segment's index type: flat (exact), ivf, ivfpq or hnsw"
    )
    inference_workers: int = Field(description="model calls that may run at once")
    model_version: str | None
    collections: list[CollectionStatus] = Field(description="every collection served here")
    unavailable: dict[str, str] = Field(
        {}, description="collections this process cannot serve, with the reason (their model)"
    )
