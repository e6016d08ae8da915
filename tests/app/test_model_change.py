"""Changing a collection's model while serving, on both engines: the switch, writes during the
job, a roll back that re-embeds only what changed, a job taken over from a holder that
stopped, refusals that change nothing, restarts keeping the model; and a holder process
SIGKILLed mid-job with a replica finishing it."""

from __future__ import annotations

import shutil
import signal
import time

import httpx
import numpy as np
import psycopg
import pytest

from app.catalog import CollectionTable
from model.export_format import read_manifest
from tests.app.conftest import Server
from tests.app.helpers import references


@pytest.fixture
def repository(tmp_path, model_dir, other_model_dir, pump_model_dir):
    """``v1`` (the default model), ``v2`` (another model of the same input), ``pump`` (another
    input) and ``tampered`` (v2 with its weights changed under its manifest)."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "v1").symlink_to(model_dir)
    (root / "v2").symlink_to(other_model_dir)
    (root / "pump").symlink_to(pump_model_dir)
    shutil.copytree(other_model_dir, root / "tampered")
    weights = root / "tampered" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    return root


def version_of(folder) -> str:
    return read_manifest(folder)["model_version"]


def detail(response) -> dict:
    return response.json()["detail"][0]


def wait_for(condition, timeout: float = 60.0, what: str = "the model change"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not finish in {timeout:g}s"
        time.sleep(0.05)
    return value


def serving(client, version: str, collection: str = "default"):
    return client.get(f"/collections/{collection}").json()["model_version"] == version


def finds_itself(client, refs: list[dict], version: str) -> None:
    body = {"signals": [r["signal"] for r in refs], "k": 1}
    answer = client.post("/search", json=body).json()
    assert answer["model_version"] == version
    assert [r["neighbors"][0]["id"] for r in answer["results"]] == [r["id"] for r in refs]


def test_a_model_change_switches_keeps_writes_and_rolls_back(make_client, repository, service_data):
    client = make_client(model_repository=repository)
    v1, v2 = version_of(repository / "v1"), version_of(repository / "v2")
    refs = references(service_data, range(60))
    client.post("/references", json={"references": refs[:50]}).raise_for_status()

    started = client.put("/collections/default/model", json={"model": "v2"})
    assert started.status_code == 202, started.text
    upgrade = started.json()["upgrade"]
    assert upgrade["target_version"] == v2 and upgrade["total"] == 50
    client.post("/references", json={"references": refs[50:]}).raise_for_status()  # meanwhile
    metrics = client.get("/metrics").text
    if client.get("/collections/default").json()["upgrade"]:  # (unless it finished already)
        assert 'hsn_upgrade_references{collection="default"}' in metrics
    wait_for(lambda: serving(client, v2))
    finds_itself(client, refs, v2)  # every reference, those written during the job too
    shown = client.get("/collections/default").json()
    assert shown["upgrade"] is None and shown["model"] == "v2"
    assert [v["model_version"] for v in shown["versions"]] == [v2, v1]
    assert "hsn_upgrade_references{" not in client.get("/metrics").text

    # back to HSN_MODEL_DIR's model: its embeddings were kept, one write since re-embedded
    client.post("/references", json={"references": refs[:1]}).raise_for_status()
    back = client.put("/collections/default/model", json={"model": None})
    assert back.status_code == 202 and back.json()["upgrade"]["embedded"] == 59
    wait_for(lambda: serving(client, v1))
    finds_itself(client, refs, v1)
    assert client.get("/ready").json()["model_version"] == v1
    # v2 freed: its embeddings and its index segments go
    segments = client.app.state.services.settings.data_dir / "segments" / "default-0"
    assert {p.name for p in segments.iterdir()} == {v1, v2}
    assert client.delete(f"/collections/default/model/versions/{v2}").status_code == 204
    assert {p.name for p in segments.iterdir()} == {v1}


def test_refused_model_changes_change_nothing(make_client, repository, service_data):
    client = make_client(model_repository=repository)
    v1 = version_of(repository / "v1")
    client.post("/references", json={"references": references(service_data, range(10))})
    cases = [
        ({"model": "nope"}, 404, "no model 'nope'"),
        ({"model": "pump"}, 409, "the stored signals are 1 channel(s) of 128 to 128 samples"),
        ({"model": "v1"}, 409, "serves model version"),
        ({"model": "tampered"}, 422, "cannot be served"),
        ({"model": 3}, 422, "string"),
    ]
    for body, status, says in cases:
        answer = client.put("/collections/default/model", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert detail(answer)["loc"] == ["body", "model"] and says in detail(answer)["msg"], body
    assert client.put("/collections/nope/model", json={"model": "v2"}).status_code == 404
    shown = client.get("/collections/default").json()
    assert shown["model_version"] == v1 and shown["upgrade"] is None
    gone = client.delete(f"/collections/default/model/versions/{v1}")
    assert gone.status_code == 409 and detail(gone)["loc"] == ["path", "version"]
    assert client.delete("/collections/default/model/versions/nope").status_code == 404


def test_a_job_whose_holder_stopped_is_taken_over_and_a_second_change_waits(
    make_client, repository, service_data
):
    client = make_client(model_repository=repository, upgrade_lease_s=1.0)
    v2 = version_of(repository / "v2")
    refs = references(service_data, range(30))
    client.post("/references", json={"references": refs}).raise_for_status()
    table = CollectionTable(client.app.state.services.store.db)
    # another replica started the change and holds its job, then dies: its lease runs out
    table.start_upgrade(0, "v2", v2, 0)
    assert table.take_lease(0, "a-replica-that-died", 1.0)
    wait_for(lambda: client.get("/collections/default").json()["upgrade"], what="seeing it")
    second = client.put("/collections/default/model", json={"model": "v2"})
    assert second.status_code == 409 and "under way" in detail(second)["msg"]
    wait_for(lambda: serving(client, v2))
    finds_itself(client, refs, v2)


def test_a_changed_model_is_kept_by_a_restart(make_client, repository, service_data, tmp_path):
    client = make_client(model_repository=repository)
    v2 = version_of(repository / "v2")
    client.post("/references", json={"references": references(service_data, range(10))})
    client.put("/collections/default/model", json={"model": "v2"}).raise_for_status()
    wait_for(lambda: serving(client, v2))
    client.__exit__(None, None, None)
    again = make_client(model_repository=repository)  # HSN_MODEL_DIR is still v1's folder
    assert again.get("/ready").json()["model_version"] == v2


def test_a_holder_killed_mid_job_is_replaced_by_a_replica(
    model_dir, repository, tmp_path, postgres, service_data
):
    url = postgres.new_database()
    servers = [
        Server(
            model_dir,
            tmp_path / f"replica-{name}",
            HSN_DATABASE_URL=url,
            HSN_MODEL_REPOSITORY=str(repository),
            HSN_UPGRADE_LEASE_S="2",
        ).start()
        for name in "ab"
    ]
    v2 = version_of(repository / "v2")
    rng = np.random.default_rng(5)
    signals = service_data.signals[rng.integers(0, len(service_data.signals), 3000), 0]
    signals = signals + rng.normal(0, 0.05, signals.shape)
    refs = [
        {"id": f"r{i}", "element_id": f"e{i % 7}", "session_id": "s", "signal": s.tolist()}
        for i, s in enumerate(signals)
    ]
    a, b = servers
    try:
        with httpx.Client(timeout=60) as http:
            for start in range(0, len(refs), 256):
                batch = {"references": refs[start : start + 256]}
                http.post(f"{a.url}/references", json=batch).raise_for_status()
            assert http.put(f"{a.url}/collections/default/model", json={"model": "v2"}).is_success

            def holder_started():  # straight from the database: the job moves fast
                with psycopg.connect(url) as conn:
                    row = conn.execute("SELECT holder FROM upgrades").fetchone()
                    done = conn.execute(
                        "SELECT COUNT(*) FROM embeddings WHERE model_version = %s", (v2,)
                    ).fetchone()[0]
                return row[0] if row and row[0] and done else None

            name = wait_for(holder_started, what="the job's first batch")
            holder = next(s for s in servers if f":{s.process.pid}/" in name)
            survivor = next(s for s in servers if s is not holder)
            holder.stop(signal.SIGKILL)
            with psycopg.connect(url) as conn:
                done_at_kill = conn.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE model_version = %s", (v2,)
                ).fetchone()[0]
            assert 0 < done_at_kill < len(refs)
            wait_for(
                lambda: (
                    http.get(f"{survivor.url}/collections/default").json()["model_version"] == v2
                ),
                timeout=120,
            )
            with psycopg.connect(url) as conn:
                per_key = conn.execute(
                    "SELECT COUNT(*), COUNT(DISTINCT key) FROM embeddings WHERE model_version = %s",
                    (v2,),
                ).fetchone()
            assert per_key == (len(refs), len(refs))  # every one, once
            sample = refs[::50]
            body = {"signals": [r["signal"] for r in sample], "k": 1}
            answer = http.post(f"{survivor.url}/search", json=body).json()
            assert answer["model_version"] == v2
            assert [r["neighbors"][0]["id"] for r in answer["results"]] == [r["id"] for r in sample]
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.stop(signal.SIGKILL)


def test_a_collection_deleted_during_a_change_and_made_again_changes_anew(
    make_client, repository, service_data
):
    client = make_client(model_repository=repository)
    v2 = version_of(repository / "v2")
    client.post("/collections", json={"name": "c", "model": "v1"}).raise_for_status()
    refs = references(service_data, range(10))
    client.post("/collections/c/references", json={"references": refs}).raise_for_status()
    table = CollectionTable(client.app.state.services.store.db)
    first = next(row.id for row in table.list() if row.name == "c")
    table.start_upgrade(first, "v2", v2, 0)  # held by a replica that died: it never moves
    assert table.take_lease(first, "a-replica-that-died", 600.0)
    wait_for(lambda: client.get("/collections/c").json()["upgrade"], what="seeing it")
    assert client.delete("/collections/c").status_code == 204
    client.post("/collections", json={"name": "c", "model": "v1"}).raise_for_status()
    client.post("/collections/c/references", json={"references": refs}).raise_for_status()
    assert client.put("/collections/c/model", json={"model": "v2"}).status_code == 202
    wait_for(lambda: serving(client, v2, "c"))
