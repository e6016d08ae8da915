"""A Python client of the hierarchical signal service: numpy arrays in, numpy arrays and small
dataclasses out, over httpx (no torch). ``Client`` blocks, ``AsyncClient`` is awaited; both
raise ``HsnError`` for whatever the service refuses or when it cannot be reached."""

from hsn_client.async_client import AsyncClient
from hsn_client.client import Client
from hsn_client.errors import HsnError
from hsn_client.results import (
    AlignedSignal,
    Alignment,
    Anomaly,
    BatchDrift,
    Collection,
    DriftBaseline,
    DriftCalibration,
    ElementDrift,
    ElementSummary,
    Keypoints,
    NearestOther,
    Neighbor,
    Page,
    PredictedElement,
    Reference,
    ReferenceSummary,
    SearchResult,
    SessionDrift,
    SkippedKeypoint,
    Verification,
    Warp,
)

__all__ = [
    "AlignedSignal",
    "Alignment",
    "Anomaly",
    "AsyncClient",
    "BatchDrift",
    "Client",
    "Collection",
    "DriftBaseline",
    "DriftCalibration",
    "ElementDrift",
    "ElementSummary",
    "HsnError",
    "Keypoints",
    "NearestOther",
    "Neighbor",
    "Page",
    "PredictedElement",
    "Reference",
    "ReferenceSummary",
    "SearchResult",
    "SessionDrift",
    "SkippedKeypoint",
    "Verification",
    "Warp",
]
