"""Scoped API keys on both engines: every route x every scope x in/out of its collections, the
command line, a revoked key refused by another process within the sync interval, and secrets
never in a log."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from app.errors import Invalid
from app.keys import KeyTable

OPEN = {"/health", "/ready", "/metrics"}  # probes: never asked for a key
PLAIN_WRITES = {
    ("post", "/references"),
    ("post", "/references/npz"),
    ("delete", "/references/{ref_id}"),
}
IN_COLLECTION = "/collections/{collection}"
WRITES = PLAIN_WRITES | {(method, IN_COLLECTION + path) for method, path in PLAIN_WRITES}
ADMIN = {
    ("post", "/collections"),
    ("delete", IN_COLLECTION),
    ("put", IN_COLLECTION + "/model"),
    ("delete", IN_COLLECTION + "/model/versions/{version}"),
    ("post", "/admin/backup"),
}
# not one collection's: a key limited to some collections may call them (and sees its own)
ANY_COLLECTION = {("get", "/collections"), ("post", "/collections")}
WHOLE_DEPLOYMENT = {("post", "/admin/backup")}  # an admin key limited to collections may not


def routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its own routes."""
    return sorted(
        (method.lower(), route.path_format)
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.original_route.include_in_schema
        for method in route.methods
    )


def call(
    client, method: str, path: str, secret: str | None, collection: str = "default"
) -> httpx.Response:
    url = path.replace("{ref_id}", "x").replace("{element_id}", "x")
    url = url.replace("{collection}", collection).replace("{version}", "x")
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    if method == "get":
        return client.get(url, headers=headers)
    if method == "delete":
        return client.delete(url, headers=headers)
    return client.request(method.upper(), url, content=b"{}", headers=headers)


def make_key(client, scope: str, collections=()) -> str:
    """A key made as the command line makes it, then seen by the service without waiting."""
    keys = client.app.state.services.keys
    _, secret = keys.table.create(scope, list(collections))
    keys.refresh()
    return secret


def test_every_route_answers_each_scope_as_it_should(make_client):
    client = make_client(auth_reads=True)
    served = routes(client.app)
    assert len(served) >= 35 and WRITES | ADMIN <= set(served)
    client.post("/collections", json={"name": "ecg"}, headers={})  # no key made yet: open
    read, write, admin = (make_key(client, s) for s in ("read", "write", "admin"))
    elsewhere = make_key(client, "admin", ["ecg"])
    revoked = make_key(client, "write")
    keys = client.app.state.services.keys
    keys.table.revoke(revoked.split("_")[1])
    keys.refresh()
    for method, path in served:
        where = (method, path)
        needs = (
            None
            if path in OPEN
            else "admin"
            if where in ADMIN
            else "write"
            if where in WRITES
            else "read"
        )

        def status(secret, collection="default", method=method, path=path):
            return call(client, method, path, secret, collection).status_code

        if needs is None:
            assert status(None) not in (401, 403), where
            continue
        for secret in (None, "hsn_000000000000_unknown", "not-even-a-key", revoked):
            assert status(secret) == 401, (where, secret)
        assert (status(read) == 403) == (needs != "read"), where
        assert (status(write) == 403) == (needs == "admin"), where
        assert status(admin) not in (401, 403), where
        if where in ANY_COLLECTION:
            assert status(elsewhere) not in (401, 403), where
            continue
        if where in WHOLE_DEPLOYMENT:
            refused = call(client, method, path, elsewhere)
            assert refused.status_code == 403, where
            continue
        refused = call(client, method, path, elsewhere)
        assert refused.status_code == 403, where
        assert "ecg" in refused.json()["detail"][0]["msg"], where
        if IN_COLLECTION in path:  # in its collection, the same key is let in
            assert status(elsewhere, "ecg") not in (401, 403), where
    refused = call(client, "post", "/references", read).json()["detail"][0]
    assert refused["loc"] == ["header", "authorization"]
    assert refused["msg"] == "this key's scope is read: writing references needs write"


def test_a_collection_key_sees_and_makes_only_its_collections(make_client):
    client = make_client(auth_reads=True)
    ecg = make_key(client, "admin", ["ecg", "eeg"])
    made = client.post("/collections", json={"name": "ecg"}, headers=bearer(ecg))
    assert made.status_code == 201
    other = client.post("/collections", json={"name": "pump"}, headers=bearer(ecg))
    assert other.status_code == 403 and "pump" in other.json()["detail"][0]["msg"]
    client.post("/collections", json={"name": "pump"}, headers=bearer(make_key(client, "admin")))
    listed = client.get("/collections", headers=bearer(ecg)).json()["items"]
    assert [c["name"] for c in listed] == ["ecg"]  # not default, not pump
    assert client.delete("/collections/pump", headers=bearer(ecg)).status_code == 403
    assert client.delete("/collections/ecg", headers=bearer(ecg)).status_code == 204


def bearer(secret: str) -> dict:
    return {"authorization": f"Bearer {secret}"}


def test_reads_stay_open_unless_auth_reads_and_the_env_key_is_an_admin(make_client):
    client = make_client(api_key="s3cret")
    write = make_key(client, "write")
    assert call(client, "post", "/embed", None).status_code == 422  # open: read, then refused
    assert call(client, "post", "/references", None).status_code == 401
    assert call(client, "post", "/references", write).status_code == 422
    assert call(client, "post", "/references", "s3cret").status_code == 422


def test_no_key_anywhere_asks_for_none(make_client):
    client = make_client(auth_reads=True)
    assert call(client, "post", "/references", None).status_code == 422


def run_keys(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", "keys", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_line_revokes_a_key_in_a_running_server_within_the_interval(
    server_factory, service_data
):
    server = server_factory(HSN_AUTH_READS="true", HSN_SYNC_INTERVAL_MS="200").start()
    env = {k: v for k, v in server.env.items() if k.startswith("HSN_")}
    made = run_keys(env, "create", "--scope", "read", "--name", "dashboard", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    secret, signal = key["secret"], {"signals": [service_data.signals[0, 0].tolist()]}
    headers = {"authorization": f"Bearer {secret}"}

    def embed() -> int:
        return httpx.post(f"{server.url}/embed", json=signal, headers=headers).status_code

    deadline = time.monotonic() + 5
    while embed() != 200:  # a new key reaches the running process within the interval
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.05)
    listed = run_keys(env, "list", "--json")
    assert secret not in listed.stdout
    (entry,) = json.loads(listed.stdout)
    assert (entry["id"], entry["scope"], entry["name"]) == (key["id"], "read", "dashboard")

    assert run_keys(env, "revoke", key["id"]).returncode == 0
    revoked_at = time.monotonic()
    while embed() != 401:
        assert time.monotonic() - revoked_at < 2.0, "still accepted 2 s after revoking"
        time.sleep(0.02)
    assert run_keys(env, "revoke", key["id"]).returncode == 1  # already revoked: said so
    server.stop()
    log = server.log.read_text()
    assert secret not in log and key["id"] in log  # the access log names the key, never its secret
    assert run_keys(env, "list", "--json").stdout.strip() == "[]"


def test_keys_are_stored_hashed(tmp_path):
    from app.database import SqliteDatabase
    from app.store import ReferenceStore

    store = ReferenceStore(SqliteDatabase(tmp_path / "refs.sqlite3"))
    store.prepare()
    table = KeyTable(store.db)
    key, secret = table.create("write", ["ecg", "pump"], "ingest")
    with store.db.read() as s:
        (stored,) = s.execute("SELECT hash FROM api_keys").fetchone()
    assert stored.startswith("$argon2id$") and secret not in stored
    assert key.collections == ("ecg", "pump") and table.list() == [key]
    with pytest.raises(Invalid, match="collection name"):
        table.create("read", ["Not Valid"])
    store.close()
