"""A bounded load test on loopback: concurrent clients mixing /embed, /search and reference
writes against a real server process; prints throughput, p50/p99 latency, errors, and the
server's resident memory after warm-up and at the end (a leak shows as growth).

    python benchmarks/loadtest.py --duration 60 --clients 16      # make loadtest

Starts its own server on a free port with a fresh data directory unless --url is given. Exits
non-zero on any error or on memory growth over --max-growth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
MIX = (("embed", 0.6), ("search", 0.3), ("write", 0.1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HSN_MODEL_DIR": str(model_dir),
        "HSN_DATA_DIR": str(data_dir),
        "HSN_PORT": str(port),
        "HSN_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not become ready")


async def client(
    http: httpx.AsyncClient,
    length: int,
    channels: int,
    until: float,
    latencies: dict,
    errors: list,
    rng: random.Random,
) -> None:
    n = 0
    while time.monotonic() < until:
        kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        signal = np.sin(np.linspace(0, rng.uniform(2, 12), length)) + rng.gauss(0, 0.1)
        body = signal if channels == 1 else np.stack([signal] * channels)
        started = time.perf_counter()
        try:
            if kind == "embed":
                response = await http.post("/embed", json={"signals": [body.tolist()]})
            elif kind == "search":
                response = await http.post("/search", json={"signals": [body.tolist()], "k": 5})
            else:
                n += 1
                ref = {
                    "id": f"load-{id(rng)}-{n % 50}",
                    "element_id": f"e{n % 7}",
                    "session_id": f"e{n % 7}/s{n % 3}",
                    "signal": body.tolist(),
                }
                response = await http.post("/references", json={"references": [ref]})
            if response.status_code >= 400:
                errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(f"{kind}: {type(exc).__name__} {exc}")
            continue
        latencies[kind].append(time.perf_counter() - started)


async def phase(url: str, clients: int, seconds: float, length: int, channels: int):
    latencies = {k: [] for k, _ in MIX}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(
                client(http, length, channels, until, latencies, errors, random.Random(i))
                for i in range(clients)
            )
        )
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an already running server (else one is started)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--duration", type=float, default=60, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--max-growth",
        type=float,
        default=0.10,
        help="largest allowed resident-memory growth after warm-up",
    )
    args = parser.parse_args()

    process = None
    with tempfile.TemporaryDirectory() as data_dir:
        if args.url:
            url, pid = args.url, None
        else:
            process, url = start_server(args.model_dir, Path(data_dir))
            pid = process.pid
        try:
            manifest = httpx.get(f"{url}/model").json()
            length, channels = manifest["trained_length"], manifest["in_channels"]
            asyncio.run(phase(url, args.clients, args.warmup, length, channels))
            rss_warm = psutil.Process(pid).memory_info().rss if pid else None
            latencies, errors = asyncio.run(
                phase(url, args.clients, args.duration, length, channels)
            )
            rss_end = psutil.Process(pid).memory_info().rss if pid else None
        finally:
            if process:
                process.terminate()
                process.wait(timeout=30)

    total = sum(len(v) for v in latencies.values())
    print(
        f"{args.clients} clients, {args.duration:.0f} s after {args.warmup:.0f} s warm-up, "
        f"signals of {length} samples"
    )
    print(f"{'route':8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, values in latencies.items():
        if values:
            p50, p99 = np.percentile(values, [50, 99]) * 1000
            print(
                f"{kind:8} {len(values):9d} {len(values) / args.duration:8.1f} "
                f"{p50:8.1f} {p99:8.1f}"
            )
    print(f"{'all':8} {total:9d} {total / args.duration:8.1f}")
    print(f"errors: {len(errors)}")
    for error in errors[:5]:
        print(f"  {error}")
    failed = bool(errors)
    if rss_warm and rss_end:
        growth = rss_end / rss_warm - 1
        print(
            f"resident memory: {rss_warm / 2**20:.0f} MiB after warm-up, "
            f"{rss_end / 2**20:.0f} MiB at the end ({growth:+.1%})"
        )
        failed |= growth > args.max_growth
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
