"""Request bodies -> validated float32 signal batches, with errors that name the field.

A signal is a list of numbers (one channel) or a list of C lists (channels first); ``signals`` is a
list of them. Bodies come as JSON (parsed with orjson, converted by numpy in one call when the batch
is rectangular) or as a ``.npy`` array ``(B, L)`` / ``(B, C, L)`` (``application/x-npy``, never
unpickled). Signals of different lengths may share a request.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import orjson

from app.api_errors import InputError
from model.data_format import read_npy_header

NPY_MEDIA_TYPE = "application/x-npy"
MAX_NPY_HEADER = 10_000  # bytes; numpy's own limit for reading untrusted files


@dataclass(frozen=True)
class SignalLimits:
    in_channels: int
    min_length: int
    max_length: int
    max_batch: int
    collection: str | None = None  # whose model's limits these are, when not default's

    def __str__(self) -> str:
        return f"{self.in_channels} channel(s) of {self.min_length} to {self.max_length} samples"


# A parsed batch: chunks of shape (b, C, L), one length per chunk, in request order.
SignalBatch = list[np.ndarray]


def batch_size(batch: SignalBatch) -> int:
    return sum(len(chunk) for chunk in batch)


def signals_of(batch: SignalBatch) -> list[np.ndarray]:
    """The batch's signals, each (C, L), in request order."""
    return [signal for chunk in batch for signal in chunk]


def parse_json_body(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # what orjson refuses but JSON allows: numbers beyond a double (1e400 -> inf)
            payload = json.loads(body, parse_constant=_not_json)
        except ValueError:
            raise InputError(
                "body", f"invalid JSON ({exc})", status=400, kind="json_invalid"
            ) from exc
    if not isinstance(payload, dict):
        raise InputError("body", "must be a JSON object", kind="model_attributes_type")
    return payload


def _not_json(literal: str) -> None:
    raise ValueError(f"{literal} is not JSON")


def parse_npy_body(body: bytes, limits: SignalLimits) -> SignalBatch:
    array = _npy_view(body)
    if array is None:  # not the plain numeric layout: numpy's reader decides, and explains
        try:
            array = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, OSError, EOFError... on bad files
            raise InputError(
                "body", f"not a readable .npy array ({exc})", kind="npy_invalid"
            ) from exc
    if array.dtype.kind not in "fiu":
        raise InputError("body", f"the .npy array must be numeric, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise InputError("body", f"the .npy array must be (B, L) or (B, C, L), got {array.shape}")
    return _check_rectangular(array, limits, "body")


def _npy_view(body: bytes) -> np.ndarray | None:
    """The array of a version 1.0 or 2.0 .npy body holding exactly one numeric array, viewed in
    place (no copy); None for anything else. The header is parsed once per distinct header:
    numpy parses it with ``ast`` on every read, a sixth of a small request's CPU."""
    if len(body) < 12 or body[:6] != b"\x93NUMPY" or body[6] not in (1, 2) or body[7] != 0:
        return None
    size_bytes = 2 if body[6] == 1 else 4
    start = 8 + size_bytes
    header_size = int.from_bytes(body[8:start], "little")
    if header_size > MAX_NPY_HEADER:  # numpy refuses these; and never cache a huge key
        return None
    layout = _npy_layout(body[: start + header_size])
    if layout is None:
        return None
    dtype, shape, order = layout
    count = math.prod(shape)  # Python ints: a crafted shape cannot wrap around
    if len(body) != start + header_size + count * dtype.itemsize:
        return None
    data = np.frombuffer(body, dtype, count, offset=start + header_size)
    return data.reshape(shape, order=order)


@functools.lru_cache(maxsize=128)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], str] | None:
    try:
        shape, fortran_order, dtype = read_npy_header(io.BytesIO(header))
    except Exception:  # numpy raises ValueError and others on a malformed header
        return None
    if dtype.kind not in "fiu" or dtype.hasobject or any(n < 0 for n in shape):
        return None
    return dtype, tuple(int(n) for n in shape), "F" if fortran_order else "C"


def parse_signals(raw: object, limits: SignalLimits, field: str = "signals") -> SignalBatch:
    """Validate a JSON ``signals`` value into a batch; see the module docstring."""
    if not isinstance(raw, list):
        raise InputError(field, "must be a list of signals", kind="list_type")
    if not raw:
        raise InputError(field, "is empty: send at least one signal", kind="too_short")
    check_batch_size(len(raw), limits, field)
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
            array = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        array = None  # ragged, mixed lengths or a non-number: look signal by signal
    if array is not None and array.ndim in (2, 3) and not _has_bools(raw):
        return _check_rectangular(array, limits, field)
    return _group_by_length([parse_one(s, limits, f"{field}.{i}") for i, s in enumerate(raw)])


def parse_one(raw: object, limits: SignalLimits, field: str) -> np.ndarray:
    """One JSON signal -> (C, L) float32."""
    if not isinstance(raw, list) or not raw:
        raise InputError(field, "must be a non-empty list of numbers or of channels")
    if _has_bools(raw):
        raise InputError(field, "must hold numbers, not booleans", kind="float_type")
    try:
        with np.errstate(over="ignore"):
            signal = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = "channels of different lengths" if isinstance(raw[0], list) else "non-numbers"
        raise InputError(field, f"must hold numbers only ({reason})", kind="float_type") from exc
    if signal.ndim == 1:
        signal = signal[None]
    if signal.ndim != 2:
        raise InputError(field, f"must be (L,) or (C, L), got shape {signal.shape}")
    check_shape(signal.shape[0], signal.shape[1], limits, field)
    _check_finite(signal[None], field)
    return signal


def _has_bools(raw: list) -> bool:
    """JSON true/false would silently become 1.0/0.0; look at the first signal's first values."""
    first = raw[0]
    while isinstance(first, list) and first:
        first = first[0]
    return isinstance(first, bool)


def _check_rectangular(array: np.ndarray, limits: SignalLimits, field: str) -> SignalBatch:
    check_batch_size(len(array), limits, field)
    return [check_array(array, limits, field)]


def check_batch_size(count: int, limits: SignalLimits, field: str, what: str = "signals") -> None:
    """413 when one request carries more than ``max_batch`` signals (or references)."""
    if count > limits.max_batch:
        raise InputError(
            field,
            f"{count} {what}, over the limit of {limits.max_batch}",
            status=413,
            kind="too_long",
        )


def check_array(array: np.ndarray, limits: SignalLimits, field: str) -> np.ndarray:
    """A numeric (B, L) or (B, C, L) array of any size -> validated (B, C, L) float32."""
    if array.ndim == 2:
        array = array[:, None, :]
    b, c, length = array.shape
    if b == 0:
        raise InputError(field, "is empty: send at least one signal", kind="too_short")
    check_shape(c, length, limits, field)
    with np.errstate(over="ignore"):
        array = np.ascontiguousarray(array, dtype=np.float32)
    _check_finite(array, field)
    return array


def check_shape(channels: int, length: int, limits: SignalLimits, field: str) -> None:
    # a collection's refusal names what its model takes: it may not be what default takes
    whose = "" if limits.collection is None else f" (collection {limits.collection}: {limits})"
    if channels != limits.in_channels:
        raise InputError(
            field,
            f"{channels} channel(s), the model expects {limits.in_channels}{whose}",
            kind="channels",
        )
    if length < limits.min_length:
        raise InputError(
            field,
            f"{length} samples, shorter than the minimum {limits.min_length}{whose}",
            kind="too_short",
        )
    if length > limits.max_length:
        raise InputError(
            field,
            f"{length} samples, longer than the maximum {limits.max_length}{whose}",
            kind="too_long",
        )


def _check_finite(array: np.ndarray, field: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.argwhere(~finite.reshape(len(array), -1).all(axis=1))[0, 0])
        where = f"{field}.{first}" if len(array) > 1 else field
        raise InputError(
            where, "holds NaN or infinite values (or numbers beyond float32)", kind="finite_number"
        )


def _group_by_length(signals: list[np.ndarray]) -> SignalBatch:
    """Consecutive signals of one length share a chunk; order is kept."""
    chunks: list[list[np.ndarray]] = []
    for s in signals:
        if chunks and chunks[-1][0].shape == s.shape:
            chunks[-1].append(s)
        else:
            chunks.append([s])
    return [np.stack(chunk) for chunk in chunks]
