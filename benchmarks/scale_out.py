"""Scale-out figures (BENCHMARKS.md "Scaling out"): worker processes, replication lag, writes.

- /embed (one signal) and /search under wrk with 64 connections, HSN_WORKERS=1 against 2
  (ratios from one run: the machine is noisy);
- replication lag: time from a 201 on one process to the reference being found by another,
  for two worker processes on SQLite and two replicas on one PostgreSQL (when its server
  binaries are installed);
- write throughput of each engine (references/s for batches of 1 and 64).

    python benchmarks/scale_out.py --model-dir models/default [--references 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import Service, fill_store  # noqa: E402  (as bench.py runs and fills the service)

from tests.postgres import PostgresServer, server_binaries  # noqa: E402

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""


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


def warm_up(url: str, processes: int, signal_: list) -> None:
    """Until every process answers (a process still building its index would share the cores
    with the measurement), each having searched once (its anomaly calibration made)."""
    ready: set[str] = set()
    deadline = time.monotonic() + 600
    while len(ready) < processes:
        assert time.monotonic() < deadline, "the worker processes did not all start"
        with httpx.Client(timeout=600) as fresh:  # a new connection: any process may take it
            answer = fresh.post(f"{url}/search", json={"signals": [signal_], "k": 5})
        answer.raise_for_status()
        ready.add(answer.headers["x-served-by"])


def bench_workers(model_dir: Path, manifest: dict, references: int, seconds: int) -> dict:
    rng = np.random.default_rng(0)
    one = signals(manifest, 1, rng)[0].tolist()
    results: dict = {}
    with tempfile.TemporaryDirectory() as data_dir:
        fill_store(Path(data_dir), references, manifest)
        for workers in (1, 2):
            server = Service(model_dir, HSN_DATA_DIR=data_dir, HSN_WORKERS=str(workers))
            warm_up(server.url, workers, one)
            results[workers] = {
                "embed": wrk(f"{server.url}/embed", {"signals": [one]}, seconds),
                "search": wrk(f"{server.url}/search", {"signals": [one], "k": 5}, seconds),
            }
            server.close()
            print(f"workers {workers}: {results[workers]}", flush=True)
    return {
        "references": references,
        "requests_per_s": results,
        "embed_ratio": results[2]["embed"] / results[1]["embed"],
        "search_ratio": results[2]["search"] / results[1]["search"],
    }


def replication_lag(a: str, b: str, x: np.ndarray) -> dict:
    """From the 201 on ``a`` to the first search on ``b`` answered by another process that
    finds the reference (``a`` = ``b``: worker processes on one port, a new connection each
    search so that the kernel spreads them)."""
    lags = []
    with httpx.Client(timeout=30) as http:
        for i, s in enumerate(x):
            ref = {"id": f"lag-{i}", "element_id": "lag", "session_id": "lag", "signal": s.tolist()}
            response = http.post(f"{a}/references", json={"references": [ref]})
            response.raise_for_status()
            writer, written = response.headers["x-served-by"], time.perf_counter()
            while True:
                body = {"signals": [s.tolist()], "k": 1, "element_id": "lag"}
                with httpx.Client(timeout=30) as fresh:
                    answer = fresh.post(f"{b}/search", json=body)
                if answer.headers["x-served-by"] == writer:
                    continue
                hits = answer.json()["results"][0]["neighbors"]
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
    a = Service(model_dir)
    results["sqlite"] = write_throughput(a.url, x)
    a.close()
    workers = Service(model_dir, HSN_WORKERS="2")
    results["sqlite"]["replication_lag_workers"] = replication_lag(
        workers.url, workers.url, x[:200]
    )
    workers.close()
    binaries = server_binaries()
    if binaries is None:
        print("PostgreSQL skipped: its server binaries are not installed", flush=True)
        return results
    database = PostgresServer(binaries)
    try:
        url = database.new_database()
        a = Service(model_dir, HSN_DATABASE_URL=url)
        b = Service(model_dir, HSN_DATABASE_URL=url)
        results["postgresql"] = write_throughput(a.url, x)
        results["postgresql"]["replication_lag"] = replication_lag(a.url, b.url, x[:200])
        a.close()
        b.close()
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
