"""Service settings: every field also comes from the environment as ``HSN_<FIELD>``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HSN_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_dir: Path = Path("models/default")  # the model of the collection default
    # a folder of exported models, one per subfolder: what a collection's "model" names
    model_repository: Path | None = None
    # model versions whose embeddings a collection keeps (the one served included): a change
    # back to a kept one re-embeds only what was written since
    model_versions_kept: int = Field(2, ge=1)
    # a process running a model change renews its lease with every batch; one that died is
    # replaced after this long
    upgrade_lease_s: float = Field(15.0, gt=0)
    # after each batch it embeds, a model change's job pauses this many times the batch's
    # duration, leaving the cores to requests (0: as fast as it can)
    upgrade_pause: float = Field(1.0, ge=0)
    data_dir: Path = Path("data")

    # Storage and processes
    # unset: SQLite in data_dir; postgresql://user:password@host:5432/db: PostgreSQL
    database_url: SecretStr | None = None
    database_connect_timeout_s: float = Field(30.0, ge=0)  # retried with backoff at start-up
    workers: int | Literal["auto"] = 1  # server processes on one port (auto: usable cores)
    sync_interval_ms: float = Field(200.0, gt=0)  # other processes' writes are seen within this
    change_log_keep: int = Field(
        100_000, ge=1000
    )  # entries kept; a process further behind rebuilds

    # Security
    api_key: SecretStr | None = None  # when set, writes need "Authorization: Bearer <key>"
    auth_reads: bool = False  # when true, reads need the key too
    cors_origins: list[str] = []  # empty: CORS off

    # Limits on one request
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # an NPZ body's arrays, inflated: checked on their declared shapes before any is inflated
    max_npz_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    max_batch: int = Field(256, ge=1)  # signals per request
    max_k: int = Field(100, ge=1)

    # Inference
    # Model calls run on inference_workers threads at once (0: one per usable core the process
    # gets), each call on `threads` threads: for this GRU, parallel calls scale with cores and
    # threads within one call hardly do. Two on this 2-core box: 64-signal batches 1.70x, single
    # signals 1.09x, searches 0.96x the throughput of one (BENCHMARKS.md "Default process and
    # thread counts").
    inference_workers: int = Field(0, ge=0)
    threads: int = Field(1, ge=1)
    engine: Literal["onnx", "torchscript"] = "onnx"  # onnx falls back to TorchScript if unsure
    dynamic_batching: bool = True
    # While the inference thread is busy, requests queue; the next call takes all that queued, up
    # to batch_max_signals. Waiting for more (batch_max_wait_ms > 0) only paid on this 2-core box
    # with a slow engine and cost throughput with ONNX Runtime (BENCHMARKS.md).
    batch_max_signals: int = Field(64, ge=1)
    batch_max_wait_ms: float = Field(0.0, ge=0)  # ... or until the first has waited this long

    # Search
    # auto: exact (flat) up to auto_approximate_above references, IVF past it, IVF-PQ past
    # auto_compress_above
    index_type: Literal["auto", "flat", "ivf", "ivfpq", "hnsw"] = "auto"
    auto_approximate_above: int = Field(20_000, ge=1)
    auto_compress_above: int = Field(100_000, ge=1)  # auto: IVF-PQ past this many references
    ivf_nprobe: int = Field(32, ge=1)  # inverted lists a query scans (of about sqrt(N))
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    # FAISS threads in one search: requests run in parallel already (BENCHMARKS.md "Scaling out")
    search_threads: int = Field(1, ge=1)
    anomaly_k: int = Field(3, ge=1)  # neighbours averaged into a query's anomaly distance
    anomaly_threshold: float = Field(0.99, gt=0, le=1)  # calibrated score above this: anomaly

    # Drift monitoring (app/drift.py)
    drift_threshold: float = Field(0.99, gt=0, le=1)  # a session scoring above this is drifting
    drift_baseline_sessions: int = Field(3, ge=1)  # an element's first sessions form its baseline
    drift_permutations: int = Field(1000, ge=10, le=100_000)  # for POST /drift's p-value

    # Alignment (app/alignment.py)
    align_min_confidence: float = Field(0.5, ge=0, le=1)  # keypoints below are not anchors
    align_target_references: int = Field(256, ge=1)  # of an element, for its median keypoints

    # Verification and open-set search (app/verification.py)
    verify_far: float = Field(0.01, gt=0, lt=1)  # target false-accept rate of the thresholds
    verify_k: int = Field(3, ge=1)  # an element's references each probe signal is compared with

    log_level: str = "INFO"

    @property
    def processes(self) -> int:
        return usable_cores() if self.workers == "auto" else self.workers

    @property
    def inference_worker_count(self) -> int:
        """Explicit, or one per usable core this process gets (the cores shared among the
        server processes)."""
        return self.inference_workers or max(1, usable_cores() // self.processes)

    @field_validator("api_key", "database_url", "model_repository", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # HSN_API_KEY= (empty) leaves auth off

    @field_validator("model_repository")
    @classmethod
    def _a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder (one exported model per subfolder)")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container started with --cpus), which os.cpu_count() does not see."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores
