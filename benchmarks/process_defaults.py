"""Which process and inference-thread counts to default to: one run, every configuration
interleaved, on references that no longer cost a copy per worker.

Configurations (``HSN_WORKERS`` x ``HSN_INFERENCE_WORKERS``): 1 x 1 (the default before this
measurement), 2 x 1, 1 x 2. Loads, each --seconds of wrk (2 threads) per round, --rounds rounds
with the configurations rotated so that each ratio compares phases run next to each other:

- ``batch64``: POST /embed with one .npy body of 64 signals, 4 connections (a client sending
  batches: signals/s = requests/s x 64);
- ``single32``: POST /embed with one signal (JSON), 32 connections (many small clients);
- ``search32``: POST /search with one signal, k = 5, 32 connections, against --references
  references written straight into the store.

Every server is a ``python -m app`` of this tree on loopback; its memory (PSS summed over its
processes) is taken after the load. Results: --out (benchmarks/results/process_defaults.json).

    python benchmarks/process_defaults.py --references 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import fill_store  # noqa: E402
from many_collections import Server, memory, rotated  # noqa: E402
from search_under_writes import WRK_REPORT, parse_wrk  # noqa: E402

CONFIGURATIONS = {"1x1": ("1", "1"), "2x1": ("2", "1"), "1x2": ("1", "2")}


def lua_file_body(path: Path, content_type: str) -> str:
    return (
        f'local f = io.open("{path}", "rb")\n'
        "wrk.body = f:read('*all')\n"
        "f:close()\n"
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n' + WRK_REPORT
    )


def run_wrk(url: str, body: bytes, content_type: str, seconds: int, connections: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body"
        path.write_bytes(body)
        script = Path(tmp) / "script.lua"
        script.write_text(lua_file_body(path, content_type))
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
            + ["-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    result = parse_wrk(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"wrk saw errors on {url}:\n{out.stdout}")
    return result


def warm(server: Server, processes: int, search: bytes) -> None:
    """Until every process has answered a search (its calibrations fitted)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while len(seen) < processes and time.monotonic() < deadline:
        with httpx.Client(timeout=600) as http:  # a new connection: any process may take it
            answer = http.post(
                f"{server.url}/search", content=search, headers={"content-type": "application/json"}
            )
        answer.raise_for_status()
        seen.add(answer.headers["x-served-by"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/process_defaults.json"
    )
    args = parser.parse_args()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    shape = (manifest["in_channels"], manifest["trained_length"])
    batch = rng.normal(size=(64, *shape)).astype(np.float32)
    npy = io.BytesIO()
    np.save(npy, batch)
    one = batch[0].tolist()
    loads = {
        "batch64": ("/embed", npy.getvalue(), "application/x-npy", 4, 64),
        "single32": ("/embed", json.dumps({"signals": [one]}).encode(), "application/json", 32, 1),
        "search32": (
            "/search",
            json.dumps({"signals": [one], "k": 5}).encode(),
            "application/json",
            32,
            1,
        ),
    }
    run: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "phases": [],
    }
    with tempfile.TemporaryDirectory(prefix="hsn-defaults-") as tmp:
        data = Path(tmp)
        fill_store(data, args.references, manifest)
        servers = {}
        for name, (workers, threads) in CONFIGURATIONS.items():
            env = {"HSN_WORKERS": workers, "HSN_INFERENCE_WORKERS": threads}
            servers[name] = (Server(ROOT, args.model_dir, data, env=env), int(workers))
            warm(servers[name][0], int(workers), loads["search32"][1])
        try:
            for round_ in range(args.rounds):
                for load, (path, body, kind, connections, signals) in loads.items():
                    for name in rotated(list(CONFIGURATIONS), round_):
                        server = servers[name][0]
                        result = run_wrk(
                            f"{server.url}{path}", body, kind, args.seconds, connections
                        )
                        phase = {
                            "round": round_,
                            "load": load,
                            "configuration": name,
                            "requests_per_s": result["requests_per_s"],
                            "signals_per_s": result["requests_per_s"] * signals,
                            "p50_ms": result["p50_ms"],
                            "p99_ms": result["p99_ms"],
                        }
                        run["phases"].append(phase)
                        print(json.dumps(phase), flush=True)
            run["memory_mib"] = {name: memory(s.pid) for name, (s, _) in servers.items()}
        finally:
            for server, _ in servers.values():
                server.stop()
    summary = {}
    for load in loads:
        base = [p for p in run["phases"] if p["load"] == load and p["configuration"] == "1x1"]
        for name in CONFIGURATIONS:
            ratios = [
                p["signals_per_s"] / b["signals_per_s"]
                for p in run["phases"]
                if p["load"] == load and p["configuration"] == name
                for b in base
                if b["round"] == p["round"]
            ]
            mine = [
                p["signals_per_s"]
                for p in run["phases"]
                if p["load"] == load and p["configuration"] == name
            ]
            summary[f"{load} {name}"] = {
                "signals_per_s_median": float(np.median(mine)),
                "ratio_to_1x1_median": float(np.median(ratios)),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
    run["summary"] = summary
    print(json.dumps(summary, indent=1))
    args.out.write_text(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
