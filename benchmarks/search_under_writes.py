"""/search while a client writes references: requests/s and latency with and without writes.

For each reference count N, one server process (default settings, a fresh data directory, N
references written straight into the store as bench.py and scale_out.py do), then wrk on
loopback, one after another:

  a. /embed, one signal (what a search costs at least);
  b. /search, the same signal, k = 5, no writes;
  c. /search again while a writer thread POSTs one new reference at a time to /references at
     --write-rate per second (new ids: the reference count grows), with its own latencies
     (for --write-duration seconds, default --duration);
  d. /search once more without writes, on the grown store (to tell the writes' cost from the
     growth's).

Ratios from one run: c / b in requests/s and in p99 latency. wrk, the writer and the server
share the machine's cores; each phase also records the CPU seconds the server, the load
generator and everything else on the machine took ("other work": about 0 when nothing else ran,
within half a second), so a run disturbed by other work shows it.

    python benchmarks/search_under_writes.py --references 1000 1700 100000 [--duration 15]
    # at 1e5 references, 15 s of 13 writes/s are 0.2% of them: --write-duration 100 passes 1%
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import Service, fill_store  # noqa: E402
from scale_out import WRK_SCRIPT, signals, warm_up  # noqa: E402

# Appended to scale_out's request script: one JSON line with wrk's own latency percentiles
# (microseconds) and error counts, printed once when wrk ends.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d, \\"mean_us\\": %.1f, \\"connect_errors\\": %d, "
    .. "\\"read_errors\\": %d, \\"write_errors\\": %d, \\"status_errors\\": %d, "
    .. "\\"timeouts\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""


def wrk_script(body: dict) -> str:
    """The Lua script: POST ``body`` as JSON on every request, report as JSON at the end."""
    return WRK_SCRIPT.format(body=json.dumps(body)) + WRK_REPORT


def parse_wrk(stdout: str) -> dict:
    """wrk's report line as requests/s, p50/p90/p99/max/mean in ms and the error counts."""
    lines = [line for line in stdout.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"no report from wrk:\n{stdout}")
    raw = json.loads(lines[-1].removeprefix("WRK_JSON "))
    errors = sum(raw[k] for k in raw if k.endswith("_errors") or k == "timeouts")
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        **{f"{q}_ms": raw[f"{q}_us"] / 1000 for q in ("p50", "p90", "p99", "max", "mean")},
        "errors": errors,
        "error_counts": {
            k: raw[k] for k in raw if (k.endswith("_errors") or k == "timeouts") and raw[k]
        },
    }


class CpuAccount:
    """CPU seconds over a phase: the whole machine's busy time, the server's, this process's
    (the writer thread with it) and its finished children's (wrk); what is left, ``others_s``,
    is what other work on the machine took from the measurement."""

    def __init__(self, server_pid: int | None) -> None:
        self.server = psutil.Process(server_pid) if server_pid else None
        self.start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        server = sum(self.server.cpu_times()[:2]) if self.server else 0.0
        own = sum(psutil.Process().cpu_times()[:2])
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return busy, server, own, children.ru_utime + children.ru_stime

    def stop(self, seconds: float) -> dict:
        busy, server, own, children = (
            end - start for end, start in zip(self._now(), self.start, strict=True)
        )
        return {
            "machine_busy_s": busy,
            "server_s": server,
            "load_generator_s": own + children,
            "others_s": busy - server - own - children,
            "machine_cores_busy": busy / seconds,
        }


def wrk(
    url: str, body: dict, seconds: int, connections: int, server_pid: int | None = None
) -> dict:
    """wrk (2 threads, ``connections`` connections, 30 s request timeout so that slow answers
    count as latencies, not as timeouts) for ``seconds``, with the CPU it and the server took."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(body))
    account = CpuAccount(server_pid)
    began = time.perf_counter()
    try:
        command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
        out = subprocess.run(
            [*command, "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    result = parse_wrk(out.stdout)
    result["cpu"] = account.stop(time.perf_counter() - began)
    result["load_average"] = os.getloadavg()
    return result


def latency_summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


class Writer(threading.Thread):
    """POSTs one new reference at a time to /references at ``rate`` per second on a fixed
    schedule (a late write is sent at once, never a burst to catch up: the achieved rate shows
    how far it fell behind)."""

    def __init__(self, url: str, manifest: dict, rate: float, tag: str) -> None:
        super().__init__(daemon=True)
        self.url, self.rate, self.tag = url, rate, tag
        self.pool = signals(manifest, 64, np.random.default_rng(7))
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.started = self.ended = 0.0

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=60) as http:
            self.started = time.perf_counter()
            next_at = self.started
            while not self.stop_event.is_set():
                delay = next_at - time.perf_counter()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                ref = {
                    "id": f"{self.tag}-{n}",
                    "element_id": f"e{n % 1000}",  # elements fill_store wrote
                    "session_id": f"{self.tag}-s{n % 50}",
                    "signal": self.pool[n % len(self.pool)].tolist(),
                }
                began = time.perf_counter()
                try:
                    answer = http.post("/references", json={"references": [ref]})
                    if answer.status_code != 201:
                        self.errors.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__} {exc}")
                self.latencies.append(time.perf_counter() - began)
                n += 1
                next_at = max(next_at + 1 / self.rate, time.perf_counter())
            self.ended = time.perf_counter()

    def stop(self) -> dict:
        self.stop_event.set()
        self.join(timeout=120)
        seconds = self.ended - self.started
        return {
            "target_per_s": self.rate,
            "written": len(self.latencies) - len(self.errors),
            "seconds": seconds,
            "achieved_per_s": len(self.latencies) / seconds if seconds > 0 else 0.0,
            **latency_summary(self.latencies),
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def stored(url: str) -> int:
    return httpx.get(f"{url}/ready", timeout=30).json()["references"]


def measure(model_dir: Path, manifest: dict, n: int, args: argparse.Namespace) -> dict:
    one = signals(manifest, 1, np.random.default_rng(0))[0].tolist()
    bodies = {"/embed": {"signals": [one]}, "/search": {"signals": [one], "k": 5}}
    with tempfile.TemporaryDirectory() as data_dir:
        began = time.perf_counter()
        fill_store(Path(data_dir), n, manifest)
        filled = time.perf_counter() - began
        began = time.perf_counter()
        server = Service(model_dir, HSN_DATA_DIR=data_dir)
        try:
            started = time.perf_counter() - began

            def load(route: str, seconds: int = args.duration) -> dict:
                url, pid = f"{server.url}{route}", server.process.pid
                return wrk(url, bodies[route], seconds, args.connections, pid)

            assert stored(server.url) == n
            warm_up(server.url, 1, one)  # the anomaly calibration fitted once
            if args.warmup > 0:
                load("/embed", args.warmup)
                load("/search", args.warmup)
            result = {
                "references": n,
                "fill_store_s": filled,
                "start_s": started,
                "embed": load("/embed"),
                "search": load("/search"),
            }
            writer = Writer(server.url, manifest, args.write_rate, tag=f"w{n}")
            writer.start()
            try:
                result["search_with_writes"] = load("/search", args.write_duration or args.duration)
            finally:
                result["writer"] = writer.stop()
            result["references_after_writes"] = stored(server.url)
            result["search_after_writes"] = load("/search")
        finally:
            server.close()
    result.update(derived(result))
    return result


PHASES = ("embed", "search", "search_with_writes", "search_after_writes")


def derived(result: dict) -> dict:
    """Ratios (with / without writes) and what a search costs beyond an embed: the difference of
    the server's time per request (1 / requests/s, every core together)."""
    embed, search, writes = result["embed"], result["search"], result["search_with_writes"]
    return {
        "ratio_requests_per_s": writes["requests_per_s"] / search["requests_per_s"],
        "ratio_p99": writes["p99_ms"] / search["p99_ms"],
        "search_beyond_embed_ms": 1000 / search["requests_per_s"] - 1000 / embed["requests_per_s"],
    }


def table(results: list[dict]) -> str:
    rows = [
        "| references | /embed req/s (p50 / p99 ms) | /search req/s (p50 / p99 ms) "
        "| /search with writes req/s (p50 / p99 ms) | writes/s achieved (p50 / p99 ms) "
        "| req/s ratio | p99 ratio | /search after writes req/s "
        "| other work, CPU s (a / b / c / d) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(m: dict) -> str:
        return f"{m['requests_per_s']:,.0f} ({m['p50_ms']:.1f} / {m['p99_ms']:.1f})"

    for r in results:
        w = r["writer"]
        others = " / ".join(f"{r[phase]['cpu']['others_s']:.1f}" for phase in PHASES)
        p50, p99 = (f"{w[k]:.1f}" if w[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
        rows.append(
            f"| {r['references']:,} | {cell(r['embed'])} | {cell(r['search'])} "
            f"| {cell(r['search_with_writes'])} | {w['achieved_per_s']:.1f} of "
            f"{w['target_per_s']:g} ({p50} / {p99}) | {r['ratio_requests_per_s']:.2f} "
            f"| {r['ratio_p99']:.2f} | {r['search_after_writes']['requests_per_s']:,.0f} "
            f"| {others} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--references", type=int, nargs="+", default=[1700])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk phase")
    parser.add_argument(
        "--write-duration",
        type=int,
        help="seconds of phase c (default --duration); at 13/s, writes pass 1%% of 1e5 "
        "references after 77 s",
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk per route first")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--write-rate", type=float, default=13, help="references/s written")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "search_under_writes.json",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average_before": os.getloadavg(),
        "settings": {
            "duration_s": args.duration,
            "write_duration_s": args.write_duration or args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "write_rate_per_s": args.write_rate,
            "wrk_threads": 2,
            "k": 5,
            "model_version": manifest["model_version"],
            "signal_shape": [manifest["in_channels"], manifest["trained_length"]],
        },
        "results": [],
    }
    for n in args.references:
        result = measure(args.model_dir, manifest, n, args)
        run["results"].append(result)
        print(json.dumps(result, indent=2), flush=True)
    run["load_average_after"] = os.getloadavg()
    print(table(run["results"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
