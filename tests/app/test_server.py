"""A real uvicorn process on loopback: restarts, concurrency, auth, model changes, bad models."""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from app.database import PostgresDatabase, SqliteDatabase
from app.store import NewReference, ReferenceStore
from tests.app.helpers import references


def test_references_survive_a_restart_and_a_kill(server_factory, service_data):
    server = server_factory().start()
    refs = references(service_data, range(40))
    assert httpx.post(f"{server.url}/references", json={"references": refs[:20]}).status_code == 201
    server.stop()  # graceful (SIGTERM)
    server.start()  # the segment built at the first start mapped, the 20 writes replayed
    assert httpx.get(f"{server.url}/ready").json()["references"] == 20
    assert "replayed to" in server.log.read_text() and "(20 since)" in server.log.read_text()
    assert httpx.post(f"{server.url}/references", json={"references": refs[20:]}).status_code == 201
    server.stop(signal.SIGKILL)  # nothing saved at exit: the log and the store are the truth
    server.start()
    assert httpx.get(f"{server.url}/ready").json()["references"] == 40
    query = {"signals": [refs[33]["signal"]], "k": 1}
    hit = httpx.post(f"{server.url}/search", json=query).json()["results"][0]["neighbors"][0]
    assert hit["id"] == "ref-33" and hit["similarity"] > 0.999
    assert "(40 since)" in server.log.read_text()


def test_concurrent_requests_are_answered_correctly(server_factory, service_data):
    server = server_factory(HSN_BATCH_MAX_WAIT_MS="5").start()
    x = service_data.signals[:, 0]
    expected = httpx.post(f"{server.url}/embed", json={"signals": x[:24].tolist()}).json()

    def one(i: int):
        body = httpx.post(f"{server.url}/embed", json={"signals": [x[i].tolist()]}, timeout=30)
        return body.json()["embeddings"][0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    np.testing.assert_allclose(results, expected["embeddings"], atol=1e-5)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'hsn_requests_total{method="POST",route="/embed",status="200"} 25.0' in metrics


def test_api_key_over_http_and_never_in_logs(server_factory, service_data):
    server = server_factory(HSN_API_KEY="k3y-do-not-log").start()
    body = {"references": references(service_data, [0])}
    assert httpx.post(f"{server.url}/references", json=body).status_code == 401
    ok = httpx.post(
        f"{server.url}/references", json=body, headers={"authorization": "Bearer k3y-do-not-log"}
    )
    assert ok.status_code == 201
    server.stop()
    log = server.log.read_text()
    assert "k3y-do-not-log" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/references" and line["status"] == 401 for line in lines)
    assert all(line["request_id"] for line in lines)


def test_a_new_model_re_embeds_stored_references(server_factory, other_model_dir, service_data):
    server = server_factory().start()
    refs = references(service_data, range(12))
    httpx.post(f"{server.url}/references", json={"references": refs})
    server.stop()
    server.env["HSN_MODEL_DIR"] = str(other_model_dir)
    server.start()
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["references"] == ready["stored"] == 12
    stored = httpx.get(f"{server.url}/references/ref-5").json()
    assert stored["model_version"] != ready["model_version"]  # the model that wrote it
    hit = httpx.post(f"{server.url}/search", json={"signals": [refs[5]["signal"]], "k": 1})
    assert hit.json()["results"][0]["neighbors"][0]["similarity"] > 0.999
    assert "embedding 12 references stored by another model" in server.log.read_text()


def test_a_missing_or_tampered_model_exits_with_one_clear_line(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with open(broken / "model.pt", "ab") as f:
        f.write(b"tampered")
    for directory, message in (
        (tmp_path / "none", "no exported model in"),
        (broken, "SHA-256 does not match the manifest"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "app",
                "--model-dir",
                str(directory),
                "--data-dir",
                str(tmp_path / "d"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stderr.strip().startswith("error:") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_kill_mid_stream_loses_nothing_acknowledged(server_factory, service_data):
    """Several clients stream inserts; SIGKILL lands mid-stream; after a restart every reference
    that got a 2xx is there and searchable, and the index agrees with the store."""
    server = server_factory().start()
    x = service_data.signals[:, 0]
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                i = (worker * 31 + n) % len(x)
                # Noise, not an offset: the model z-scores its input, so signals that differ by
                # a constant embed identically and tie for nearest neighbour.
                noise = np.random.default_rng(worker * 100_000 + n).normal(0, 0.05, x.shape[1])
                ref = {
                    "id": f"w{worker}-{n}",
                    "element_id": str(service_data.element_ids[i]),
                    "session_id": str(service_data.session_ids[i]),
                    "signal": (x[i] + noise).tolist(),
                }
                try:
                    response = http.post("/references", json={"references": [ref]})
                except httpx.TransportError:
                    return  # the server died under us: this insert was never acknowledged
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(ref["id"])

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 40

    server.start()
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["references"] == ready["stored"] >= len(acknowledged)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for ref_id in acknowledged:
            stored = http.get(f"/references/{ref_id}")
            assert stored.status_code == 200, ref_id
            hit = http.post("/search", json={"signals": [stored.json()["signal"]], "k": 1})
            assert hit.json()["results"][0]["neighbors"][0]["id"] == ref_id


def test_a_truncated_index_segment_is_rebuilt_never_served(server_factory, service_data):
    server = server_factory().start()
    refs = references(service_data, range(15))
    httpx.post(f"{server.url}/references", json={"references": refs})
    server.stop()
    segments = server.log.parent / "data" / "segments"
    shutil.rmtree(segments)
    server.start()  # no segment: one built of the 15
    server.stop()
    (vectors,) = segments.glob("*/*/*/vectors")
    vectors.write_bytes(vectors.read_bytes()[:100])  # truncated, meta.json still "matching"
    server.start()
    assert httpx.get(f"{server.url}/ready").json()["references"] == 15
    hit = httpx.post(f"{server.url}/search", json={"signals": [refs[9]["signal"]], "k": 1})
    assert hit.json()["results"][0]["neighbors"][0]["id"] == "ref-9"
    log = server.log.read_text()
    assert "not used: vectors is 100 bytes" in log and "built a flat index segment of 15" in log


def test_the_server_stays_responsive_while_a_huge_body_is_refused(server_factory):
    server = server_factory(HSN_MAX_BODY_BYTES=str(4 * 1024 * 1024)).start()

    def huge():
        with httpx.Client(timeout=60) as http:
            payload = b'{"signals": [[' + b"0.5, " * 2_000_000 + b"0.5]]}"
            return http.post(
                f"{server.url}/embed", content=payload, headers={"content-type": "application/json"}
            ).status_code

    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(huge)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - started)
        assert refused.result() == 413
    assert max(latencies) < 1.0


def fill_store(data: Path, database_url: str | None, model_dir: Path, n: int) -> np.ndarray:
    """``n`` references of random unit vectors written straight into the service's store
    (element e<i % 100>), as the served model's; returns their (zero) signal."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    database = (
        SqliteDatabase(data / "references.sqlite3")
        if database_url is None
        else PostgresDatabase(database_url)
    )
    store = ReferenceStore(database)
    store.prepare()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, manifest["embedding_dim"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    signal_ = np.zeros((manifest["in_channels"], 64), np.float32)
    store.upsert(
        [NewReference(f"r{i}", f"e{i % 100}", "s", {}, signal_, v) for i, v in enumerate(vectors)],
        manifest["model_version"],
    )
    store.close()
    return signal_


def test_two_workers_starting_together_build_one_segment_and_both_map_it(
    server_factory, model_dir, database_url, tmp_path
):
    """HSN_WORKERS=2 on a store with no segment: one worker builds (the folder's lock), the
    other waits for it and maps what it published; both answer from it."""
    data = tmp_path / "data"
    data.mkdir()
    signal_ = fill_store(data, database_url, model_dir, 25_000)
    server = server_factory(HSN_WORKERS="2").start(timeout=120)  # one worker answers /ready
    served_by = set()
    query = {"signals": [signal_.tolist()], "k": 3, "element_id": "e7"}
    deadline = time.monotonic() + 120
    while len(served_by) < 2 and time.monotonic() < deadline:  # until both answer
        with httpx.Client(timeout=60) as fresh:  # a new connection: either worker may take it
            answer = fresh.post(f"{server.url}/search", json=query)
        served_by.add(answer.headers["x-served-by"])
        assert [int(h["id"][1:]) % 100 for h in answer.json()["results"][0]["neighbors"]] == [7] * 3
    assert len(served_by) == 2
    log = server.log.read_text()
    assert log.count("built a ivf index segment of 25000 references") == 1, log[-3000:]
    # the other waited for the build lock and took the published segment, or started after it
    started = log.count("built index from the store: 25000") + log.count("mapped index segment")
    assert started == 2, log[-3000:]
    segments = list((data / "segments").glob("*/*/0*"))
    assert len(segments) == 1


def test_a_server_killed_while_it_builds_a_segment_loses_nothing(
    server_factory, model_dir, database_url
):
    """Past the mutable segment's limit a build starts in the background; SIGKILL mid-build
    leaves a hidden half-written folder, never served: the restart replays the log, builds
    again (removing it) and holds every reference."""
    server = server_factory().start()
    server.stop()
    data = server.log.parent / "data"
    signal_ = fill_store(data, database_url, model_dir, 30_000)
    segments = data / "segments"
    killed = threading.Event()

    def kill_mid_build() -> None:  # the build may run before or after /ready first answers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.process is not None and list(segments.glob("*/*/.building-*")):
                server.process.send_signal(signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=kill_mid_build)
    watcher.start()
    try:
        server.start()  # maps the empty segment, replays 30,000: a build starts
    except RuntimeError:  # killed before it was ready
        pass
    watcher.join()
    assert killed.is_set(), "the build was never seen under way"
    server.process.wait(timeout=30)
    server.start()
    for _ in range(600):
        status = httpx.get(f"{server.url}/ready").json()
        if status["collections"][0]["segments"]["large_references"] == 30_000:
            break
        time.sleep(0.1)
    assert status["references"] == 30_000 and status["index"] == "ivf"
    assert not list(segments.glob("*/*/.building-*"))  # the dead build's folder went
    assert len(list(segments.glob("*/*/0*"))) == 1  # and the older segment
    query = {"signals": [signal_.tolist()], "k": 3, "element_id": "e7"}
    hits = httpx.post(f"{server.url}/search", json=query).json()["results"][0]["neighbors"]
    assert len(hits) == 3 and all(int(h["id"][1:]) % 100 == 7 for h in hits)
