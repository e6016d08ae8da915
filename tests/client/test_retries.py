"""Calls sent again: to a server still starting, to one killed and started again on the same
port, and after a real 503 (the database stopped under the server); when they are not, and how
long the client waits in between."""

from __future__ import annotations

import asyncio
import signal
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest
from hsn_client import AsyncClient, Client, HsnError
from hsn_client.retry import RetryPolicy

from tests.app.conftest import Server
from tests.postgres import MISSING, PostgresServer, server_binaries

# Enough for a server to start on a busy 2-core machine: the waits add up to about 25 s or more.
PATIENT = {"retries": 8, "backoff": 0.2}


def test_a_call_waits_for_a_server_that_is_still_starting(model_dir, tmp_path, stored_data):
    server = Server(model_dir, tmp_path / "data")
    x = stored_data.signals[:3, 0]

    async def embed() -> np.ndarray:
        async with AsyncClient(server.url, **PATIENT) as client:
            return await client.embed(x)

    starting = threading.Thread(target=server.start)
    starting.start()
    try:
        with pytest.raises(HsnError) as early:  # not up yet: without retries the call fails
            Client(server.url, retries=0).embed(x)
        assert early.value.status is None and "no answer from" in str(early.value)
        embeddings = asyncio.run(embed())
    finally:
        starting.join()
    expected = httpx.post(f"{server.url}/embed", json={"signals": x.tolist()}).json()
    np.testing.assert_allclose(embeddings, expected["embeddings"], atol=1e-6)
    server.stop()


def test_calls_ride_out_a_server_killed_and_started_again(model_dir, tmp_path, stored_data):
    server = Server(model_dir, tmp_path / "data").start()
    x = stored_data.signals[:3, 0]
    try:
        with Client(server.url, **PATIENT) as client:
            before = client.embed(x)  # leaves a pooled connection, dead after the kill
            server.stop(signal.SIGKILL)
            restarting = threading.Thread(target=server.start)  # on the same port
            restarting.start()
            after = client.embed(x)
            restarting.join()
        np.testing.assert_allclose(after, before, atol=1e-6)
    finally:
        server.stop(signal.SIGKILL)


def test_a_write_refused_with_503_is_sent_again_once_the_database_is_back(
    model_dir, tmp_path, stored_data
):
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(MISSING)
    database = PostgresServer(binaries)  # its own server: this test stops it
    server = Server(model_dir, tmp_path / "data", HSN_DATABASE_URL=database.new_database())
    x, ids = stored_data.signals[:3, 0], ["pg-0", "pg-1", "pg-2"]
    columns = (["e"] * 3, ["e/s"] * 3)
    try:
        server.start()
        database.stop()
        with pytest.raises(HsnError) as refused:  # the fault is real; not retried, it is raised
            Client(server.url, retries=0).add_references(x, *columns, ids=ids)
        assert refused.value.status == 503 and refused.value.detail[0]["loc"] == ["database"]
        # Back after the service's pool has waited out its 5 s for a connection: the call's
        # first attempt gets 503 with Retry-After: 1, and a later one gets through.
        back = threading.Timer(6.0, database.start)
        back.start()
        with Client(server.url, retries=30) as client:
            assert client.add_references(x, *columns, ids=ids) == ids
            back.join()
            assert client.get_reference("pg-1").session_id == "e/s"
        metrics = httpx.get(f"{server.url}/metrics").text
        refusals = 'hsn_requests_total{method="POST",route="/references",status="503"}'
        assert float(metrics.split(refusals)[1].split()[0]) >= 2  # and this call got one too
        server.stop()
    finally:
        if server.process and server.process.poll() is None:
            server.stop(signal.SIGKILL)
        database.close()


def test_retry_after_is_followed_in_seconds_or_as_a_date():
    policy = RetryPolicy(retries=2, backoff=0.2, max_delay=30)
    assert policy.after_response(httpx.Response(503, headers={"retry-after": "3"}), 0) == 3
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    dated = policy.after_response(httpx.Response(503, headers={"retry-after": in_ten_seconds}), 1)
    assert 8 < dated <= 10
    far = policy.after_response(httpx.Response(503, headers={"retry-after": "3600"}), 0)
    assert far == 30  # never longer than max_delay
    assert 0.1 <= policy.after_response(httpx.Response(503), 0) <= 0.2  # backoff, jittered
    assert 0.2 <= policy.after_response(httpx.Response(503), 1) <= 0.4
    assert policy.after_response(httpx.Response(503), 2) is None  # retries spent
    for status in (200, 404, 500):
        assert policy.after_response(httpx.Response(status), 0) is None


def test_only_calls_safe_to_repeat_are_sent_again_after_the_connection_broke():
    policy = RetryPolicy(retries=1)
    never_sent = httpx.ConnectError("refused")
    broken = httpx.RemoteProtocolError("server disconnected without sending a response")
    assert policy.after_error(never_sent, idempotent=False, attempt=0) is not None
    assert policy.after_error(broken, idempotent=True, attempt=0) is not None
    assert policy.after_error(broken, idempotent=False, attempt=0) is None
    assert policy.after_error(httpx.ReadTimeout("slow"), idempotent=True, attempt=0) is None
    assert policy.after_error(never_sent, idempotent=True, attempt=1) is None
