"""Bad input gets a 4xx naming the field and the problem; never a 500."""

import tracemalloc

import numpy as np
import pytest

from tests.app.helpers import NPY, npy, references
from tests.model.test_npz_limits import MiB, hostile, npy_header

GOOD = [0.0] * 128


@pytest.mark.parametrize(
    ("body", "status", "loc", "message"),
    [
        ({"signals": []}, 422, ["body", "signals"], "is empty"),
        ({"signals": [[0.0] * 10]}, 422, ["body", "signals"], "shorter than the minimum 32"),
        ({"signals": [[0.0] * 9000]}, 422, ["body", "signals"], "longer than the maximum 8192"),
        ({"signals": [[[0.0] * 128] * 2]}, 422, ["body", "signals"], "2 channel(s)"),
        ({"signals": [GOOD, [1e39] * 128]}, 422, ["body", "signals", "1"], "infinite"),
        ({"signals": [GOOD, [0.0] * 64, "x"]}, 422, ["body", "signals", "2"], "non-empty list"),
        ({"signals": [GOOD, [0.0] * 127 + ["a"]]}, 422, ["body", "signals", "1"], "numbers only"),
        ({"signals": [[True] * 128]}, 422, ["body", "signals", "0"], "not booleans"),
        ({"signals": [[[0.0] * 128, [0.0] * 100]]}, 422, ["body", "signals", "0"], "channels"),
        ({"signals": "abc"}, 422, ["body", "signals"], "must be a list"),
        ({"signals": [GOOD] * 300}, 413, ["body", "signals"], "over the limit of 256"),
        ({"nothing": 1}, 422, ["body", "signals"], "field required"),
        ([1, 2], 422, ["body"], "must be a JSON object"),
    ],
)
def test_bad_signals(client, body, status, loc, message):
    response = client.post("/embed", json=body)
    assert response.status_code == status
    error = response.json()["detail"][0]
    assert error["loc"] == loc and message in error["msg"]


def test_invalid_json_and_nan_literals(client):
    response = client.post(
        "/embed", content=b'{"signals": [[NaN, 1]]}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "invalid JSON" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x93NUMPY garbage", "not a readable .npy"),
        (npy(np.zeros((2, 128)))[:-40], "not a readable .npy"),
        (npy(np.array(["a", "b"])), "must be numeric"),
        (npy(np.zeros(128)), "must be (B, L) or (B, C, L)"),
        (npy(np.full((1, 128), np.nan)), "NaN"),
        (npy(np.zeros((1, 2, 128))), "2 channel(s)"),
    ],
)
def test_bad_npy_bodies(client, content, message):
    response = client.post("/embed", content=content, headers=NPY)
    assert response.status_code == 422 and message in response.json()["detail"][0]["msg"]


def test_pickled_npy_is_never_loaded(client):
    payload = npy(np.array([{"x": 1}], dtype=object))  # np.save pickles object arrays
    response = client.post("/embed", content=payload, headers=NPY)
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"k": 0}, "greater than or equal to 1"),
        ({"k": 101}, "over the limit of 100"),
        ({"k": "many"}, "valid integer"),
    ],
)
def test_bad_search_options(client, extra, message):
    response = client.post("/search", json={"signals": [GOOD], **extra})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "k"] and message in error["msg"]


def test_body_over_the_size_limit_is_refused_before_reading(make_client):
    client = make_client(max_body_bytes=4096)
    response = client.post("/embed", json={"signals": [[0.5] * 2000]})
    assert response.status_code == 413 and "over the limit of 4096" in response.text

    def chunks():  # no Content-Length: refused once the streamed bytes pass the limit
        yield b'{"signals": [['
        for _ in range(1000):
            yield b"0.5, " * 10

    response = client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_bad_references(client, service_data):
    ref = references(service_data, [0])[0]
    cases = [
        ({"references": []}, ["body", "references"]),
        ({"references": [{**ref, "element_id": ""}]}, ["body", "references", 0, "element_id"]),
        ({"references": [{**ref, "signal": [1.0] * 8}]}, ["body", "references", "0", "signal"]),
    ]
    for body, loc in cases:
        response = client.post("/references", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc
    assert client.get("/ready").json()["references"] == 0  # nothing half-written


def test_unknown_ids_are_404(client):
    for response in (client.get("/references/nope"), client.delete("/references/nope")):
        assert response.status_code == 404
        assert response.json()["detail"][0]["msg"] == "no reference with id 'nope'"


def test_any_json_metadata_round_trips_and_non_finite_numbers_are_refused(client, service_data):
    ref = {**references(service_data, [0])[0], "metadata": {"big": 2**70, "nested": [{"a": None}]}}
    assert client.post("/references", json={"references": [ref]}).status_code == 201
    assert client.get(f"/references/{ref['id']}").json()["metadata"] == ref["metadata"]
    body = (
        b'{"references": [{"element_id": "e", "session_id": "s", "signal": [%s], '
        b'"metadata": {"x": 1e400}}]}' % b", ".join([b"0.5"] * 128)
    )
    response = client.post(
        "/references", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "references", 0, "metadata"]


def test_a_hostile_npz_is_refused_by_its_headers_before_anything_is_inflated(client, tmp_path):
    """3.9 GB of signals declared in a few MB (the outside finding): 413 naming the member,
    and the request allocates next to nothing (numpy's allocations are traced too)."""
    path = hostile(tmp_path / "bomb.npz", npy_header((7_600_000, 1, 128)), zeros=4 * MiB)
    tracemalloc.start()
    response = client.post("/references/npz", content=path.read_bytes())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.status_code == 413, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "signals"] and "3,891,200,000 bytes" in error["msg"]
    assert peak < 30 * MiB
    wrong = hostile(tmp_path / "channels.npz", npy_header((2, 3, 128)), zeros=0)
    refused = client.post("/references/npz", content=wrong.read_bytes())
    assert refused.status_code == 422 and "3 channel(s)" in refused.json()["detail"][0]["msg"]
    assert client.get("/references").json()["total"] == 0
