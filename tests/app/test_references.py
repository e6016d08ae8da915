"""/references: upsert, read, delete, list by element, bulk NPZ load."""

import io

import numpy as np
import orjson

from tests.app.helpers import references


def test_upsert_read_list_delete(client, service_data):
    refs = references(service_data, range(10))
    response = client.post("/references", json={"references": refs})
    assert response.status_code == 201 and response.json()["ids"] == [r["id"] for r in refs]

    got = client.get("/references/ref-3").json()
    assert got["element_id"] == refs[3]["element_id"] and got["metadata"] == {"n": 3}
    np.testing.assert_allclose(got["signal"], refs[3]["signal"], rtol=1e-6)

    element = refs[0]["element_id"]
    listing = client.get("/references", params={"element_id": element, "limit": 2}).json()
    expected = sum(r["element_id"] == element for r in refs)
    assert listing["total"] == expected and len(listing["items"]) == min(2, expected)
    assert (
        client.get("/references", params={"limit": 3, "offset": 9}).json()["items"][0]["id"]
        == "ref-9"
    )

    assert client.delete("/references/ref-3").status_code == 204
    assert client.get("/references/ref-3").status_code == 404
    assert client.delete("/references/ref-3").status_code == 404
    assert client.get("/ready").json()["references"] == 9


def test_an_existing_id_is_replaced(client, service_data):
    first = references(service_data, [0])[0]
    client.post("/references", json={"references": [first]})
    replacement = {**references(service_data, [20])[0], "id": first["id"]}
    client.post("/references", json={"references": [replacement]})
    got = client.get(f"/references/{first['id']}").json()
    assert got["element_id"] == replacement["element_id"]
    assert client.get("/ready").json()["references"] == 1
    hit = client.post("/search", json={"signals": [replacement["signal"]], "k": 5}).json()
    assert [n["id"] for n in hit["results"][0]["neighbors"]] == [first["id"]]


def test_new_references_get_ids(client, service_data):
    ref = references(service_data, [1])[0]
    del ref["id"]
    ids = client.post("/references", json={"references": [ref, ref]}).json()["ids"]
    assert len(set(ids)) == 2


def test_bulk_load_from_an_npz_file(client, service_data):
    buffer = io.BytesIO()
    subset = service_data.subset(np.arange(30))
    np.savez(
        buffer,
        signals=subset.signals,
        element_ids=subset.element_ids,
        session_ids=subset.session_ids,
        ids=np.array([f"bulk-{i}" for i in range(30)]),
    )
    response = client.post(
        "/references/npz",
        content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201 and len(response.json()["ids"]) == 30
    assert client.get("/references/bulk-29").status_code == 200
    # Loading the same file again replaces rather than duplicates.
    client.post("/references/npz", content=buffer.getvalue())
    assert client.get("/ready").json()["references"] == 30


def test_bulk_load_refuses_a_malformed_file(client):
    buffer = io.BytesIO()
    np.savez(buffer, signals=np.zeros((2, 128)), element_ids=np.array(["a", "b"]))
    response = client.post("/references/npz", content=buffer.getvalue())
    assert response.status_code == 422
    assert "missing required key 'session_ids'" in response.json()["detail"][0]["msg"]
    assert client.post("/references/npz", content=b"junk").status_code == 422


def test_an_hnsw_index_handles_replacement_and_deletion(make_client, service_data):
    """HNSW cannot remove vectors: the service rebuilds it from the store instead."""
    client = make_client(index_type="hnsw")
    refs = references(service_data, range(30))
    client.post("/references", json={"references": refs})
    client.post("/references", json={"references": [{**refs[5], "id": "ref-6"}]})
    assert client.delete("/references/ref-7").status_code == 204
    assert client.get("/ready").json()["references"] == 29
    hits = client.post("/search", json={"signals": [refs[5]["signal"]], "k": 3}).json()
    ids = [n["id"] for n in hits["results"][0]["neighbors"]]
    assert ids[:2] in (["ref-5", "ref-6"], ["ref-6", "ref-5"]) and "ref-7" not in ids
    element = refs[0]["element_id"]
    only = client.post(
        "/search", json={"signals": [refs[0]["signal"]], "k": 30, "element_id": element}
    ).json()
    assert {n["element_id"] for n in only["results"][0]["neighbors"]} == {element}


def test_an_id_given_twice_in_one_request_ends_as_its_last_version(client, service_data):
    first, second = references(service_data, [0, 25])
    second = {**second, "id": first["id"]}
    ids = client.post("/references", json={"references": [first, second]}).json()["ids"]
    assert ids == [first["id"], first["id"]]
    assert client.get(f"/references/{first['id']}").json()["element_id"] == second["element_id"]
    assert client.get("/ready").json() == {
        **client.get("/ready").json(),
        "references": 1,
        "stored": 1,
    }


def test_bulk_load_names_the_bad_signal_and_stores_nothing(client, service_data):
    signals = service_data.signals[:4].copy()
    signals[2, 0, 5] = np.nan
    buffer = io.BytesIO()
    np.savez(
        buffer,
        signals=signals,
        element_ids=service_data.element_ids[:4],
        session_ids=service_data.session_ids[:4],
    )
    response = client.post("/references/npz", content=buffer.getvalue())
    assert response.status_code == 422
    assert "non-finite" in response.json()["detail"][0]["msg"]
    single = io.BytesIO()
    np.save(single, signals[:, 0])  # a .npy array, not an .npz archive
    assert client.post("/references/npz", content=single.getvalue()).status_code == 422
    assert client.get("/ready").json()["stored"] == 0


def test_ids_with_slashes_are_read_and_deleted_by_id(client, service_data):
    ref = {**references(service_data, [0])[0], "id": "line-3/cycle 7", "element_id": "plant/p7"}
    assert client.post("/references", json={"references": [ref]}).status_code == 201
    path = "/references/line-3%2Fcycle%207"  # as a client quotes it
    assert client.get(path).json()["id"] == "line-3/cycle 7"
    drift = client.get("/elements/plant%2Fp7/drift")
    assert drift.status_code == 409 and "1 session" in drift.json()["detail"][0]["msg"]  # found
    assert client.delete(path).status_code == 204
    assert client.get(path).status_code == 404
    missing = client.delete("/references/a%0Ab")  # a newline too reaches the route
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["path", "ref_id"]


def test_every_json_route_reads_what_curl_sends_by_default(client, service_data):
    """curl -d sends application/x-www-form-urlencoded: the body is JSON all the same."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = orjson.dumps({"references": references(service_data, [0, 1])})
    created = client.post("/references", content=body, headers=form)
    assert created.status_code == 201, created.text
    signals = orjson.dumps({"signals": service_data.signals[:1, 0].tolist()})
    for route in ("/embed", "/keypoints", "/search"):
        assert client.post(route, content=signals, headers=form).status_code == 200, route
