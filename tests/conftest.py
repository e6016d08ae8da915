"""Shared fixtures: small data and a tiny trained model, made once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import HierarchicalSignalNet, ModelConfig
from model.data_format import SignalData
from tests.postgres import MISSING, PostgresServer, server_binaries
from training.options import as_flags
from training.synthetic import SynthConfig, generate
from training.train import TrainConfig, Trainer

# One busy thread per test process: two threads on a shared 2-core machine run far slower.
torch.set_num_threads(1)

SHARED_ECG = Path(__file__).resolve().parents[2] / "shared" / "ecg"
TINY_MODEL = {"conv_channels": (8, 16, 16), "gru_hidden": 16, "embedding_dim": 16}
TINY_MODEL_FLAGS = as_flags(TINY_MODEL)
SMALL_MODEL = {"conv_channels": (16, 32, 32), "gru_hidden": 32, "embedding_dim": 32}


def beat_windows(
    element: str, starts: np.ndarray, marks: np.ndarray, length: int = 100, channels: int = 1
) -> SignalData:
    """One window per beat of ``element`` at 250 Hz, keypoints "a", "b", "c": ``marks`` (n, 3)
    are samples of the recording (-1 absent), ``starts`` (n,) where each window begins in it."""
    n = len(starts)
    keypoints = np.where(marks >= 0, marks - starts[:, None], -1)
    return SignalData(
        signals=np.random.default_rng(0).normal(size=(n, channels, length)).astype(np.float32),
        element_ids=np.full(n, element),
        session_ids=np.full(n, f"{element}/s"),
        keypoints=keypoints.astype(np.int64),
        keypoint_names=["a", "b", "c"],
        fs=250.0,
        extras={"window_start": starts.astype(np.int64)},
    )


@pytest.fixture(scope="session")
def tiny_data():
    return generate(SynthConfig(elements=8, sessions=3, signals=4, length=64, seed=3))


@pytest.fixture
def shaped():
    """An untrained network whose served embedding also holds the signal re-centred on
    keypoint "b" (32 samples of 2 channels, pooled in pairs, 0.3 of the similarity)."""
    torch.manual_seed(0)
    config = ModelConfig(
        in_channels=2,
        conv_channels=(8, 16),
        gru_hidden=16,
        embedding_dim=12,
        num_keypoints=3,
        keypoint_names=["a", "b", "c"],
        morphology_keypoint="b",
        morphology_width=32,
        morphology_pool=2,
        morphology_weight=0.3,
    )
    return HierarchicalSignalNet(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("tiny_model")
    Trainer(TrainConfig(epochs=1, p=4, k=4, model=TINY_MODEL), tiny_data, out).fit()
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The small model the service and client tests serve (trained once per run)."""
    out = tmp_path_factory.mktemp("service_model")
    data = generate(SynthConfig(elements=32, sessions=3, signals=8, length=128, seed=10))
    Trainer(TrainConfig(epochs=6, p=8, k=4, lr=3e-3, model=SMALL_MODEL), data, out).fit()
    return out


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole run; each test takes a database of its own."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(MISSING)
    server = PostgresServer(binaries)
    yield server
    server.close()


PUMP = {"channels": 2, "length": 96}  # the second collection's signals: unlike the default's


@pytest.fixture(scope="session")
def pump_data():
    return generate(SynthConfig(elements=6, sessions=2, signals=4, seed=21, **PUMP))


@pytest.fixture(scope="session")
def pump_model_dir(tmp_path_factory, pump_data) -> Path:
    """A model of other channels, lengths and embedding size than the default one."""
    out = tmp_path_factory.mktemp("pump_model")
    model = {"conv_channels": (8, 8, 8), "gru_hidden": 8, "embedding_dim": 24}
    Trainer(TrainConfig(epochs=1, p=4, k=4, model=model), pump_data, out).fit()
    return out


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, model_dir, pump_model_dir) -> Path:
    """A model repository: ``ecg`` (the default collection's model) and ``pump``."""
    root = tmp_path_factory.mktemp("models")
    (root / "ecg").symlink_to(model_dir)
    (root / "pump").symlink_to(pump_model_dir)
    return root
