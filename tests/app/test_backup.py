"""Backups on both engines: taken while clients write (every write acknowledged before it is in
it), restored into the other engine with the same answers, refused when damaged, newer or
aimed at a database that holds something; a restore over a served database is never answered
from the old index snapshot."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile

import httpx
import numpy as np
import pytest

from app.backup import FORMAT_VERSION, Archive, BackupError, restore, write_backup
from app.container import open_store
from app.settings import Settings
from tests.app.helpers import references


def other_engine(database_url: str | None, request, tmp_path) -> dict:
    """Settings of an empty database of the engine ``database_url`` is not."""
    if database_url is None:
        return {"database_url": request.getfixturevalue("postgres").new_database()}
    return {"database_url": None, "data_dir": tmp_path / "restored"}


def run_app(settings: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSN_")}
    if settings.get("database_url"):
        env["HSN_DATABASE_URL"] = settings["database_url"]
    env["HSN_DATA_DIR"] = str(settings.get("data_dir", "data"))
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=120
    )


def search_all(client, signals: np.ndarray, collection: str = "") -> list:
    """Neighbours (id, similarity) of every signal, a batch at a time."""
    found = []
    for start in range(0, len(signals), 256):
        body = {"signals": signals[start : start + 256].tolist(), "k": 5}
        for result in client.post(f"{collection}/search", json=body).json()["results"]:
            found.append([(n["id"], n["similarity"]) for n in result["neighbors"]])
    return found


def same_answers(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert [i for i, _ in x] == [i for i, _ in y]
        np.testing.assert_allclose([s for _, s in x], [s for _, s in y], atol=1e-6)


def test_a_backup_restored_into_the_other_engine_answers_the_same(
    make_client, database_url, request, tmp_path, service_data
):
    client = make_client()
    client.post("/references", json={"references": references(service_data, range(50))})
    client.post("/collections", json={"name": "second"}).raise_for_status()
    client.post(
        "/collections/second/references",
        json={"references": references(service_data, range(50, 75), prefix="s")},
    ).raise_for_status()
    client.delete("/references/ref-3").raise_for_status()
    keys = client.app.state.services.keys
    _, secret = keys.table.create("read", ["second"], "restored key")
    _, admin = keys.table.create("admin", [], "backups")
    keys.refresh()
    archive = tmp_path / "copy.zip"
    assert client.post("/admin/backup").status_code == 401
    answer = client.post("/admin/backup", headers={"authorization": f"Bearer {admin}"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    archive.write_bytes(answer.content)

    rng = np.random.default_rng(0)
    queries = (
        service_data.signals[rng.integers(0, len(service_data.signals), 1000), 0]
        + rng.normal(0, 0.05, (1000, service_data.signals.shape[-1]))
    ).astype(np.float32)
    before = search_all(client, queries), search_all(client, queries, "/collections/second")

    target = other_engine(database_url, request, tmp_path)
    restored = run_app(target, "restore", "--from", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "restored 74 references" in restored.stderr
    again = make_client(**target)
    after = search_all(again, queries), search_all(again, queries, "/collections/second")
    same_answers(before[0], after[0])
    same_answers(before[1], after[1])
    assert again.get("/references/ref-3").status_code == 404
    assert again.get("/collections/second").json()["references"] == 25
    headers = {"authorization": f"Bearer {secret}"}  # keys come back (hashed, never recomputed)
    assert again.get("/collections/second/elements", headers=headers).status_code == 200
    # the restored database goes on: new writes get new keys, and are searchable
    admin_headers = {"authorization": f"Bearer {admin}"}
    again.post(
        "/references", json={"references": references(service_data, [3])}, headers=admin_headers
    ).raise_for_status()
    assert again.get("/references/ref-3").status_code == 200


def test_a_backup_taken_while_clients_write_holds_what_was_acknowledged(
    server_factory, service_data, tmp_path
):
    server = server_factory().start()
    acknowledged: list[tuple[float, str]] = []
    stop = threading.Event()

    def write(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while not stop.is_set():
                ref = references(service_data, [i % len(service_data.signals)])[0]
                ref["id"] = f"w{n}-{i}"
                if http.post(f"{server.url}/references", json={"references": [ref]}).is_success:
                    acknowledged.append((threading.get_native_id(), ref["id"]))
                i += 1

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for writer in writers:
        writer.start()
    try:
        while len(acknowledged) < 40:
            threading.Event().wait(0.05)
        before = {ref for _, ref in acknowledged}
        archive = tmp_path / "live.zip"
        made = run_app(
            {
                "data_dir": server.env["HSN_DATA_DIR"],
                "database_url": server.env.get("HSN_DATABASE_URL"),
            },
            "backup",
            "--out",
            str(archive),
        )
        assert made.returncode == 0, made.stderr
        threading.Event().wait(0.5)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    after = {ref for _, ref in acknowledged}
    opened = Archive(archive)
    position = opened.header["position"]
    held = set()
    for batch in opened.batches("refs"):
        held |= set(batch["id"].tolist())
        assert (batch["revision"] <= position).all()  # nothing after the snapshot
    opened.close()
    assert before <= held <= after  # every write acknowledged before it; none unacknowledged
    assert len(after) > len(before)  # the writers went on meanwhile


@pytest.fixture
def archive(make_client, service_data, tmp_path):
    client = make_client()
    client.post("/references", json={"references": references(service_data, range(20))})
    path = tmp_path / "good.zip"
    path.write_bytes(client.post("/admin/backup").content)
    return path


def test_a_damaged_truncated_or_newer_archive_is_refused_before_anything_is_written(
    archive, tmp_path
):
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(damaged, "w") as out:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename.startswith("refs/"):
                content = content[:-10] + b"0123456789"  # same size, other bytes
            out.writestr(info, content)
    newer = tmp_path / "newer.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(newer, "w") as out:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "hsn-backup.json":
                header = json.loads(content)
                content = json.dumps({**header, "version": FORMAT_VERSION + 1}).encode()
            out.writestr(info, content)
    for path, says in (
        (truncated, "not a complete backup archive"),
        (damaged, "is damaged"),
        (newer, "made by a newer service"),
        (tmp_path / "missing.zip", "not a complete backup archive"),
    ):
        with pytest.raises(BackupError) as refused:
            Archive(path)  # what restore opens first, before it opens the database
        assert says in str(refused.value) and "\n" not in str(refused.value), path
    # the command says it in one line and touches no database
    target = {"data_dir": tmp_path / "target"}
    refused = run_app(target, "restore", "--from", str(damaged))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: {damaged}: member refs/000000.npz is damaged (checksum)"
    ]
    assert not (target["data_dir"] / "references.sqlite3").exists()


def test_a_restore_refuses_a_database_that_holds_something_unless_replace(
    make_client, archive, service_data, tmp_path
):
    client = make_client()
    client.post("/references", json={"references": references(service_data, range(20, 25))})
    db = client.app.state.services.store.db
    opened = Archive(archive)
    with pytest.raises(BackupError, match="not empty"):
        restore(db, opened)
    assert restore(db, opened, replace=True).references == 20
    opened.close()


def test_a_replaced_database_is_served_from_its_rows_not_an_old_index_snapshot(
    make_client, database_url, service_data, tmp_path
):
    settings = {"data_dir": tmp_path / "served"}
    client = make_client(**settings)
    client.post("/references", json={"references": references(service_data, range(10))})
    buffer = io.BytesIO()
    store = open_store(Settings(database_url=database_url, **settings))
    write_backup(store.db, buffer)
    client.post("/references", json={"references": references(service_data, range(10, 40))})
    client.__exit__(None, None, None)  # its index snapshot now holds 40 references
    path = tmp_path / "ten.zip"
    path.write_bytes(buffer.getvalue())
    opened = Archive(path)
    restore(store.db, opened, replace=True)
    opened.close()
    store.close()
    again = make_client(**settings)
    assert again.get("/ready").json()["references"] == 10
    assert again.get("/references/ref-20").status_code == 404


def test_a_database_a_service_ran_on_but_stored_nothing_in_counts_as_empty(
    make_client, archive, tmp_path, service_data
):
    """The default row, its served model and a change log of nothing (references written and
    deleted) are not data: the restore replaces them, and nothing it restored is reused."""
    client = make_client(data_dir=tmp_path / "ran")
    client.post("/references", json={"references": references(service_data, range(30))})
    for i in range(30):
        client.delete(f"/references/ref-{i}").raise_for_status()
    db = client.app.state.services.store.db
    opened = Archive(archive)
    summary = restore(db, opened)
    opened.close()
    assert summary.references == 20
    client.__exit__(None, None, None)
    again = make_client(data_dir=tmp_path / "ran")
    again.post("/references", json={"references": references(service_data, [40])})
    listed = again.get("/references?limit=100").json()
    assert listed["total"] == 21  # the restored twenty and the new one, none clashing
