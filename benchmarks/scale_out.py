"""Scale-out figures (BENCHMARKS.md "Scaling out"): worker processes, replication lag, writes.

- /embed (one signal) and /search under wrk with 64 connections, HSN_WORKERS=1 against 2
  (ratios from one run: the machine is noisy);
- replication lag: time from a 201 on one process to the reference being found by another,
  for two replicas on one PostgreSQL (when its server binaries are installed);
- write throughput of each engine (references/s for batches of 1 and 64).

    python benchmarks/scale_out.py --model-dir models/default [--references 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postgres import PostgresServer, free_port, server_binaries  # noqa: E402

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""


class Process:
    def __init__(self, model_dir: Path, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "HSN_MODEL_DIR": str(model_dir),
            "HSN_DATA_DIR": str(data_dir),
            "HSN_PORT": str(self.port),
            "HSN_LOG_LEVEL": "WARNING",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def wrk(url: str, body: dict, seconds: int, connections: int = 64) -> float:
    """Requests/s that wrk measured (2 threads; the server shares the box with it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=json.dumps(body)))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def signals(manifest: dict, n: int, rng) -> np.ndarray:
    length = manifest["trained_length"]
    return rng.normal(size=(n, manifest["in_channels"], length)).astype(np.float32)


def fill(url: str, x: np.ndarray, batch: int = 256) -> None:
    with httpx.Client(timeout=600) as http:
        for start in range(0, len(x), batch):
            refs = [
                {
                    "id": f"r{start + i}",
                    "element_id": f"e{(start + i) % 500}",
                    "session_id": f"s{(start + i) % 2000}",
                    "signal": s.tolist(),
                }
                for i, s in enumerate(x[start : start + batch])
            ]
            response = http.post(f"{url}/references", json={"references": refs})
            response.raise_for_status()


def bench_workers(model_dir: Path, manifest: dict, references: int, seconds: int) -> dict:
    rng = np.random.default_rng(0)
    one = signals(manifest, 1, rng)[0].tolist()
    results: dict = {}
    with tempfile.TemporaryDirectory() as data_dir:
        first = Process(model_dir, Path(data_dir), HSN_WORKERS="1")
        fill(first.url, signals(manifest, references, rng))
        first.stop()
        for workers in (1, 2):
            server = Process(model_dir, Path(data_dir), HSN_WORKERS=str(workers))
            results[workers] = {
                "embed": wrk(f"{server.url}/embed", {"signals": [one]}, seconds),
                "search": wrk(f"{server.url}/search", {"signals": [one], "k": 5}, seconds),
            }
            server.stop()
            print(f"workers {workers}: {results[workers]}", flush=True)
    return {
        "references": references,
        "requests_per_s": results,
        "embed_ratio": results[2]["embed"] / results[1]["embed"],
        "search_ratio": results[2]["search"] / results[1]["search"],
    }


def replication_lag(a: str, b: str, x: np.ndarray) -> dict:
    """From the 201 on ``a`` to the first search on ``b`` that finds the reference."""
    lags = []
    with httpx.Client(timeout=30) as http:
        for i, s in enumerate(x):
            ref = {"id": f"lag-{i}", "element_id": "lag", "session_id": "lag", "signal": s.tolist()}
            http.post(f"{a}/references", json={"references": [ref]}).raise_for_status()
            written = time.perf_counter()
            while True:
                body = {"signals": [s.tolist()], "k": 1, "element_id": "lag"}
                hits = http.post(f"{b}/search", json=body).json()["results"][0]["neighbors"]
                if hits and hits[0]["id"] == ref["id"]:
                    break
            lags.append(time.perf_counter() - written)
    ms = np.array(lags) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def write_throughput(url: str, x: np.ndarray) -> dict:
    out = {}
    with httpx.Client(timeout=600) as http:
        for batch in (1, 64):
            n = min(len(x), 200 if batch == 1 else 2048)
            started = time.perf_counter()
            for start in range(0, n, batch):
                refs = [
                    {"element_id": "w", "session_id": "w", "signal": s.tolist()}
                    for s in x[start : start + batch]
                ]
                http.post(f"{url}/references", json={"references": refs}).raise_for_status()
            out[f"batch_{batch}_refs_per_s"] = n / (time.perf_counter() - started)
    return out


def bench_engines(model_dir: Path, manifest: dict) -> dict:
    rng = np.random.default_rng(1)
    x = signals(manifest, 2048, rng)
    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        a = Process(model_dir, Path(data_dir) / "a", HSN_WORKERS="1")
        results["sqlite"] = write_throughput(a.url, x)
        a.stop()
    binaries = server_binaries()
    if binaries is None:
        print("PostgreSQL skipped: its server binaries are not installed", flush=True)
        return results
    database = PostgresServer(binaries)
    try:
        url = database.new_database()
        with tempfile.TemporaryDirectory() as data_dir:
            a = Process(model_dir, Path(data_dir) / "a", HSN_DATABASE_URL=url)
            b = Process(model_dir, Path(data_dir) / "b", HSN_DATABASE_URL=url)
            results["postgresql"] = write_throughput(a.url, x)
            results["postgresql"]["replication_lag"] = replication_lag(a.url, b.url, x[:200])
            a.stop()
            b.stop()
    finally:
        database.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    results = {
        "workers": bench_workers(args.model_dir, manifest, args.references, args.seconds),
        "engines": bench_engines(args.model_dir, manifest),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(results, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
