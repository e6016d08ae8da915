"""Signals as the client takes them, and as request bodies: ``.npy`` or JSON.

A batch is an array ``(B, L)`` or ``(B, C, L)``, or a sequence of signals each ``(L,)`` or
``(C, L)``. Signals of one shape are stacked into one array and sent as a ``.npy`` body: the
service answers more of them than of JSON bodies (one client, npy against JSON: 3,060 against
2,853 signals/s at 64 signals a request, 987 against 816 at one; BENCHMARKS.md, "The service,
/embed"), and the client skips turning every sample into text. Signals of different lengths,
which no array holds, go as JSON.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

NPY_MEDIA_TYPE = "application/x-npy"

Signals = np.ndarray | Sequence[Any]
# A batch ready to send: one array (B, L) / (B, C, L), or a list of signals of mixed lengths.
Batch = np.ndarray | list[np.ndarray]


def as_batch(x: Signals) -> Batch:
    """``x`` as float32: one array when every signal has one shape, else a list of signals."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3):
            raise ValueError(
                f"signals must be an array (B, L) or (B, C, L), or a sequence of signals; "
                f"got an array of shape {x.shape}"
            )
        if len(x) == 0:
            raise ValueError("no signals: send at least one")
        return _float32(x)
    signals = [_float32(np.asarray(s)) for s in x]
    if not signals:
        raise ValueError("no signals: send at least one")
    for i, s in enumerate(signals):
        if s.ndim not in (1, 2):
            raise ValueError(f"signal {i} must be (L,) or (C, L), got shape {s.shape}")
    if all(s.shape == signals[0].shape for s in signals):
        return np.stack(signals)
    return signals


def _float32(array: np.ndarray) -> np.ndarray:
    # The service computes in float32; values beyond it become inf here, which it refuses.
    with np.errstate(over="ignore"):
        return np.asarray(array, dtype=np.float32)


def batch_body(batch: Batch, fields: dict[str, Any], query: dict[str, Any], npy: bool) -> dict:
    """httpx request arguments carrying ``batch`` and the call's other fields: a ``.npy`` body
    with ``query`` as query parameters, or one JSON object with ``fields``."""
    if npy and isinstance(batch, np.ndarray):
        return {
            "content": npy_bytes(batch),
            "headers": {"content-type": NPY_MEDIA_TYPE},
            "params": {k: v for k, v in query.items() if v is not None},
        }
    signals = [s.tolist() for s in batch]
    return json_body({"signals": signals, **{k: v for k, v in fields.items() if v is not None}})


def json_body(payload: dict[str, Any]) -> dict:
    """httpx request arguments for a JSON body, serialised here as httpx would, so that its
    size is known before it is sent."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
