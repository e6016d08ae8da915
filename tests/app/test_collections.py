"""Collections on both engines: made, listed and deleted; two models side by side in one
process; never one collection's references in another's answers (property-based, against a
model of what each holds); a collection deleted under load; a database of schema 4 becoming
the collection default."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.database import PostgresDatabase, SqliteDatabase
from app.store import ReferenceStore
from tests.app.helpers import references


def detail(response: httpx.Response) -> dict:
    return response.json()["detail"][0]


@pytest.fixture
def repo_client(make_client, model_repository):
    return make_client(model_repository=model_repository)


def test_collections_are_made_listed_read_and_deleted(repo_client, service_data):
    client = repo_client
    (default,) = client.get("/collections").json()["items"]
    assert default["name"] == "default" and default["model"] is None
    made = client.post("/collections", json={"name": "pump", "model": "pump"})
    assert made.status_code == 201, made.text
    pump = made.json()
    assert (pump["name"], pump["model"], pump["dim"], pump["in_channels"]) == (
        "pump",
        "pump",
        24,
        2,
    )
    assert pump["references"] == 0 and pump["model_version"] != default["model_version"]
    listed = client.get("/collections").json()["items"]
    assert [c["name"] for c in listed] == ["default", "pump"]
    assert client.get("/collections/pump").json() == pump

    client.post("/references", json={"references": references(service_data, range(3))})
    assert client.get("/collections/default").json()["references"] == 3
    assert client.delete("/collections/pump").status_code == 204
    assert client.get("/collections/pump").status_code == 404
    assert [c["name"] for c in client.get("/collections").json()["items"]] == ["default"]
    # a name deleted and made again is a new, empty collection
    again = client.post("/collections", json={"name": "pump", "model": "ecg"}).json()
    assert again["references"] == 0 and again["dim"] == default["dim"]


def test_names_models_and_the_default_collection_are_checked(repo_client):
    client = repo_client
    cases = [
        (client.post("/collections", json={"name": "Bad Name"}), 422, ["body", "name"]),
        (client.post("/collections", json={"name": "x", "model": "none"}), 404, ["body", "model"]),
        (client.post("/collections", json={"name": "x", "model": "../x"}), 404, ["body", "model"]),
        (client.post("/collections", json={"name": "default"}), 409, ["body", "name"]),
        (client.get("/collections/nope"), 404, ["path", "collection"]),
        (client.get("/collections/Nope!"), 422, ["path", "collection"]),
        (
            client.post("/collections/nope/search", json={"signals": [[0.0] * 64]}),
            404,
            ["path", "collection"],
        ),
        (client.get("/collections/-x/elements"), 422, ["path", "collection"]),
        (client.delete("/collections/default"), 409, ["path", "collection"]),
        (client.delete("/collections/nope"), 404, ["path", "collection"]),
    ]
    for response, status, loc in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert detail(response)["loc"] == loc, (response.request.url, response.text)
    assert "pump" in detail(cases[1][0])["msg"]  # the repository's models are named


def test_no_repository_means_collections_of_the_default_model(make_client):
    client = make_client()
    refused = client.post("/collections", json={"name": "a", "model": "pump"})
    assert refused.status_code == 404 and "HSN_MODEL_REPOSITORY" in detail(refused)["msg"]
    made = client.post("/collections", json={"name": "a"})
    assert made.status_code == 201 and made.json()["model"] is None


def test_two_models_serve_side_by_side_in_one_process(repo_client, service_data, pump_data):
    client = repo_client
    client.post("/collections", json={"name": "pump", "model": "pump"}).raise_for_status()
    client.post("/collections", json={"name": "ecg", "model": "ecg"}).raise_for_status()
    pump_signals = pump_data.signals[:4].tolist()  # (4, 2, 96)
    ecg_signals = service_data.signals[:4, 0].tolist()

    embedded = client.post("/collections/pump/embed", json={"signals": pump_signals}).json()
    assert embedded["dim"] == 24 and np.asarray(embedded["embeddings"]).shape == (4, 24)
    plain = client.post("/embed", json={"signals": ecg_signals}).json()
    same = client.post("/collections/default/embed", json={"signals": ecg_signals}).json()
    ecg = client.post("/collections/ecg/embed", json={"signals": ecg_signals}).json()
    assert plain == same and plain["embeddings"] == ecg["embeddings"]  # one model, loaded once

    wrong = client.post("/collections/pump/embed", json={"signals": ecg_signals})
    assert wrong.status_code == 422, wrong.text
    assert detail(wrong)["msg"] == (
        "1 channel(s), the model expects 2 (collection pump: 2 channel(s) of 32 to 8192 samples)"
    )
    assert client.get("/collections/pump/model").json()["in_channels"] == 2
    assert client.get("/model").json()["in_channels"] == 1

    refs = [
        {
            "id": f"p{i}",
            "element_id": str(pump_data.element_ids[i]),
            "session_id": "s",
            "signal": pump_data.signals[i].tolist(),
        }
        for i in range(4)
    ]
    assert client.post("/collections/pump/references", json={"references": refs}).status_code == 201
    hit = client.post("/collections/pump/search", json={"signals": pump_signals[:1], "k": 1})
    assert hit.json()["results"][0]["neighbors"][0]["id"] == "p0"
    assert (
        client.post("/search", json={"signals": ecg_signals[:1]}).json()["results"][0]["neighbors"]
        == []
    )

    ready = client.get("/ready").json()
    by_name = {c["name"]: c for c in ready["collections"]}
    assert set(by_name) == {"default", "pump", "ecg"} and by_name["pump"]["references"] == 4
    assert by_name["pump"]["model_memory_bytes"] > 0
    assert by_name["ecg"]["model_memory_bytes"] == by_name["default"]["model_memory_bytes"]
    metrics = client.get("/metrics").text
    assert 'hsn_index_references{collection="pump"} 4.0' in metrics
    client.delete("/collections/pump").raise_for_status()
    assert 'collection="pump"' not in client.get("/metrics").text  # its series go with it


# -- isolation ------------------------------------------------------------------------------

COLLECTIONS = ("default", "a", "b")
writes = st.lists(
    st.tuples(
        st.sampled_from(COLLECTIONS),
        st.sampled_from(["upsert", "upsert", "delete"]),
        st.integers(0, 5),  # the reference id: the same ids are written in several collections
        st.integers(0, 2),  # its element
        st.integers(0, 17),  # its signal
    ),
    min_size=1,
    max_size=14,
)


def prefix(collection: str) -> str:
    return "" if collection == "default" else f"/collections/{collection}"


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=writes)
def test_a_collection_never_answers_with_another_ones_references(make_client, service_data, steps):
    client = make_client()
    for name in COLLECTIONS[1:]:
        assert client.post("/collections", json={"name": name}).status_code in (201, 409)
    for name in COLLECTIONS:  # each example starts empty
        for ref in client.get(f"{prefix(name)}/references?limit=1000").json()["items"]:
            client.delete(f"{prefix(name)}/references/{ref['id']}").raise_for_status()
    held: dict[str, dict[str, tuple[str, int]]] = {name: {} for name in COLLECTIONS}
    for collection, action, ref, element, signal in steps:
        at, ref_id = prefix(collection), f"r{ref}"
        if action == "upsert":
            body = {
                "id": ref_id,
                "element_id": f"e{element}",
                "session_id": f"s{element}",
                "signal": service_data.signals[signal, 0].tolist(),
            }
            client.post(f"{at}/references", json={"references": [body]}).raise_for_status()
            held[collection][ref_id] = (f"e{element}", signal)
        else:
            gone = client.delete(f"{at}/references/{ref_id}").status_code
            assert gone == (204 if held[collection].pop(ref_id, None) else 404)

    for name, refs in held.items():
        at = prefix(name)
        listed = client.get(f"{at}/references?limit=1000").json()
        assert {r["id"]: r["element_id"] for r in listed["items"]} == {
            i: e for i, (e, _) in refs.items()
        }
        elements = client.get(f"{at}/elements").json()["items"]
        counts = {e: sum(1 for el, _ in refs.values() if el == e) for e, _ in refs.values()}
        assert {e["element_id"]: e["references"] for e in elements} == counts
        assert client.get(f"/collections/{name}").json()["references"] == len(refs)
        query = {"signals": [service_data.signals[0, 0].tolist()], "k": 20}
        found = client.post(f"{at}/search", json=query).json()["results"][0]["neighbors"]
        assert {n["id"] for n in found} == set(refs)  # all of its own, none of another's
        for element in {f"e{i}" for i in range(3)} - {e for e, _ in refs.values()}:
            signals = service_data.signals[:2, 0].tolist()
            verify = client.post(f"{at}/verify", json={"element_id": element, "signals": signals})
            drift = client.get(f"{at}/elements/{element}/drift")
            assert verify.status_code == 404 and drift.status_code == 404, (name, element)


# -- deletion under load --------------------------------------------------------------------


def test_deleting_a_collection_under_load_loses_nothing_of_the_others(server_factory, service_data):
    server = server_factory(HSN_SYNC_INTERVAL_MS="200").start()
    url = server.url
    with httpx.Client(timeout=30) as http:
        for name in ("keep", "gone"):
            assert http.post(f"{url}/collections", json={"name": name}).status_code == 201
        http.post(
            f"{url}/collections/gone/references",
            json={"references": references(service_data, range(60), prefix="g")},
        ).raise_for_status()
    acknowledged: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def write(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                ref = references(service_data, [i % len(service_data.signals)], prefix=f"k{n}")[0]
                ref["id"] = f"k{n}-{i}"
                answer = http.post(f"{url}/collections/keep/references", json={"references": [ref]})
                statuses.append(answer.status_code)
                if answer.status_code == 201:
                    acknowledged.append(ref["id"])
                ref["id"] = f"g{n}-{i}"  # and one to the collection being deleted
                statuses.append(
                    http.post(
                        f"{url}/collections/gone/references", json={"references": [ref]}
                    ).status_code
                )
                for target in ("keep", "gone"):
                    query = {"signals": [ref["signal"]], "k": 3}
                    statuses.append(
                        http.post(f"{url}/collections/{target}/search", json=query).status_code
                    )
                i += 1

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(timeout=30) as http:
            while len(acknowledged) < 15:
                threading.Event().wait(0.05)
            assert http.delete(f"{url}/collections/gone").status_code == 204
            threading.Event().wait(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses and all(s in (200, 201, 404) for s in statuses), sorted(set(statuses))
    with httpx.Client(timeout=30) as http:
        listed = http.get(f"{url}/collections/keep/references?limit=1000").json()
        assert sorted(r["id"] for r in listed["items"]) == sorted(acknowledged)
        assert http.get(f"{url}/collections/gone").status_code == 404
        # nothing of it is left behind: made again, it is empty
        assert http.post(f"{url}/collections", json={"name": "gone"}).json()["references"] == 0


# -- migration ------------------------------------------------------------------------------

SCHEMA_4 = """
CREATE TABLE refs (key {key} PRIMARY KEY {auto}, id TEXT NOT NULL UNIQUE,
  element_id TEXT NOT NULL, session_id TEXT NOT NULL, metadata TEXT NOT NULL,
  channels INTEGER NOT NULL, length INTEGER NOT NULL, signal {blob} NOT NULL,
  model_version TEXT NOT NULL, updated_at TEXT NOT NULL, revision BIGINT NOT NULL DEFAULT 0,
  recorded_at TEXT NOT NULL);
CREATE INDEX refs_element ON refs (element_id, key);
CREATE TABLE embeddings (model_version TEXT NOT NULL, key BIGINT NOT NULL,
  vector {blob} NOT NULL, PRIMARY KEY (key, model_version));
CREATE TABLE changes (seq {key} PRIMARY KEY {auto}, key BIGINT NOT NULL,
  committed_at DOUBLE PRECISION NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('schema_version', 4);
INSERT INTO meta VALUES ('pruned_through', 0)
"""


def test_a_schema_4_database_becomes_the_collection_default(tmp_path, database_url):
    if database_url is None:
        db = SqliteDatabase(tmp_path / "v4.sqlite3")
        types = {"key": "INTEGER", "auto": "AUTOINCREMENT", "blob": "BLOB"}
    else:
        db = PostgresDatabase(database_url)
        types = {"key": "BIGINT GENERATED BY DEFAULT AS IDENTITY", "auto": "", "blob": "BYTEA"}
    signal = np.zeros((1, 64), np.float32).tobytes()
    with db.write() as s:
        for statement in SCHEMA_4.format(**types).split(";"):
            s.execute(statement)
        for n in (1, 2, 3):
            s.execute(
                "INSERT INTO refs (id, element_id, session_id, metadata, channels, length,"
                " signal, model_version, updated_at, recorded_at)"
                " VALUES (?, 'e', 's', '{}', 1, 64, ?, 'm', 't', 't')",
                (f"r{n}", signal),
            )
        s.execute("DELETE FROM refs WHERE id = 'r3'")  # its key 3 must never come back
    store = ReferenceStore(db)
    with db.exclusive():
        assert store.migrate() == 4
    assert store.count() == 2 and store.get("r1").element_id == "e"
    other = store.of_collection(7)
    with db.write() as s:  # a collection for the test (the catalog's job in the service)
        s.execute("INSERT INTO collections (id, name, created_at) VALUES (7, 'x', 't')")
    from app.store import NewReference

    new = NewReference("r1", "e", "s", {}, np.zeros((1, 64), np.float32), np.ones(4, np.float32))
    committed = other.upsert([new], "m")  # the same id in another collection: its own row
    assert committed.keys[0] > 3 and store.count() == 2 and other.count() == 1
    db.close()


def test_a_collection_whose_model_went_missing_is_unavailable_not_fatal(
    make_client, model_dir, tmp_path, service_data
):
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "extra").symlink_to(model_dir)
    client = make_client(model_repository=repository)
    assert client.post("/collections", json={"name": "x", "model": "extra"}).status_code == 201
    client.__exit__(None, None, None)
    (repository / "extra").unlink()  # the operator removed the model folder

    client = make_client(model_repository=repository)  # a restart on the same database
    ready = client.get("/ready").json()
    assert "no model 'extra'" in ready["unavailable"]["x"]
    answer = client.post("/collections/x/embed", json={"signals": [[0.0] * 64]})
    assert answer.status_code == 503 and detail(answer)["loc"] == ["path", "collection"]
    assert client.post("/embed", json={"signals": [[0.0] * 64]}).status_code == 200
    assert client.delete("/collections/x").status_code == 204  # it can still be deleted
    assert "x" not in client.get("/ready").json()["unavailable"]
