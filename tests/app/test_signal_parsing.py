"""Property-based tests of the parsing layer: whatever arrives, the answer is a valid batch or an
InputError with a 4xx status and a reason, never another exception."""

import io
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api_errors import InputError
from app.signals import SignalLimits, parse_json_body, parse_npy_body, parse_signals

LIMITS = SignalLimits(in_channels=1, min_length=8, max_length=64, max_batch=16)
TWO_CHANNELS = SignalLimits(in_channels=2, min_length=8, max_length=64, max_batch=16)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0.0, -0.0, 1e-320, 3.4e38, 3.5e38, -1e308]),
)
json_values = st.recursive(
    st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=5)),
    lambda children: (
        st.lists(children, max_size=70) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=300,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def check_batch(batch, limits):
    assert batch and all(chunk.dtype == np.float32 and chunk.ndim == 3 for chunk in batch)
    for chunk in batch:
        _, channels, length = chunk.shape
        assert channels == limits.in_channels
        assert limits.min_length <= length <= limits.max_length
        assert np.isfinite(chunk).all()
    assert sum(len(c) for c in batch) <= limits.max_batch


def accepted_or_refused(parse, *args):
    try:
        return parse(*args)
    except InputError as error:
        assert 400 <= error.status < 500 and error.message and error.field
        return None


@FAST
@given(json_values, st.sampled_from([LIMITS, TWO_CHANNELS]))
def test_any_json_value_is_a_valid_batch_or_a_4xx(raw, limits):
    batch = accepted_or_refused(parse_signals, raw, limits)
    if batch is not None:
        check_batch(batch, limits)


@FAST
@given(
    st.lists(st.lists(numbers, min_size=0, max_size=70), min_size=0, max_size=20),
    st.sampled_from([LIMITS, TWO_CHANNELS]),
)
def test_signals_of_any_numbers_and_lengths(raw, limits):
    batch = accepted_or_refused(parse_signals, raw, limits)
    if batch is not None:
        check_batch(batch, limits)
        values = [v for s in raw for v in s]
        assert all(math.isfinite(float(v)) for v in values)


@FAST
@given(st.data())
def test_ragged_channels_are_refused_by_name(data):
    """A batch of valid two-channel signals but one whose channels differ in length: that
    signal, and no other, is named."""
    n = data.draw(st.integers(1, 5), label="signals")
    bad = data.draw(st.integers(0, n - 1), label="ragged one")
    length = data.draw(st.integers(8, 12), label="length")
    other = data.draw(st.integers(8, 12).filter(lambda m: m != length), label="other length")
    raw = [[[0.5] * length, [0.25] * length] for _ in range(n)]
    raw[bad][data.draw(st.integers(0, 1), label="channel")] = [1.0] * other
    with pytest.raises(InputError) as refused:
        parse_signals(raw, TWO_CHANNELS)
    assert refused.value.field == f"signals.{bad}" and refused.value.status == 422
    assert "channels of different lengths" in refused.value.message


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_json_or_npy(body):
    accepted_or_refused(parse_json_body, body)
    batch = accepted_or_refused(parse_npy_body, body, LIMITS)
    if batch is not None:
        check_batch(batch, LIMITS)


@FAST
@given(
    st.sampled_from(["<f4", "<f8", "<i2", ">i8", "<u1", "|b1", "<c8", "<U3"]),
    st.lists(st.integers(0, 70), min_size=1, max_size=3),
    st.integers(0, 200),
)
def test_npy_of_any_dtype_shape_and_truncation(dtype, shape, cut):
    array = np.zeros(shape, dtype=dtype)
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    body = data[: len(data) - cut] if cut else data
    batch = accepted_or_refused(parse_npy_body, body, LIMITS)
    if batch is not None:
        check_batch(batch, LIMITS)


def test_a_valid_body_round_trips():
    body = orjson.dumps({"signals": [[float(i) for i in range(16)]] * 3})
    batch = parse_signals(parse_json_body(body)["signals"], LIMITS)
    assert batch[0].shape == (3, 1, 16)


@FAST
@given(
    st.sampled_from(["<f4", ">f4", "<f8", ">i2", "<u1"]),
    st.booleans(),
    st.integers(1, 4),
    st.integers(8, 64),
    st.integers(0, 2**31),
)
def test_npy_bodies_read_in_place_equal_numpys_reader(dtype, fortran, batch, length, seed):
    """Bodies are viewed without a copy and their header parsed once per layout; the values are
    exactly what numpy's own reader gives, whatever the byte order or memory order."""
    values = np.random.default_rng(seed).uniform(0, 100, (batch, 1, length)).astype(dtype)
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(values) if fortran else values)
    body = buffer.getvalue()
    expected = np.load(io.BytesIO(body)).astype(np.float32)
    np.testing.assert_array_equal(parse_npy_body(body, LIMITS)[0], expected)
    # Not the exact layout: numpy's reader decides, as before (a trailing byte is ignored).
    np.testing.assert_array_equal(parse_npy_body(body + b"\0", LIMITS)[0], expected)
    assert accepted_or_refused(parse_npy_body, body[:-1], LIMITS) is None  # truncated


def npy_with_header(shape, data: bytes, version=(1, 0), padding=0) -> bytes:
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * padding + b"\n"
    size = len(header).to_bytes(2 if version[0] == 1 else 4, "little")
    return b"\x93NUMPY" + bytes(version) + size + header + data


def test_crafted_npy_headers_are_refused_with_a_4xx():
    eight = np.zeros(8, np.float32).tobytes()
    bodies = [
        npy_with_header((2**61 + 1, 8), eight),  # element count wraps around in int64
        npy_with_header((2**32, 2**32), b""),
        npy_with_header((-2, -2), np.zeros(4, np.float32).tobytes()),
        npy_with_header((1, 8), eight, version=(2, 1)),  # no such format version
        npy_with_header((1, 8), eight, version=(2, 0), padding=20_000),  # header over numpy's limit
    ]
    for body in bodies:
        assert accepted_or_refused(parse_npy_body, body, LIMITS) is None
