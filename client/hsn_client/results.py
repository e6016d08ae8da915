"""What the calls return: small dataclasses, with numpy arrays for the numeric parts.

Each is built from the service's JSON by ``from_json``, which reads the fields it names and
ignores others: the service may add fields to an answer without breaking this client.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


def _pick(cls: type[T], data: dict[str, Any], **converted: Any) -> T:
    """``cls`` from the JSON object ``data``: its own fields (``datetime`` ones parsed from ISO
    8601), some replaced by ``converted``."""
    values = {
        f.name: datetime.fromisoformat(data[f.name]) if f.type == "datetime" else data[f.name]
        for f in fields(cls)
        if f.name not in converted
    }
    return cls(**values, **converted)


class _Record:
    """A result whose fields are the JSON object's, as they are (times parsed)."""

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any]) -> T:
        return _pick(cls, data)


@dataclass(frozen=True)
class Keypoints:
    """Per signal and keypoint type (in ``names`` order): position in that signal's own samples
    (fractional) and confidence in [0, 1]; both arrays are (B, K)."""

    names: list[str]
    positions: np.ndarray
    confidences: np.ndarray
    model_version: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Keypoints:
        per_signal = data["keypoints"]
        names = [k["name"] for k in per_signal[0]] if per_signal else []
        return cls(
            names=names,
            positions=np.array([[k["position"] for k in s] for s in per_signal], dtype=np.float64),
            confidences=np.array(
                [[k["confidence"] for k in s] for s in per_signal], dtype=np.float64
            ),
            model_version=data["model_version"],
        )


@dataclass(frozen=True)
class Neighbor:
    id: str
    element_id: str
    session_id: str
    similarity: float
    metadata: dict[str, Any] | None  # None while the service's database is unreachable


@dataclass(frozen=True)
class PredictedElement:
    element_id: str
    confidence: float
    known: bool | None  # False: most likely an element the service has never stored


@dataclass(frozen=True)
class Anomaly:
    score: float
    is_anomaly: bool
    threshold: float
    calibrated_on: str
    map: np.ndarray | None = None  # (L,) with explain: how unlike the references each sample is
    peak: int | None = None  # with explain: the sample where the map peaks

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Anomaly:
        shown = data.get("map")
        return _pick(
            cls,
            {"peak": None, **data},
            map=None if shown is None else np.asarray(shown, dtype=np.float32),
        )


@dataclass(frozen=True)
class SearchResult:
    """One query signal's nearest references, the element they vote for and its anomaly score."""

    neighbors: list[Neighbor]
    predicted_element: PredictedElement | None
    anomaly: Anomaly | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        predicted, anomaly = data["predicted_element"], data["anomaly"]
        return cls(
            neighbors=[_pick(Neighbor, n) for n in data["neighbors"]],
            predicted_element=None if predicted is None else _pick(PredictedElement, predicted),
            anomaly=None if anomaly is None else Anomaly.from_json(anomaly),
        )


@dataclass(frozen=True)
class Reference:
    """One stored reference with its signal, (L,) for one channel or (C, L)."""

    id: str
    element_id: str
    session_id: str
    metadata: dict[str, Any]
    signal: np.ndarray
    model_version: str
    updated_at: datetime
    recorded_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        return _pick(
            cls,
            data,
            signal=np.asarray(data["signal"], dtype=np.float32),
        )


@dataclass(frozen=True)
class ReferenceSummary(_Record):
    """A stored reference as listed: its signal's length instead of the signal."""

    id: str
    element_id: str
    session_id: str
    metadata: dict[str, Any]
    length: int
    model_version: str
    updated_at: datetime
    recorded_at: datetime


@dataclass(frozen=True)
class ElementSummary(_Record):
    element_id: str
    references: int
    sessions: int
    first_recorded_at: datetime
    last_recorded_at: datetime


@dataclass(frozen=True)
class Collection(_Record):
    """A collection: its model, and what a signal sent to it must be."""

    name: str
    model: str | None  # its folder in the service's model repository (None: the default model)
    model_version: str
    references: int
    dim: int
    in_channels: int
    min_length: int
    max_length: int
    created_at: datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` from ``offset``, of ``total`` in all."""

    items: list[T]
    total: int
    limit: int
    offset: int


def page_from_json(data: dict[str, Any], item: type[T]) -> Page[T]:
    return Page(
        items=[item.from_json(i) for i in data["items"]],  # type: ignore[attr-defined]
        total=data["total"],
        limit=data["limit"],
        offset=data["offset"],
    )


@dataclass(frozen=True)
class Warp:
    """Anchor lists of a monotone piecewise-linear warp: ``aligned[t] = signal[w⁻¹(t)]`` with
    ``source`` mapped onto ``target``, linear in between and beyond."""

    source: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class SkippedKeypoint:
    name: str
    reason: str


@dataclass(frozen=True)
class AlignedSignal:
    aligned: np.ndarray  # on the target's grid: (L',) for one channel or (C, L')
    warp: Warp
    keypoints_used: list[str]
    skipped: list[SkippedKeypoint]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlignedSignal:
        return cls(
            aligned=np.asarray(data["aligned"], dtype=np.float64),
            warp=Warp(
                source=np.asarray(data["warp"]["source"], dtype=np.float64),
                target=np.asarray(data["warp"]["target"], dtype=np.float64),
            ),
            keypoints_used=list(data["keypoints_used"]),
            skipped=[_pick(SkippedKeypoint, s) for s in data["skipped"]],
        )


@dataclass(frozen=True)
class Alignment:
    """Signals lined up by their keypoints: per signal the result, the ``target`` positions used,
    the shift keypoint (``reference``) and each anchor's ``shrinkage``; with ``average`` the
    ensemble ``mean`` and ``std`` (else None)."""

    results: list[AlignedSignal]
    target: dict[str, float]
    reference: str | None
    shrinkage: dict[str, float]
    mean: np.ndarray | None
    std: np.ndarray | None
    model_version: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alignment:
        average = data["average"]
        return cls(
            results=[AlignedSignal.from_json(r) for r in data["results"]],
            target=dict(data["target"]),
            reference=data["reference"],
            shrinkage=dict(data["shrinkage"]),
            mean=None if average is None else np.asarray(average["mean"], dtype=np.float64),
            std=None if average is None else np.asarray(average["std"], dtype=np.float64),
            model_version=data["model_version"],
        )


@dataclass(frozen=True)
class NearestOther:
    element_id: str
    similarity: float


@dataclass(frozen=True)
class Verification:
    """Whether signals of one session are of ``element_id``: ``accepted`` when ``score`` reaches
    the ``threshold`` calibrated for the false-accept rate ``far``."""

    element_id: str
    score: float
    accepted: bool
    threshold: float
    far: float
    signals_used: int
    similarity: float
    nearest_other: NearestOther | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verification:
        other = data["nearest_other"]
        return _pick(cls, data, nearest_other=None if other is None else _pick(NearestOther, other))


@dataclass(frozen=True)
class DriftBaseline(_Record):
    sessions: list[str]
    references: int
    first_recorded_at: datetime
    last_recorded_at: datetime


@dataclass(frozen=True)
class DriftCalibration:
    """What a drift score is a share of: baseline sessions of ``elements`` elements."""

    elements: int
    sessions: int


@dataclass(frozen=True)
class SessionDrift(_Record):
    session_id: str
    recorded_at: datetime
    references: int
    distance: float
    map_distance: float
    score: float
    drifting: bool


@dataclass(frozen=True)
class ElementDrift:
    """A stored element's baseline and, for every later session in time order, its drift."""

    element_id: str
    baseline: DriftBaseline
    sessions: list[SessionDrift]
    threshold: float
    calibrated_on: DriftCalibration

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElementDrift:
        return _pick(
            cls,
            data,
            baseline=DriftBaseline.from_json(data["baseline"]),
            sessions=[SessionDrift.from_json(s) for s in data["sessions"]],
            calibrated_on=_pick(DriftCalibration, data["calibrated_on"]),
        )


@dataclass(frozen=True)
class BatchDrift:
    """A session not stored, scored against the element's baseline like a stored one, with an
    MMD two-sample test (``mmd``, ``p_value``) and the ``centroid_distance``."""

    element_id: str
    baseline: DriftBaseline
    signals: int
    distance: float
    map_distance: float
    score: float
    drifting: bool
    threshold: float
    centroid_distance: float
    mmd: float
    p_value: float
    permutations: int
    calibrated_on: DriftCalibration

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchDrift:
        return _pick(
            cls,
            data,
            baseline=DriftBaseline.from_json(data["baseline"]),
            calibrated_on=_pick(DriftCalibration, data["calibrated_on"]),
        )
