"""A real service for the client's tests: ``python -m app`` (the ``Server`` of
tests/app/conftest.py) on the session's small model, with references to search, verify and
score drift against."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from hsn_client import Client

from tests.app.conftest import Server
from training.synthetic import SynthConfig, generate

KEY = "client-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BATCH = 4


@pytest.fixture(scope="session")
def stored_data():
    """Six elements the model never saw, four sessions each: a drift baseline of three
    sessions and one after it."""
    return generate(
        SynthConfig(elements=6, sessions=4, min_sessions=4, signals=4, length=128, seed=21)
    )


@pytest.fixture(scope="session")
def stored_npz(stored_data, tmp_path_factory) -> Path:
    """``stored_data`` as an NPZ of the training format, with ids ``ref-<i>``."""
    path = tmp_path_factory.mktemp("client_refs") / "refs.npz"
    np.savez(
        path,
        signals=stored_data.signals,
        element_ids=stored_data.element_ids,
        session_ids=stored_data.session_ids,
        ids=np.array([f"ref-{i}" for i in range(len(stored_data))]),
        recorded_at=stored_data.extras["recorded_at"],
    )
    return path


@pytest.fixture(scope="session")
def service(model_dir, model_repository, stored_npz, tmp_path_factory):
    """One server for the client's tests: batches of at most MAX_BATCH signals and an API key
    on reads and writes, so every call below is split and authorised. The references of
    ``stored_npz`` are loaded whole, without the client."""
    server = Server(
        model_dir,
        tmp_path_factory.mktemp("client_service") / "data",
        HSN_MAX_BATCH=str(MAX_BATCH),
        HSN_API_KEY=KEY,
        HSN_AUTH_READS="true",
        HSN_MODEL_REPOSITORY=str(model_repository),
    ).start()
    loaded = httpx.post(
        f"{server.url}/references/npz", content=stored_npz.read_bytes(), headers=AUTH, timeout=60
    )
    loaded.raise_for_status()
    yield server
    server.stop()


@pytest.fixture
def client(service):
    with Client(service.url, api_key=KEY) as client:
        yield client


@pytest.fixture
def raw(service):
    """Plain httpx on the same server: what the service answers without the client."""
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as http:
        yield http
