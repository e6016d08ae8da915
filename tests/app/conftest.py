"""A small trained model, a service on it (in-process and as a real uvicorn process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.postgres import free_port
from training.synthetic import SynthConfig, generate
from training.train import TrainConfig, Trainer


@pytest.fixture(scope="session")
def service_data():
    """Elements the model never saw: references and queries for the service."""
    return generate(SynthConfig(elements=6, sessions=3, signals=6, length=128, seed=11))


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """A second, different model (another version) for model changes and rollouts."""
    out = tmp_path_factory.mktemp("other_model")
    data = generate(SynthConfig(elements=8, sessions=2, signals=4, length=128, seed=12))
    model = {"conv_channels": (8, 8, 8), "gru_hidden": 8, "embedding_dim": 32}
    Trainer(TrainConfig(epochs=1, p=4, k=4, model=model), data, out).fit()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    """Every service test runs on both engines: the embedded SQLite file (None) and a real
    PostgreSQL server (a fresh database per test)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def make_client(model_dir, tmp_path, database_url):
    """make_client(**settings) -> a TestClient on a fresh data directory (lifespan running)."""
    clients = []

    def make(**overrides) -> TestClient:
        overrides.setdefault("database_url", database_url)
        overrides.setdefault("data_dir", tmp_path / "data")
        settings = Settings(model_dir=model_dir, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


class Server:
    """``python -m app`` as a user runs it, on a loopback port."""

    def __init__(self, model_dir: Path, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HSN_MODEL_DIR": str(model_dir),
            "HSN_DATA_DIR": str(data_dir),
            "HSN_PORT": str(self.port),
            **env,
        }
        self.process: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 60) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@pytest.fixture
def server_factory(model_dir, tmp_path, database_url):
    servers: list[Server] = []

    def make(**env: str) -> Server:
        if database_url is not None:
            env.setdefault("HSN_DATABASE_URL", database_url)
        server = Server(model_dir, tmp_path / "data", **env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process and server.process.poll() is None:
            server.stop(signal.SIGKILL)
