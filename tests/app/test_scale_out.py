"""Several server processes over one reference store: replicas on a real PostgreSQL server,
worker processes on one SQLite file, the change log under concurrent writers, database faults."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.database import PostgresDatabase, SqliteDatabase
from app.store import NewReference, ReferenceStore
from tests.app.conftest import Server
from tests.app.helpers import references
from tests.postgres import MISSING, PostgresServer, free_port, server_binaries

SYNC_BOUND_S = 2.0  # HSN_SYNC_INTERVAL_MS is 200: ten times that, for a loaded 2-core box


def found_by(server: Server, ref: dict, http: httpx.Client) -> bool:
    body = {"signals": [ref["signal"]], "k": 1}
    neighbors = http.post(f"{server.url}/search", json=body).json()["results"][0]["neighbors"]
    return bool(neighbors) and neighbors[0]["id"] == ref["id"]


def wait_until(condition, timeout: float = SYNC_BOUND_S) -> float:
    """Seconds until ``condition()`` held; fails past ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the bound"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def replicas(model_dir, tmp_path, postgres):
    """Two server processes (own data directories) on one PostgreSQL database."""
    url = postgres.new_database()
    servers = [
        Server(model_dir, tmp_path / f"replica-{name}", HSN_DATABASE_URL=url) for name in "ab"
    ]
    yield servers
    for server in servers:
        if server.process and server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_a_collection_made_on_one_replica_is_served_by_the_other(
    model_dir, model_repository, tmp_path, postgres, service_data, pump_data
):
    """Two models side by side on two replicas: a collection made, written and deleted through
    one is served (and then no longer) by the other within the sync interval."""
    url = postgres.new_database()
    a, b = (
        Server(
            model_dir,
            tmp_path / f"replica-{name}",
            HSN_DATABASE_URL=url,
            HSN_MODEL_REPOSITORY=str(model_repository),
        ).start()
        for name in "ab"
    )
    try:
        pump_refs = [
            {
                "id": f"p{i}",
                "element_id": str(pump_data.element_ids[i]),
                "session_id": "s",
                "signal": pump_data.signals[i].tolist(),
            }
            for i in range(6)
        ]
        query = {"signals": [pump_refs[2]["signal"]], "k": 1}
        with httpx.Client(timeout=30) as http:
            made = http.post(f"{a.url}/collections", json={"name": "pump", "model": "pump"})
            assert made.status_code == 201, made.text
            wait_until(lambda: http.get(f"{b.url}/collections/pump").status_code == 200)
            stored = http.post(
                f"{a.url}/collections/pump/references", json={"references": pump_refs}
            )
            assert stored.status_code == 201

            def b_finds_it() -> bool:
                answer = http.post(f"{b.url}/collections/pump/search", json=query).json()
                neighbors = answer["results"][0]["neighbors"]
                return bool(neighbors) and neighbors[0]["id"] == "p2"

            wait_until(b_finds_it)
            ecg = references(service_data, range(4))
            http.post(f"{b.url}/references", json={"references": ecg}).raise_for_status()
            wait_until(lambda: found_by(a, ecg[1], http))  # default: its own model, its own set
            assert http.get(f"{a.url}/collections/pump").json()["references"] == 6
            assert http.delete(f"{a.url}/collections/pump").status_code == 204
            wait_until(lambda: http.get(f"{b.url}/collections/pump").status_code == 404)
            assert found_by(b, ecg[1], http)
    finally:
        for server in (a, b):
            server.stop(signal.SIGKILL)


def test_replicas_see_each_others_writes_and_deletes(replicas, service_data):
    a, b = (server.start() for server in replicas)
    refs = references(service_data, range(10))
    with httpx.Client(timeout=30) as http:
        assert http.post(f"{a.url}/references", json={"references": refs}).status_code == 201
        assert found_by(a, refs[3], http)  # read-your-writes: at once on the writer
        wait_until(lambda: found_by(b, refs[3], http))
        assert http.delete(f"{a.url}/references/{refs[3]['id']}").status_code == 204
        wait_until(lambda: not found_by(b, refs[3], http))
        assert http.get(f"{b.url}/ready").json()["references"] == 9


def test_a_killed_replica_loses_no_acknowledged_write_and_catches_up(replicas, service_data):
    a, b = (server.start() for server in replicas)
    refs = references(service_data, range(len(service_data.signals)))
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(part: list[dict]) -> None:
        with httpx.Client(timeout=30) as http:
            for ref in part:
                if stop.is_set():
                    return
                try:
                    response = http.post(f"{a.url}/references", json={"references": [ref]})
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    acknowledged.append(ref["id"])

    threads = [threading.Thread(target=writer, args=(refs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 20, timeout=60)
    a.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join()
    by_id = {ref["id"]: ref for ref in refs}
    with httpx.Client(timeout=30) as http:
        for ref_id in acknowledged:
            assert http.get(f"{b.url}/references/{ref_id}").status_code == 200, ref_id
        wait_until(lambda: all(found_by(b, by_id[i], http) for i in acknowledged), timeout=10)
        stored = http.get(f"{b.url}/ready").json()["stored"]
        a.start()  # rebuilt from the store: it has everything, and follows the log again
        assert http.get(f"{a.url}/ready").json()["references"] == stored
        more = references(service_data, range(3), prefix="late")
        assert http.post(f"{b.url}/references", json={"references": more}).status_code == 201
        # (same signals as refs 0-2, so counted rather than searched: they would tie)
        wait_until(lambda: http.get(f"{a.url}/ready").json()["references"] == stored + 3)


def test_replicas_of_two_model_versions_serve_side_by_side(
    model_dir, other_model_dir, tmp_path, postgres, service_data
):
    """A rollout: each replica searches vectors of its own model; a write through one is
    embedded by the other's model as it applies the log."""
    url = postgres.new_database()
    old = Server(model_dir, tmp_path / "old", HSN_DATABASE_URL=url).start()
    new = Server(other_model_dir, tmp_path / "new", HSN_DATABASE_URL=url)
    refs = references(service_data, range(8))
    try:
        with httpx.Client(timeout=30) as http:
            assert (
                http.post(f"{old.url}/references", json={"references": refs[:4]}).status_code == 201
            )
            new.start()
            versions = {http.get(f"{s.url}/ready").json()["model_version"] for s in (old, new)}
            assert len(versions) == 2
            assert http.get(f"{new.url}/ready").json()["references"] == 4  # embedded at start
            assert (
                http.post(f"{old.url}/references", json={"references": refs[4:]}).status_code == 201
            )
            wait_until(lambda: found_by(new, refs[6], http))  # embedded by the new model
            assert found_by(old, refs[6], http) and found_by(new, refs[1], http)
            hit = http.post(f"{new.url}/search", json={"signals": [refs[6]["signal"]], "k": 1})
            assert hit.json()["results"][0]["neighbors"][0]["similarity"] > 0.999
    finally:
        for server in (old, new):
            if server.process and server.process.poll() is None:
                server.stop(signal.SIGKILL)


def test_worker_processes_on_sqlite_share_writes_and_die_with_their_supervisor(
    model_dir, tmp_path, service_data
):
    server = Server(model_dir, tmp_path / "data", HSN_WORKERS="2").start()
    workers: set[int] = set()

    def on_every_process(ref: dict, stored: bool):
        """A condition: the latest search answered by each of the two processes finds ``ref``
        (or, ``stored`` false, does not). A new connection each search: the kernel spreads
        them over the processes."""
        latest: dict[str, bool] = {}

        def check() -> bool:
            with httpx.Client(timeout=30) as fresh:
                body = {"signals": [ref["signal"]], "k": 1}
                response = fresh.post(f"{server.url}/search", json=body)
            hits = response.json()["results"][0]["neighbors"]
            found = bool(hits) and hits[0]["id"] == ref["id"]  # none yet on a process just up
            latest[response.headers["x-served-by"]] = found == stored
            workers.add(int(response.headers["x-served-by"].rsplit(":", 1)[1]))
            return len(latest) == 2 and all(latest.values())

        return check

    try:
        refs = references(service_data, range(12))
        with httpx.Client(timeout=30) as http:
            created = http.post(f"{server.url}/references", json={"references": refs})
            assert created.status_code == 201
            for ref in refs:
                wait_until(on_every_process(ref, stored=True))
            assert http.delete(f"{server.url}/references/{refs[3]['id']}").status_code == 204
            wait_until(on_every_process(refs[3], stored=False))
        assert len(workers) == 2
        server.stop(signal.SIGKILL)  # the supervisor, as the out-of-memory killer would
        wait_until(lambda: not any(running(pid) for pid in workers))
    finally:
        if server.process.poll() is None:
            server.stop()


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _write_many(url: str, writer: int, count: int) -> None:
    store = ReferenceStore(PostgresDatabase(url, connect_timeout_s=10))
    signal_ = np.zeros((1, 8), np.float32)
    for i in range(count):
        ref = NewReference(f"w{writer}-{i}", "e", "s", {}, signal_, np.ones(4, np.float32))
        store.upsert([ref], "m")
    store.close()


def test_concurrent_writers_on_several_processes_never_make_a_reader_skip(postgres):
    """Sequence numbers are taken before commit: without serialised appends a reader asking for
    seq > last would skip a slower writer's entry forever."""
    url = postgres.new_database()
    store = ReferenceStore(PostgresDatabase(url))
    with store.db.exclusive():
        store.migrate()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(url, w, 60)) for w in range(4)]
    for process in writers:
        process.start()
    applied, seen = 0, []
    while any(p.is_alive() for p in writers) or applied < store.last_seq():
        for change in store.changes_after(applied).entries:
            seen.append(change.seq)
            applied = change.seq
    for process in writers:
        process.join()
        assert process.exitcode == 0
    assert len(seen) == 240 and seen == sorted(seen)
    assert seen == [c.seq for c in store.changes_after(0).entries]  # none skipped
    store.close()


def test_a_lost_database_degrades_then_recovers_without_a_restart(
    model_dir, tmp_path, service_data
):
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(MISSING)
    database = PostgresServer(binaries)  # its own server: this test stops it
    try:
        server = Server(model_dir, tmp_path / "data", HSN_DATABASE_URL=database.new_database())
        server.start()
        refs = references(service_data, range(6))
        with httpx.Client(timeout=30) as http:
            assert (
                http.post(f"{server.url}/references", json={"references": refs[:3]}).status_code
                == 201
            )
            database.stop()
            refused = http.post(f"{server.url}/references", json={"references": refs[3:]})
            assert refused.status_code == 503
            assert refused.json()["detail"][0]["loc"] == ["database"]
            assert found_by(server, refs[1], http)  # searches answer from memory
            wait_until(lambda: http.get(f"{server.url}/ready").json()["degraded"], timeout=10)
            assert http.get(f"{server.url}/ready").status_code == 200
            database.start()
            wait_until(lambda: not http.get(f"{server.url}/ready").json()["degraded"], timeout=15)
            accepted = http.post(f"{server.url}/references", json={"references": refs[3:]})
            assert accepted.status_code == 201
            assert http.get(f"{server.url}/ready").json()["references"] == 6
            assert all(found_by(server, ref, http) for ref in refs)
        server.stop()
    finally:
        database.close()


def run_app(model_dir, tmp_path, **env) -> subprocess.CompletedProcess:
    server = Server(model_dir, tmp_path / "data", **env)
    return subprocess.run(
        [sys.executable, "-m", "app"], env=server.env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported scheme 'mysql'"),
        ("postgresql://u@[::1/db", "Invalid IPv6 URL"),
        ("postgresql://u@h:port/db", "HSN_DATABASE_URL"),
    ],
)
def test_a_bad_database_url_exits_with_one_clear_line(model_dir, tmp_path, url, message):
    result = run_app(model_dir, tmp_path, HSN_DATABASE_URL=url)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unreachable_database_is_retried_then_exits_with_one_line(model_dir, tmp_path):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/db"
    started = time.monotonic()
    result = run_app(model_dir, tmp_path, HSN_DATABASE_URL=url, HSN_DATABASE_CONNECT_TIMEOUT_S="2")
    assert result.returncode == 2 and time.monotonic() - started >= 1.5
    assert "error: database unreachable after 2s" in result.stderr.splitlines()[-1]


def test_a_newer_schema_stops_start_up_with_one_line(model_dir, tmp_path):
    database = SqliteDatabase(tmp_path / "data" / "references.sqlite3")
    store = ReferenceStore(database)
    store.migrate()
    with database.write() as session:
        session.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    store.close()
    result = run_app(model_dir, tmp_path)
    assert result.returncode == 2
    assert "schema version 99, newer than this service's" in result.stderr.splitlines()[-1]
