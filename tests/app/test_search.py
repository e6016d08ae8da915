"""/search: own element first, filters, element vote, calibrated anomaly scores."""

import numpy as np
import pytest

from tests.app.helpers import NPY, npy, references
from training.synthetic import SynthConfig, generate


@pytest.fixture
def loaded(client, service_data):
    """Every signal but the last of each session is a reference; the last ones are queries."""
    last = {s: i for i, s in enumerate(service_data.session_ids)}
    queries = np.array(sorted(last.values()))
    refs = np.setdiff1d(np.arange(len(service_data)), queries)
    for start in range(0, len(refs), 100):
        chunk = references(service_data, refs[start : start + 100])
        assert client.post("/references", json={"references": chunk}).status_code == 201
    return client, queries


def test_search_returns_the_query_element_first(loaded, service_data):
    client, queries = loaded
    body = client.post(
        "/search", json={"signals": service_data.signals[queries, 0].tolist(), "k": 5}
    ).json()
    first = [r["neighbors"][0]["element_id"] for r in body["results"]]
    votes = [r["predicted_element"]["element_id"] for r in body["results"]]
    truth = service_data.element_ids[queries].tolist()
    assert np.mean(np.array(first) == truth) >= 0.9
    assert np.mean(np.array(votes) == truth) >= 0.9
    result = body["results"][0]
    assert len(result["neighbors"]) == 5
    sims = [n["similarity"] for n in result["neighbors"]]
    assert sims == sorted(sims, reverse=True) and "n" in result["neighbors"][0]["metadata"]
    assert 0 < result["predicted_element"]["confidence"] <= 1


def test_filters(loaded, service_data):
    client, queries = loaded
    q = service_data.signals[queries[:1], 0].tolist()
    element, session = service_data.element_ids[queries[0]], service_data.session_ids[queries[0]]
    other = next(e for e in service_data.element_ids if e != element)

    only = client.post("/search", json={"signals": q, "k": 50, "element_id": other}).json()
    assert {n["element_id"] for n in only["results"][0]["neighbors"]} == {other}
    one = client.post("/search", json={"signals": q, "k": 50, "session_id": session}).json()
    assert {n["session_id"] for n in one["results"][0]["neighbors"]} == {session}
    assert len(one["results"][0]["neighbors"]) == 5  # the session's references, no more
    out = client.post("/search", json={"signals": q, "k": 50, "exclude_session_id": session})
    assert session not in {n["session_id"] for n in out.json()["results"][0]["neighbors"]}
    none = client.post("/search", json={"signals": q, "element_id": "nobody"}).json()
    assert none["results"][0]["neighbors"] == [] and none["results"][0]["predicted_element"] is None


def test_anomaly_scores_are_calibrated_on_the_references(loaded, service_data):
    client, queries = loaded
    normal = client.post("/search", json={"signals": service_data.signals[queries, 0].tolist()})
    scores = [r["anomaly"]["score"] for r in normal.json()["results"]]
    assert np.median(scores) < 0.9  # held-out signals of known elements look normal
    noise = np.random.default_rng(0).normal(size=(3, 128)).tolist()
    odd = client.post("/search", json={"signals": noise}).json()["results"]
    assert all(r["anomaly"]["is_anomaly"] and r["anomaly"]["score"] > 0.99 for r in odd)


def test_an_element_with_one_reference_is_scored_on_the_shared_calibration(loaded, service_data):
    """The scale comes from every element's references, so one reference is enough."""
    client, _ = loaded
    x = service_data.signals[0, 0]
    lone = {"id": "lone-1", "element_id": "lone", "session_id": "s", "signal": x.tolist()}
    assert client.post("/references", json={"references": [lone]}).status_code == 201
    noise = np.random.default_rng(1).normal(size=x.shape).tolist()
    body = {"signals": [x.tolist(), noise], "expected_element": "lone"}
    same, odd = client.post("/search", json=body).json()["results"]
    assert same["anomaly"]["calibrated_on"] == "lone" and not same["anomaly"]["is_anomaly"]
    assert odd["anomaly"]["is_anomaly"]


def test_expected_element_calibrates_against_that_element(loaded, service_data):
    client, queries = loaded
    q = queries[0]
    own, other = service_data.element_ids[q], service_data.element_ids[queries[-1]]
    body = {"signals": [service_data.signals[q, 0].tolist()]}
    as_own = client.post("/search", json={**body, "expected_element": own}).json()["results"][0]
    as_other = client.post("/search", json={**body, "expected_element": other}).json()
    assert as_own["anomaly"]["calibrated_on"] == own
    assert not as_own["anomaly"]["is_anomaly"]
    assert as_other["results"][0]["anomaly"]["is_anomaly"]  # "not normal for element X"
    missing = client.post("/search", json={**body, "expected_element": "nobody"})
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == [
        "body",
        "expected_element",
    ]


def test_npy_search_takes_options_from_the_query(loaded, service_data):
    client, queries = loaded
    x = service_data.signals[queries[:2]]
    as_npy = client.post("/search?k=3", content=npy(x), headers=NPY).json()
    as_json = client.post("/search", json={"signals": x[:, 0].tolist(), "k": 3}).json()
    assert as_npy == as_json and len(as_npy["results"][0]["neighbors"]) == 3


def test_search_on_an_empty_index(client, service_data):
    body = client.post("/search", json={"signals": service_data.signals[:1, 0].tolist()}).json()
    assert body["results"] == [{"neighbors": [], "predicted_element": None, "anomaly": None}]


def test_the_anomaly_score_does_not_depend_on_k_or_filters(loaded, service_data):
    """Whether the neighbours are reused for the score (k >= anomaly_k, same pool) or it makes
    its own search (k = 1, or a session filter), the score is the same."""
    client, queries = loaded
    body = {"signals": service_data.signals[queries[:4], 0].tolist()}
    scores = [
        [
            r["anomaly"]["score"]
            for r in client.post("/search", json={**body, **extra}).json()["results"]
        ]
        for extra in ({"k": 10}, {"k": 1}, {"k": 10, "exclude_session_id": "nobody"})
    ]
    assert scores[0] == scores[1] == scores[2]


def test_explain_maps_where_a_signal_differs_from_its_references(client):
    """The generator's local anomalies (spans known) against clean references of their own
    elements: each map has one value per sample, peaking inside the anomaly's span for most
    (measured: BENCHMARKS.md "Anomaly maps"); without explain, no map is made."""
    data = generate(
        SynthConfig(elements=6, sessions=3, signals=6, length=128, seed=11, anomaly_fraction=0.3)
    )
    kinds = data.extras["anomaly_kind"]
    clean, marked = np.flatnonzero(kinds == ""), np.flatnonzero(kinds != "")
    refs = [
        {
            "id": f"r{i}",
            "element_id": str(data.element_ids[i]),
            "session_id": str(data.session_ids[i]),
            "signal": data.signals[i, 0].tolist(),
        }
        for i in clean
    ]
    client.post("/references", json={"references": refs}).raise_for_status()
    inside = []
    for i in marked:
        body = {
            "signals": [data.signals[i, 0].tolist()],
            "explain": True,
            "expected_element": str(data.element_ids[i]),
        }
        anomaly = client.post("/search", json=body).json()["results"][0]["anomaly"]
        assert len(anomaly["map"]) == 128 and min(anomaly["map"]) >= 0
        assert anomaly["peak"] == int(np.argmax(anomaly["map"]))
        start, end = data.extras["anomaly_start"][i], data.extras["anomaly_end"][i]
        inside.append(start - 5 <= anomaly["peak"] <= end + 5)
    assert np.mean(inside) >= 0.7, np.mean(inside)
    query = data.signals[marked[:2], 0]
    plain = client.post("/search", json={"signals": query.tolist()}).json()["results"]
    assert all(r["anomaly"]["map"] is None and r["anomaly"]["peak"] is None for r in plain)
    answer = client.post("/search?explain=true", content=npy(query), headers=NPY).json()
    assert [len(r["anomaly"]["map"]) for r in answer["results"]] == [128, 128]
