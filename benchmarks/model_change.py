"""Changing a collection's model while serving, and backups: what they cost and whether they hold.

Every server is a real ``python -m app`` on loopback (SQLite in its own data directory; the
inherited HSN_* variables are dropped; log level WARNING), serving the code of --current-commit
(default HEAD) checked out into a temporary git worktree that is removed at the end, so edits in
the working tree do not leak into a run. The model repository (HSN_MODEL_REPOSITORY) is a
temporary folder of two links: ``v1`` -> --model-dir (models/default, also HSN_MODEL_DIR: the
collection ``default`` starts on it) and ``v2`` -> a second model of the same input contract
(same channels, lengths and embedding size), trained here in a few seconds with the same
architecture and another seed (``python -m training train --epochs 3 --seed 1`` on the demo
model's own training data), or --new-model.

The references of parts 1-3 are synthetic signals of the model's input length (the training
generator: elements of 5 sessions of 10 signals), embedded by v1 with the service's own runtime
(app.runtime.ModelRuntime, ONNX, batch-independent) and written straight into the store with
the service's store code (each write in the change log), never through HTTP: --references of
them, plus --extra signals kept aside for the writes during the job and the query.

1. ``load``: HSN_WORKERS=2. wrk (--connections threads of one connection each; a Lua script
   logs every request's start, latency, status, X-Served-By and the answer's model_version)
   searches (one signal, k = 5) throughout, and one client writes one new reference every
   --write-interval-ms (a new connection each time). --warmup s, then --steady s of steady
   state, then ``PUT /collections/default/model {"model": "v2"}``; the load goes on through
   the job and the switch and for --after s once every process answers v2. Reported: non-2xx
   and unanswered requests; the versions answered over time, per process and per connection
   (a switch once, never back); search p50/p99/max in steady state and during the job
   (requests sent and answered inside), in the window around the switch (requests in flight
   from --switch-window s before the switch's commit, seen as the job's row leaving the
   ``upgrades`` table, to --switch-window s after the last process's first v2 answer; and the
   longest time a process completed no request in it) and after; the first search of each
   process after its start (its first calibration fits waited for); the re-embedding
   throughput (GET /collections/default every --poll-s: references embedded per second
   between the first and last progress seen, and references / (PUT -> first v2 answer));
   then, without load, every reference (or --check-sample of them) plus every one written
   during the job searched by its own signal (k = 1): its own id must come first, answered by
   v2; and SQLite: one v2 embedding per reference.
2. ``workers``: the same job without load, HSN_WORKERS=1 then 2, each on a fresh copy of the
   same references: job time and references/s.
3. ``kill``: HSN_WORKERS=2 with light load (wrk, --kill-connections connections, and the
   writer); at --kill-at of the job the process holding the job's lease (read from the
   ``upgrades`` table) is SIGKILLed. Reported: non-2xx and unanswered requests, whether uvicorn
   started another worker, when the job went on (after HSN_UPGRADE_LEASE_S, 15 s), whether it
   finished, and ``SELECT COUNT(*), COUNT(DISTINCT key) FROM embeddings WHERE model_version =
   v2`` against the references; the own-signal search of a sample and of the writes.
4. ``backup``: for each of --backup-sizes, references written straight into a fresh SQLite
   store (random signals of the model's length, random unit vectors as v1's embeddings; no
   model time), then, the service stopped: ``python -m app backup`` (time, archive size);
   sqlite3's online backup API (Python's ``Connection.backup``, what the shell's ``.backup``
   runs) to a file and back into a new file; ``python -m app restore`` into an empty SQLite
   and into an empty PostgreSQL database; ``python -m app backup`` from PostgreSQL;
   ``pg_dump -Fc`` of that database and ``pg_restore`` into an empty one (when PostgreSQL's
   server binaries are installed: a throwaway server as tests/postgres.py starts one, but
   with PostgreSQL's default durability, fsync on). Every restore is checked by its count.

Each phase of parts 1-3 records the CPU seconds the servers, wrk, this process and everything
else on the machine took (``others_s``: about 0 when nothing else ran). Every number goes to --out
(benchmarks/results/model_change.json).

    python benchmarks/model_change.py                        # everything, about 15 minutes
    python benchmarks/model_change.py --only load workers kill --references 100000
    python benchmarks/model_change.py --only backup --backup-sizes 100000 1000000 \\
        --out benchmarks/results/model_change_backup.json

Needs wrk (Debian: apt-get install wrk) built with LuaJIT (its ffi gives the clock), git, and
for PostgreSQL figures the server binaries (apt-get install postgresql).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import free_port  # noqa: E402
from many_collections import checkout  # noqa: E402
from search_under_writes import WRK_REPORT, parse_wrk  # noqa: E402

DB_FILE = "references.sqlite3"
PER_ELEMENT = 50  # the generator's elements: 5 sessions of 10 signals
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"

# -- data, written by the served tree's own code ---------------------------------------------
# ``python -c FILL_REAL SPEC`` in the served tree: synthetic signals, the first n embedded by
# the model (the service's runtime) and written into the store as r<i>; all saved to a file.
FILL_REAL = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from app.database import SqliteDatabase
from app.runtime import ModelRuntime
from app.store import NewReference, ReferenceStore
from training.synthetic import SynthConfig, generate

spec = json.loads(sys.argv[1])
n, extra = spec["n"], spec["extra"]
times = {}
began = time.perf_counter()
elements = -(-(n + extra) // spec["per_element"])
data = generate(SynthConfig(elements=elements, sessions=5, min_sessions=5, signals=10,
                            length=spec["length"], channels=spec["channels"], seed=spec["seed"]))
order = np.random.default_rng(spec["seed"]).permutation(len(data.signals))[: n + extra]
signals = np.ascontiguousarray(data.signals[order], dtype=np.float32)
element_ids = np.asarray(data.element_ids)[order].astype(str)
session_ids = np.asarray(data.session_ids)[order].astype(str)
np.savez(spec["signals_out"], signals=signals, element_ids=element_ids, session_ids=session_ids)
times["generate_s"] = time.perf_counter() - began

began = time.perf_counter()
runtime = ModelRuntime(Path(spec["model_dir"]), 256, 1, "onnx")
assert runtime.engine == "onnx", runtime.engine
embeddings = np.concatenate(
    [runtime.run(signals[i : i + 256]).embeddings for i in range(0, n, 256)]
)
times["embed_s"] = time.perf_counter() - began

began = time.perf_counter()
store = ReferenceStore(SqliteDatabase(Path(spec["data_dir"]) / "references.sqlite3"))
store.migrate()
for start in range(0, n, 10_000):
    stop = min(start + 10_000, n)
    store.upsert(
        [NewReference(f"r{i}", str(element_ids[i]), str(session_ids[i]), {}, signals[i],
                      embeddings[i]) for i in range(start, stop)],
        runtime.version,
    )
store.close()
times["write_s"] = time.perf_counter() - began
print(json.dumps(times))
"""

# ``python -c FILL_RANDOM SPEC``: n references of random signals and random unit vectors
FILL_RANDOM = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from app.database import SqliteDatabase
from app.store import NewReference, ReferenceStore

spec = json.loads(sys.argv[1])
rng = np.random.default_rng(spec["seed"])
store = ReferenceStore(SqliteDatabase(Path(spec["data_dir"]) / "references.sqlite3"))
store.migrate()
for start in range(0, spec["n"], 10_000):
    count = min(10_000, spec["n"] - start)
    signals = rng.normal(size=(count, spec["channels"], spec["length"])).astype(np.float32)
    vectors = rng.normal(size=(count, spec["dim"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(
        [NewReference(f"r{start + i}", f"e{(start + i) // 50}", f"s{(start + i) // 10}", {},
                      signals[i], vectors[i]) for i in range(count)],
        spec["model_version"],
    )
store.close()
"""

# -- wrk: every request logged -----------------------------------------------------------------
# One connection per wrk thread, so a thread's request() and response() strictly alternate and
# each response is paired with its request's start. Each thread writes its own file
# (<prefix>-<n>.tsv): "q <start us>" when a request is sent, "r <start us> <latency us>
# <status> <X-Served-By> <model_version>" when it is answered (a "q" without its "r": never
# answered, e.g. its server process died). Wall-clock microseconds, as time.time() in Python.
WRK_LOGGER = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct hsn_timeval { long tv_sec; long tv_usec; } hsn_timeval;
int gettimeofday(hsn_timeval *tv, void *tz);
]]
local tv = ffi.new("hsn_timeval")
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end
local path = [==[PATH]==]
local body = [==[BODY]==]
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
local out, req, started
function init(args)
  out = io.open(args[1] .. "-" .. id .. ".tsv", "w")
  out:setvbuf("line")
  req = wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
function request()
  started = now_us()
  out:write(string.format("q\t%.0f\n", started))
  return req
end
function response(status, headers, body)
  local t = now_us()
  local version = string.match(body, '"model_version":"([^"]*)"') or "-"
  out:write(string.format("r\t%.0f\t%.0f\t%d\t%s\t%s\n", started, t - started, status,
                          headers["x-served-by"] or headers["X-Served-By"] or "-", version))
end
"""


class LoggedWrk:
    """wrk running until stopped (SIGINT: it ends cleanly and reports), every request logged."""

    def __init__(self, url: str, path: str, body: dict, connections: int, scratch: Path) -> None:
        self.prefix = str(scratch / f"wrk-{time.monotonic_ns()}")
        script = Path(self.prefix + ".lua")
        script.write_text(
            WRK_LOGGER.replace("PATH", path).replace("BODY", json.dumps(body)) + WRK_REPORT
        )
        self.process = subprocess.Popen(
            ["wrk", f"-t{connections}", f"-c{connections}", "-d3600s", "--timeout", "30s"]
            + ["-s", str(script), url, "--", self.prefix],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.connections = connections
        self.began = time.time()

    def cpu_s(self) -> float:
        try:
            return sum(psutil.Process(self.process.pid).cpu_times()[:2])
        except psutil.NoSuchProcess:
            return self._final_cpu

    def stop(self) -> dict:
        """Stops wrk; its summary and every logged request. Unanswered: a request sent and
        never answered (its "q" followed by another "q" on the same connection: wrk
        reconnected), apart from the one each connection had in flight when wrk was stopped,
        and from the call wrk makes to request() once before it starts (to check the script)."""
        self._final_cpu = self.cpu_s()
        stopped = time.time()
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=120)
        summary = parse_wrk(out)
        answered, unanswered, in_flight = [], [], 0
        for n in range(1, self.connections + 1):
            lines = [
                line.split("\t") for line in Path(f"{self.prefix}-{n}.tsv").read_text().splitlines()
            ]
            if n == 1 and len(lines) > 1 and lines[0][0] == lines[1][0] == "q":
                lines = lines[1:]  # wrk's check of the script, never sent
            for k, fields in enumerate(lines):
                if fields[0] == "r" and len(fields) == 6:
                    answered.append(
                        (
                            int(fields[1]) / 1e6,
                            int(fields[2]) / 1e6,
                            int(fields[3]),
                            fields[4],
                            fields[5],
                            n,
                        )
                    )
                elif fields[0] == "q":
                    following = lines[k + 1][0] if k + 1 < len(lines) else None
                    if following == "q":
                        unanswered.append((int(fields[1]) / 1e6, n))
                    elif following is None:
                        if stopped - int(fields[1]) / 1e6 < 30:  # wrk's request timeout
                            in_flight += 1
                        else:
                            unanswered.append((int(fields[1]) / 1e6, n))
        answered.sort()
        return {
            "summary": summary,
            "stopped": stopped,
            "answered": answered,
            "unanswered": sorted(unanswered),
            "in_flight_when_stopped": in_flight,
        }


# -- servers ---------------------------------------------------------------------------------
class Server:
    """``python -m app`` of ``code_root`` with HSN_WORKERS=``workers``, waited for until every
    worker process answers."""

    def __init__(
        self,
        code_root: Path,
        data_dir: Path,
        model_dir: Path,
        repository: Path,
        workers: int,
        log: Path,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.workers = workers
        environment = {k: v for k, v in os.environ.items() if not k.startswith("HSN_")}
        environment.update(
            HSN_MODEL_DIR=str(model_dir),
            HSN_MODEL_REPOSITORY=str(repository),
            HSN_DATA_DIR=str(data_dir),
            HSN_PORT=str(port),
            HSN_WORKERS=str(workers),
            HSN_LOG_LEVEL="WARNING",
        )
        self.log = log
        output = open(log, "w")
        self.began = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=code_root,
            env=environment,
            stdout=output,
            stderr=output,
        )
        output.close()
        self.start_s = self._wait_ready()

    def _wait_ready(self, limit_s: float = 900) -> float:
        seen: set[str] = set()
        while time.perf_counter() - self.began < limit_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                answer = httpx.get(f"{self.url}/ready", timeout=5)  # a new connection each time
                if answer.status_code == 200:
                    seen.add(answer.headers["x-served-by"])
                    if len(seen) >= self.workers:
                        return time.perf_counter() - self.began
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the server was not ready in time")

    def pids(self) -> list[int]:
        """The worker processes (or the one process) that serve."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        workers = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                command = " ".join(child.cmdline())
                if "python" in child.name().lower() and "resource_tracker" not in command:
                    workers.append(child.pid)
        return workers if self.workers > 1 else [self.process.pid]

    def cpu_s(self) -> float:
        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(p.cpu_times()[:2])
        return total

    def stop(self) -> None:
        """A graceful stop; each remaining process of its own killed by id if it hangs."""
        if self.process.poll() is not None:
            return
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.process.terminate()
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    def warnings(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()][-50:]


class CpuClock:
    """CPU seconds since the last mark: the machine's busy time, the servers', wrk's, this
    process's; ``others_s`` is what is left (other work on the machine)."""

    def __init__(self, server: Server, load: LoggedWrk | None = None) -> None:
        self.server, self.load = server, load
        self.last = self._now()

    def _now(self) -> dict:
        machine = psutil.cpu_times()
        return {
            "machine_busy_s": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "server_s": self.server.cpu_s(),
            "wrk_s": self.load.cpu_s() if self.load else 0.0,
            "this_process_s": sum(psutil.Process().cpu_times()[:2]),
        }

    def mark(self) -> dict:
        now = self._now()
        spent = {k: now[k] - self.last[k] for k in now}
        spent["others_s"] = spent["machine_busy_s"] - sum(
            v for k, v in spent.items() if k != "machine_busy_s"
        )
        self.last = now
        return spent


# -- clients ---------------------------------------------------------------------------------
class Writer(threading.Thread):
    """One new reference every ``interval_s`` (a new connection each: any process takes it)."""

    def __init__(
        self, url: str, pool: dict, first: int, stop: int, interval_s: float, prefix: str
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.pool, self.next, self.interval_s = url, pool, first, interval_s
        self.last = stop  # signals [first, stop) of the pool
        self.prefix = prefix
        self.records: list[dict] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with fresh_connections() as client:
            self._run(client)

    def _run(self, client: httpx.Client) -> None:
        due = time.monotonic()
        while not self.halt.is_set() and self.next < self.last:
            i = self.next
            self.next += 1
            ref = {
                "id": f"{self.prefix}{i}",
                "element_id": str(self.pool["element_ids"][i]),
                "session_id": str(self.pool["session_ids"][i]),
                "signal": self.pool["signals"][i].tolist(),
            }
            began = time.time()
            try:
                answer = client.post(f"{self.url}/references", json={"references": [ref]})
                status, served = answer.status_code, answer.headers.get("x-served-by")
            except httpx.HTTPError as exc:
                status, served = f"error: {type(exc).__name__}", None
            self.records.append(
                {
                    "index": i,
                    "id": ref["id"],
                    "start": began,
                    "seconds": time.time() - began,
                    "status": status,
                    "served_by": served,
                }
            )
            due += self.interval_s
            self.halt.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> list[dict]:
        self.halt.set()
        self.join(timeout=120)
        return self.records


def fresh_connections(timeout: float = 60) -> httpx.Client:
    """A client that opens a new connection for every request (none kept alive), so each
    request may reach any worker process; one per thread."""
    return httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


def read_only(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, timeout=30)


def lease_row(data_dir: Path) -> tuple | None:
    """The ``upgrades`` row of the collection default: (holder, lease_until) or None."""
    with contextlib.closing(read_only(data_dir)) as db:
        return db.execute(
            "SELECT holder, lease_until FROM upgrades WHERE collection = 0"
        ).fetchone()


class Poller(threading.Thread):
    """GET /collections/default every ``interval_s`` (a new connection each), and the job's
    lease holder from the database."""

    def __init__(self, url: str, data_dir: Path, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.data_dir, self.interval_s = url, data_dir, interval_s
        self.records: list[dict] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with fresh_connections() as client:
            self._run(client)

    def _run(self, client: httpx.Client) -> None:
        while not self.halt.is_set():
            began = time.time()
            record: dict = {"t": began}
            try:
                answer = client.get(f"{self.url}/collections/default")
                record |= {"status": answer.status_code, "seconds": time.time() - began}
                record["served_by"] = answer.headers.get("x-served-by")
                if answer.status_code == 200:
                    shown = answer.json()
                    record["model_version"] = shown["model_version"]
                    record["references"] = shown["references"]
                    if shown["upgrade"]:
                        record["embedded"] = shown["upgrade"]["embedded"]
                        record["total"] = shown["upgrade"]["total"]
                        record["eta_s"] = shown["upgrade"]["eta_s"]
            except httpx.HTTPError as exc:
                record["status"] = f"error: {type(exc).__name__}"
            try:
                lease = lease_row(self.data_dir)
                record["upgrade_row"] = lease is not None
                record["holder"] = lease[0] if lease else None
            except sqlite3.Error as exc:
                record["holder_error"] = str(exc)
            self.records.append(record)
            self.halt.wait(max(0.0, self.interval_s - (time.time() - began)))

    def latest(self) -> dict:
        return self.records[-1] if self.records else {}

    def stop(self) -> list[dict]:
        self.halt.set()
        self.join(timeout=120)
        return self.records


def wait_switched(server: Server, poller: Poller, target: str, limit_s: float) -> float:
    """Until every worker process answers GET /collections/default with ``target`` and no
    change under way (new connections until each process was seen); the time it was seen."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        last = poller.latest()
        if last.get("model_version") == target and "embedded" not in last:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"the model change did not finish in {limit_s:g}s")
    seen: set[str] = set()
    while len(seen) < server.workers and time.monotonic() < deadline:
        answer = httpx.get(f"{server.url}/collections/default", timeout=60)
        shown = answer.json()
        if shown["model_version"] == target and shown["upgrade"] is None:
            seen.add(answer.headers["x-served-by"])
        else:
            time.sleep(0.1)
    return time.time()


def first_searches(url: str, body: dict, processes: int) -> dict:
    """The first search each worker process answers after its start (new connections until
    every process answered once): its latency, which includes fitting the first calibrations
    (a first fit is waited for)."""
    first: dict[str, float] = {}
    with fresh_connections(300) as client:
        deadline = time.monotonic() + 300
        while len(first) < processes and time.monotonic() < deadline:
            began = time.perf_counter()
            answer = client.post(f"{url}/search", json=body)
            answer.raise_for_status()
            first.setdefault(answer.headers["x-served-by"], (time.perf_counter() - began) * 1000)
    return {"first_search_ms": first}


def own_signal_check(url: str, pool: dict, items: list[tuple[str, int]], target: str) -> dict:
    """Each (id, signal index) searched by its own signal, k = 1, 128 signals a request, two
    clients, a new connection per request: its id must come first, from ``target``."""
    batches = [items[i : i + 128] for i in range(0, len(items), 128)]
    began = time.perf_counter()

    def one(batch: list[tuple[str, int]]) -> dict:
        body = {"signals": [pool["signals"][i].tolist() for _, i in batch], "k": 1}
        answer = httpx.post(f"{url}/search", json=body, timeout=300)
        answer.raise_for_status()
        shown = answer.json()
        misses = []
        for (ref_id, _), result in zip(batch, shown["results"], strict=True):
            first = result["neighbors"][0] if result["neighbors"] else None
            if first is None or first["id"] != ref_id:
                misses.append({"id": ref_id, "found": first})
        return {
            "version": shown["model_version"],
            "served_by": answer.headers["x-served-by"],
            "n": len(batch),
            "misses": misses,
        }

    with ThreadPoolExecutor(2) as pool_:
        answers = list(pool_.map(one, batches))
    misses = [m for a in answers for m in a["misses"]]
    by_process: dict[str, int] = {}
    for a in answers:
        by_process[a["served_by"]] = by_process.get(a["served_by"], 0) + a["n"]
    return {
        "checked": len(items),
        "found_first": len(items) - len(misses),
        "misses": len(misses),
        "miss_examples": misses[:10],
        "answers_not_of_target": sum(a["n"] for a in answers if a["version"] != target),
        "checked_by_process": by_process,
        "seconds": time.perf_counter() - began,
    }


def embedding_counts(data_dir: Path, version: str) -> dict:
    with contextlib.closing(read_only(data_dir)) as db:
        rows, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT key) FROM embeddings WHERE model_version = ?",
            (version,),
        ).fetchone()
        refs = db.execute("SELECT COUNT(*) FROM refs WHERE collection = 0").fetchone()[0]
        lacking = db.execute(
            "SELECT COUNT(*) FROM refs r WHERE NOT EXISTS (SELECT 1 FROM embeddings e"
            " WHERE e.key = r.key AND e.model_version = ?)",
            (version,),
        ).fetchone()[0]
        orphans = db.execute(
            "SELECT COUNT(*) FROM embeddings e WHERE e.model_version = ? AND NOT EXISTS"
            " (SELECT 1 FROM refs r WHERE r.key = e.key)",
            (version,),
        ).fetchone()[0]
        upgrades = db.execute("SELECT COUNT(*) FROM upgrades").fetchone()[0]
        model = db.execute("SELECT model FROM collections WHERE id = 0").fetchone()[0]
    return {
        "embeddings_of_target": rows,
        "distinct_keys": distinct,
        "references": refs,
        "references_without_target_embedding": lacking,
        "target_embeddings_without_reference": orphans,
        "upgrades_rows_left": upgrades,
        "collection_model": model,
    }


# -- analysis --------------------------------------------------------------------------------
def latency_stats(rows: list[tuple]) -> dict:
    if not rows:
        return {"requests": 0}
    seconds = np.array([r[1] for r in rows]) * 1000
    span = max(r[0] + r[1] for r in rows) - min(r[0] for r in rows)
    return {
        "requests": len(rows),
        "requests_per_s": len(rows) / span if span > 0 else None,
        "p50_ms": float(np.percentile(seconds, 50)),
        "p99_ms": float(np.percentile(seconds, 99)),
        "max_ms": float(seconds.max()),
        "non_2xx": sum(1 for r in rows if not 200 <= r[2] < 300),
    }


def overlapping(rows: list[tuple], a: float, b: float) -> list[tuple]:
    """Requests in flight at some moment of [a, b)."""
    return [r for r in rows if r[0] < b and r[0] + r[1] > a]


def within(rows: list[tuple], a: float, b: float) -> list[tuple]:
    """Requests sent and answered inside [a, b]."""
    return [r for r in rows if r[0] >= a and r[0] + r[1] <= b]


def longest_silence(rows: list[tuple], a: float, b: float) -> dict:
    """Per process, the longest time inside [a, b] in which it completed no request: what a
    client of that process saw as a pause."""
    result = {}
    for served in sorted({r[3] for r in rows}):
        done = sorted(r[0] + r[1] for r in rows if r[3] == served and a <= r[0] + r[1] <= b)
        marks = [a, *done, b]
        gaps = [(y - x, x) for x, y in zip(marks, marks[1:], strict=False)]
        gap, at = max(gaps) if gaps else (0.0, a)
        result[served] = {"seconds": gap, "from": at}
    return result


def slow_requests(rows: list[tuple], t0: float, over_s: float = 0.25) -> list[dict]:
    return [
        {
            "start_s": round(r[0] - t0, 3),
            "ms": round(r[1] * 1000, 1),
            "status": r[2],
            "served_by": r[3],
            "version": r[4],
        }
        for r in rows
        if r[1] > over_s
    ]


def switches(versions: list[str]) -> int:
    return sum(1 for a, b in zip(versions, versions[1:], strict=False) if a != b)


def version_sequences(answered: list[tuple], old: str, new: str) -> dict:
    """Per connection (one per wrk thread, kept alive: one process each) and per process: the
    versions answered in time order, as runs; a switch back from ``new`` to ``old`` is a
    flip-back. Per process also: answers of ``old`` to requests sent after that process had
    already answered ``new`` (a request in flight at the swap may still finish on the old)."""
    runs_by_connection: dict[int, list[list]] = {}
    for _, _, status, served, version, connection in answered:
        if not 200 <= status < 300:
            continue
        runs = runs_by_connection.setdefault(connection, [])
        if runs and runs[-1][0] == version and runs[-1][1] == served:
            runs[-1][2] += 1
        else:
            runs.append([version, served, 1])
    flips = 0
    for runs in runs_by_connection.values():
        versions = [r[0] for r in runs]
        pairs = zip(versions, versions[1:], strict=False)
        flips += sum(1 for a, b in pairs if (a, b) == (new, old))
    per_process: dict[str, dict] = {}
    for start, seconds, status, served, version, _ in answered:
        if not 200 <= status < 300:
            continue
        p = per_process.setdefault(
            served, {"answers": {}, "first_new_done": None, "last_old_start": None}
        )
        p["answers"][version] = p["answers"].get(version, 0) + 1
        if version == new:
            done = start + seconds
            if p["first_new_done"] is None or done < p["first_new_done"]:
                p["first_new_done"] = done
        elif version == old:
            if p["last_old_start"] is None or start > p["last_old_start"]:
                p["last_old_start"] = start
    for p in per_process.values():
        first_new = p["first_new_done"]
        p["old_answers_to_requests_sent_after_its_first_new"] = sum(
            1
            for start, _, status, served, version, _ in answered
            if 200 <= status < 300
            and per_process.get(served) is p
            and version == old
            and first_new is not None
            and start > first_new
        )
    other = sum(1 for r in answered if 200 <= r[2] < 300 and r[4] not in (old, new))
    return {
        "runs_by_connection": {str(c): runs for c, runs in runs_by_connection.items()},
        "connections_switching_more_than_once": sum(
            1 for runs in runs_by_connection.values() if switches([r[0] for r in runs]) > 1
        ),
        "flip_backs_new_to_old": flips,
        "per_process": per_process,
        "answers_of_other_versions": other,
    }


def per_second(answered: list[tuple], t0: float) -> list[dict]:
    """Requests by the second they were sent in: count, p50 and max latency, versions."""
    buckets: dict[int, list[tuple]] = {}
    for row in answered:
        buckets.setdefault(int(row[0] - t0), []).append(row)
    series = []
    for second in sorted(buckets):
        rows = buckets[second]
        ms = np.array([r[1] for r in rows]) * 1000
        versions: dict[str, int] = {}
        for r in rows:
            versions[r[4]] = versions.get(r[4], 0) + 1
        series.append(
            {
                "second": second,
                "requests": len(rows),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "max_ms": round(float(ms.max()), 2),
                "non_2xx": sum(1 for r in rows if not 200 <= r[2] < 300),
                "versions": versions,
            }
        )
    return series


def throughput(progress: list[dict], put_at: float, switched_at: float | None) -> dict:
    """References embedded per second from the progress seen (first to last record showing the
    job), by tenths of the job too, and the whole job's references / (PUT -> switch)."""
    shown = [p for p in progress if "embedded" in p and p["t"] >= put_at]
    result: dict = {"progress_records": len(shown)}
    if len(shown) >= 2:
        first, last = shown[0], shown[-1]
        span = last["t"] - first["t"]
        result["embedded_per_s"] = (last["embedded"] - first["embedded"]) / span if span else None
        result["first"] = {k: first[k] for k in ("t", "embedded", "total")}
        result["last"] = {k: last[k] for k in ("t", "embedded", "total")}
        tenths = []
        total = last["total"]
        marks = [total * k / 10 for k in range(11)]
        for k in range(10):
            inside = [p for p in shown if marks[k] <= p["embedded"] <= marks[k + 1]]
            if len(inside) >= 2 and inside[-1]["t"] > inside[0]["t"]:
                tenths.append(
                    (inside[-1]["embedded"] - inside[0]["embedded"])
                    / (inside[-1]["t"] - inside[0]["t"])
                )
            else:
                tenths.append(None)
        result["embedded_per_s_by_tenth"] = tenths
    if switched_at is not None and shown:
        result["job_s"] = switched_at - put_at
        result["references_at_end"] = shown[-1]["total"]
        result["references_per_job_s"] = shown[-1]["total"] / (switched_at - put_at)
    return result


# -- set-up ----------------------------------------------------------------------------------
def train_v2(code: Path, model_dir: Path, out: Path, epochs: int, seed: int) -> dict:
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train",
            "--data",
            str(model_dir / "synthetic_train.npz"),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
        ],
        cwd=code,
        check=True,
        capture_output=True,
        text=True,
    )
    return {"seconds": time.perf_counter() - began, "epochs": epochs, "seed": seed}


def contract(manifest: dict) -> dict:
    keys = ("in_channels", "min_length", "max_length", "trained_length", "embedding_dim")
    return {k: manifest[k] for k in keys}


def fill_real(code: Path, data_dir: Path, model_dir: Path, manifest: dict, args, scratch: Path):
    spec = {
        "n": args.references,
        "extra": args.extra,
        "seed": 7,
        "length": manifest["trained_length"],
        "channels": manifest["in_channels"],
        "per_element": PER_ELEMENT,
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "signals_out": str(scratch / "signals.npz"),
    }
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", FILL_REAL, json.dumps(spec)],
        cwd=code,
        check=True,
        capture_output=True,
        text=True,
    )
    times = json.loads(out.stdout.strip().splitlines()[-1])
    times["total_s"] = time.perf_counter() - began
    with np.load(scratch / "signals.npz") as f:
        pool = {k: f[k] for k in f.files}
    return times, pool


def fresh_copy(template: Path, to: Path) -> Path:
    shutil.copytree(template, to)
    return to


# -- 1. under load ---------------------------------------------------------------------------
def bench_load(ctx: dict, args) -> dict:
    scratch, pool, v1, v2 = ctx["scratch"], ctx["pool"], ctx["v1"], ctx["v2"]
    data = fresh_copy(ctx["template"], scratch / "load")
    server = Server(ctx["code"], data, ctx["model_dir"], ctx["repository"], 2, scratch / "load.log")
    query = pool["signals"][args.references].tolist()  # one of the signals kept aside
    result: dict = {"workers": 2, "server_start_s": server.start_s}
    try:
        result["first_searches"] = first_searches(
            server.url, {"signals": [query], "k": 5}, server.workers
        )
        # v1 serves the written references: a sample found by its own signal first
        sample = [(f"r{i}", i) for i in range(0, args.references, max(1, args.references // 256))]
        result["before_check"] = own_signal_check(server.url, pool, sample, v1)
        load = LoggedWrk(
            server.url, "/search", {"signals": [query], "k": 5}, args.connections, scratch
        )
        cpu = CpuClock(server, load)
        writer = Writer(
            server.url,
            pool,
            args.references + 1,
            args.references + 1 + (args.extra - 1) // 2,
            args.write_interval_ms / 1000,
            "w",
        )
        poller = Poller(server.url, data, args.poll_s)
        t_load = time.time()
        writer.start()
        poller.start()
        phases_cpu = {}
        time.sleep(args.warmup)
        phases_cpu["warmup"] = cpu.mark()
        t_steady = time.time()
        time.sleep(args.steady)
        phases_cpu["steady"] = cpu.mark()
        t_put = time.time()
        answer = httpx.put(
            f"{server.url}/collections/default/model", json={"model": "v2"}, timeout=120
        )
        result["put"] = {
            "status": answer.status_code,
            "seconds": time.time() - t_put,
            "body": answer.json(),
        }
        assert answer.status_code == 202, answer.text
        print(f"  PUT {answer.status_code} in {time.time() - t_put:.2f}s", flush=True)
        last_shown = 0.0
        while True:
            latest = poller.latest()
            if latest.get("model_version") == v2:
                break
            if time.time() - last_shown > 10 and "embedded" in latest:
                print(f"  {latest['embedded']}/{latest['total']} embedded", flush=True)
                last_shown = time.time()
            if time.time() - t_put > args.job_limit:
                raise RuntimeError("the job did not finish in time")
            time.sleep(0.2)
        t_seen = wait_switched(server, poller, v2, args.job_limit)
        phases_cpu["job_and_switch"] = cpu.mark()
        print(f"  switched, seen by every process {t_seen - t_put:.1f}s after the PUT", flush=True)
        time.sleep(args.after)
        phases_cpu["after"] = cpu.mark()
        logged = load.stop()
        writes = writer.stop()
        progress = poller.stop()
        t_end = time.time()
        answered = logged["answered"]
        seq = version_sequences(answered, v1, v2)
        firsts = [p["first_new_done"] for p in seq["per_process"].values() if p["first_new_done"]]
        first_any, first_all = (min(firsts), max(firsts)) if firsts else (t_end, t_end)
        # the switch committed between the last poll that saw the job's row and the next one
        saw_row = [p["t"] for p in progress if p["t"] >= t_put and p.get("upgrade_row")]
        committed_after = max(saw_row) if saw_row else t_put
        w = args.switch_window
        window = (committed_after - w, first_all + w)
        phases = {  # steady and job: requests sent and answered inside; the window: in flight
            "steady": latency_stats(within(answered, t_steady, t_put)),
            "job": latency_stats(within(answered, t_put, window[0])),
            "switch_window": latency_stats(overlapping(answered, *window)),
            "after": latency_stats([r for r in answered if r[0] >= window[1]]),
            "whole_run": latency_stats(answered),
        }

        def write_stats(rows: list[dict]) -> dict:
            if not rows:
                return {"writes": 0}
            ms = np.array([r["seconds"] for r in rows]) * 1000
            return {
                "writes": len(rows),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max()),
                "non_201": sum(1 for r in rows if r["status"] != 201),
            }

        result |= {
            "times": {
                "load_start": t_load,
                "steady_start": t_steady,
                "put": t_put,
                "switch_committed_after": committed_after,
                "first_v2_answer_any_process": first_any,
                "first_v2_answer_every_process": first_all,
                "every_process_seen_v2": t_seen,
                "end": t_end,
            },
            "switch_window": {"from": window[0], "to": window[1]},
            "phases": phases,
            "p99_job_over_steady": phases["job"]["p99_ms"] / phases["steady"]["p99_ms"],
            "longest_silence_in_switch_window": longest_silence(answered, *window),
            "longest_silence_in_steady": longest_silence(answered, t_steady, t_put),
            "slow_requests": slow_requests(answered, t_put),
            "cpu": phases_cpu,
            "wrk_summary": logged["summary"],
            "unanswered": len(logged["unanswered"]),
            "unanswered_examples": logged["unanswered"][:10],
            "in_flight_when_wrk_stopped": logged["in_flight_when_stopped"],
            "versions": seq,
            "per_second": per_second(answered, t_load),
            "throughput": throughput(progress, t_put, first_any),
            "progress": progress,
            "writes": {
                "sent": len(writes),
                "non_2xx": sum(1 for w_ in writes if w_["status"] != 201),
                "during_job": sum(1 for w_ in writes if t_put <= w_["start"] < first_all),
                "steady": write_stats([w_ for w_ in writes if t_steady <= w_["start"] < t_put]),
                "job": write_stats([w_ for w_ in writes if t_put <= w_["start"] < window[0]]),
                "switch_window": write_stats(
                    [w_ for w_ in writes if window[0] <= w_["start"] < window[1]]
                ),
                "records": writes,
            },
        }
        # without load: every reference (or a sample) and every write found by its own signal
        n = args.references
        if args.check_sample and args.check_sample < n:
            chosen = np.random.default_rng(5).choice(n, args.check_sample, replace=False)
        else:
            chosen = np.arange(n)
        items = [(f"r{i}", int(i)) for i in sorted(chosen)]
        items += [(w_["id"], w_["index"]) for w_ in writes if w_["status"] == 201]
        result["after_check"] = own_signal_check(server.url, pool, items, v2)
        result["after_check"]["writes_included"] = sum(1 for w_ in writes if w_["status"] == 201)
        result["database"] = embedding_counts(data, v2)
    finally:
        server.stop()
    result["server_log_tail"] = server.warnings()
    return result


# -- 2. one worker against two, no load ------------------------------------------------------
def bench_workers(ctx: dict, args) -> dict:
    runs = {}
    for workers in args.worker_counts:
        data = fresh_copy(ctx["template"], ctx["scratch"] / f"workers-{workers}")
        server = Server(
            ctx["code"],
            data,
            ctx["model_dir"],
            ctx["repository"],
            workers,
            ctx["scratch"] / f"workers-{workers}.log",
        )
        try:
            cpu = CpuClock(server)
            poller = Poller(server.url, data, args.poll_s)
            poller.start()
            t_put = time.time()
            answer = httpx.put(
                f"{server.url}/collections/default/model", json={"model": "v2"}, timeout=120
            )
            assert answer.status_code == 202, answer.text
            t_seen = wait_switched(server, poller, ctx["v2"], args.job_limit)
            spent = cpu.mark()
            progress = poller.stop()
            switched = [p["t"] for p in progress if p.get("model_version") == ctx["v2"]]
            runs[str(workers)] = {
                "server_start_s": server.start_s,
                "throughput": throughput(progress, t_put, min(switched) if switched else t_seen),
                "every_process_seen_v2_s": t_seen - t_put,
                "cpu": spent,
                "database": embedding_counts(data, ctx["v2"]),
                "progress": progress,
            }
            t = runs[str(workers)]["throughput"]
            print(
                f"  {workers} worker(s): job {t.get('job_s', 0):.1f}s, "
                f"{t.get('references_per_job_s', 0):.0f} references/s "
                f"({t.get('embedded_per_s', 0):.0f}/s between progress records), "
                f"others {spent['others_s']:.1f} CPU s",
                flush=True,
            )
        finally:
            server.stop()
        runs[str(workers)]["server_log_tail"] = server.warnings()
        shutil.rmtree(data, ignore_errors=True)
    return runs


# -- 3. the job's holder SIGKILLed -----------------------------------------------------------
def bench_kill(ctx: dict, args) -> dict:
    scratch, pool, v1, v2 = ctx["scratch"], ctx["pool"], ctx["v1"], ctx["v2"]
    data = fresh_copy(ctx["template"], scratch / "kill")
    server = Server(ctx["code"], data, ctx["model_dir"], ctx["repository"], 2, scratch / "kill.log")
    query = pool["signals"][args.references].tolist()
    result: dict = {"workers": 2, "server_start_s": server.start_s}
    try:
        workers_before = server.pids()
        load = LoggedWrk(
            server.url, "/search", {"signals": [query], "k": 5}, args.kill_connections, scratch
        )
        cpu = CpuClock(server, load)
        half = args.references + 1 + (args.extra - 1) // 2  # the second half of the extras
        writer = Writer(
            server.url, pool, half, len(pool["signals"]), args.write_interval_ms / 1000, "k"
        )
        poller = Poller(server.url, data, args.poll_s)
        writer.start()
        poller.start()
        time.sleep(args.warmup)
        t_put = time.time()
        answer = httpx.put(
            f"{server.url}/collections/default/model", json={"model": "v2"}, timeout=120
        )
        assert answer.status_code == 202, answer.text
        killed = None
        while killed is None:
            latest = poller.latest()
            if latest.get("model_version") == v2:
                raise RuntimeError("the job finished before the kill: raise --references")
            if "embedded" in latest and latest["embedded"] >= args.kill_at * latest["total"]:
                holder = lease_row(data)[0]
                pid = int(holder.split("/")[0].rsplit(":", 1)[1])
                assert pid in server.pids(), (pid, server.pids())
                os.kill(pid, signal.SIGKILL)
                killed = {
                    "t": time.time(),
                    "pid": pid,
                    "holder": holder,
                    "embedded": latest["embedded"],
                    "total": latest["total"],
                }
                print(
                    f"  SIGKILL {pid} (the job's holder) at {latest['embedded']}/{latest['total']}",
                    flush=True,
                )
            time.sleep(0.05)
        t_seen = wait_switched(server, poller, v2, args.job_limit)
        time.sleep(args.after)
        spent = cpu.mark()
        workers_after = server.pids()
        logged = load.stop()
        writes = writer.stop()
        progress = poller.stop()
        answered = logged["answered"]
        taken_over = next(
            (
                p
                for p in progress
                if p["t"] > killed["t"] and p.get("holder") not in (None, killed["holder"])
            ),
            None,
        )
        # progress seen between the kill and the takeover: the killed holder's last batches
        stalled = [
            p["embedded"]
            for p in progress
            if "embedded" in p and killed["t"] < p["t"] < (taken_over or {"t": 1e18})["t"]
        ]
        holders = []
        for p in progress:
            h = p.get("holder")
            if h and (not holders or holders[-1]["holder"] != h):
                holders.append({"t": p["t"], "holder": h})
        seq = version_sequences(answered, v1, v2)
        firsts = [p["first_new_done"] for p in seq["per_process"].values() if p["first_new_done"]]
        statuses: dict[str, int] = {}
        for r in answered:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        result |= {
            "kill": killed,
            "workers_before": workers_before,
            "workers_after": workers_after,
            "worker_restarted": any(p not in workers_before for p in workers_after),
            "job_taken_over_s_after_kill": taken_over["t"] - killed["t"] if taken_over else None,
            "embedded_while_no_holder": [min(stalled), max(stalled)] if stalled else None,
            "holders": holders,
            "job_s": (min(firsts) if firsts else t_seen) - t_put,
            "every_process_seen_v2_s": t_seen - t_put,
            "throughput": throughput(progress, t_put, min(firsts) if firsts else t_seen),
            "searches": latency_stats(answered) | {"statuses": statuses},
            "unanswered": len(logged["unanswered"]),
            "unanswered_examples": logged["unanswered"][:10],
            "unanswered_s_after_kill": [u[0] - killed["t"] for u in logged["unanswered"]],
            "in_flight_when_wrk_stopped": logged["in_flight_when_stopped"],
            "wrk_summary": logged["summary"],
            "versions": seq,
            "writes": {
                "sent": len(writes),
                "non_2xx": sum(1 for w_ in writes if w_["status"] != 201),
                "failed": [w_ for w_ in writes if w_["status"] != 201][:10],
            },
            "cpu": spent,
            "slow_requests": slow_requests(answered, killed["t"]),
            "progress": progress,
            "per_second": per_second(answered, t_put),
        }
        chosen = np.random.default_rng(6).choice(
            args.references, min(args.kill_check_sample, args.references), replace=False
        )
        items = [(f"r{i}", int(i)) for i in sorted(chosen)]
        items += [(w_["id"], w_["index"]) for w_ in writes if w_["status"] == 201]
        result["after_check"] = own_signal_check(server.url, pool, items, v2)
        result["database"] = embedding_counts(data, v2)
    finally:
        server.stop()
    result["server_log_tail"] = server.warnings()
    return result


# -- 4. backups ------------------------------------------------------------------------------
class Postgres:
    """A throwaway PostgreSQL server (initdb in a temporary folder, loopback, a free port) with
    PostgreSQL's default settings (fsync on); run as the postgres user when this is root."""

    def __init__(self, binaries: Path, root: Path) -> None:
        self.binaries = binaries
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = root
        self.root.mkdir()
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = root / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.binaries / tool), *args],
            check=True,
            capture_output=True,
            timeout=600,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def size_bytes(self, database: str) -> int:
        return self.sql(f"SELECT pg_database_size('{database}')")[0][0]

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def pg_binaries() -> Path | None:
    import glob

    for folder in sorted(glob.glob(PG_BIN_GLOB), reverse=True):
        if all((Path(folder) / t).is_file() for t in ("initdb", "pg_ctl", "pg_dump", "pg_restore")):
            return Path(folder)
    return None


def timed(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    began = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"{command} failed ({out.returncode}): {out.stderr[-2000:]}")
    last = (out.stderr.strip().splitlines() or [""])[-1]
    reported = re.search(r" in ([\d.]+)s$", last)  # what python -m app backup/restore says
    return {
        "seconds": seconds,
        "tool_reported_s": float(reported.group(1)) if reported else None,
        "stderr_last": last,
    }


def service_env(**hsn: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HSN_")}
    environment.update(HSN_LOG_LEVEL="WARNING", **hsn)
    return environment


def sqlite_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT COUNT(*) FROM refs").fetchone()[0]


def bench_backup(ctx: dict, args) -> dict:
    code, scratch, manifest = ctx["code"], ctx["scratch"], ctx["manifest"]
    binaries = pg_binaries()
    results = {"postgres_binaries": str(binaries) if binaries else None, "sizes": {}}
    postgres = Postgres(binaries, scratch / "pg") if binaries else None
    try:
        if postgres:
            results["postgres_version"] = postgres.sql("SHOW server_version")[0][0]
            results["postgres_settings"] = {
                name: postgres.sql(f"SHOW {name}")[0][0]
                for name in ("fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
            }
        for n in args.backup_sizes:
            r: dict = {}
            base = scratch / f"backup-{n}"
            source = base / "source"
            source.mkdir(parents=True)
            spec = {
                "n": n,
                "seed": 11,
                "channels": manifest["in_channels"],
                "length": manifest["trained_length"],
                "dim": manifest["embedding_dim"],
                "model_version": manifest["model_version"],
                "data_dir": str(source),
            }
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", FILL_RANDOM, json.dumps(spec)], cwd=code, check=True
            )
            r["fill_s"] = time.perf_counter() - began
            db_file = source / DB_FILE
            r["sqlite_file_bytes"] = db_file.stat().st_size
            print(
                f"  {n:,}: filled in {r['fill_s']:.1f}s, {r['sqlite_file_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )

            archive = base / "backup.zip"
            r["app_backup_sqlite"] = timed(
                [sys.executable, "-m", "app", "backup", "--out", str(archive)],
                code,
                service_env(HSN_DATA_DIR=str(source)),
            ) | {"bytes": archive.stat().st_size}
            print(f"    app backup: {r['app_backup_sqlite']['seconds']:.1f}s", flush=True)

            copy = base / "sqlite-backup.sqlite3"
            began = time.perf_counter()
            with (
                contextlib.closing(sqlite3.connect(db_file)) as src,
                contextlib.closing(sqlite3.connect(copy)) as dst,
            ):
                src.backup(dst)
            r["sqlite_backup_api"] = {
                "seconds": time.perf_counter() - began,
                "bytes": copy.stat().st_size,
            }

            into = base / "restored-sqlite"
            into.mkdir()
            r["app_restore_sqlite"] = timed(
                [sys.executable, "-m", "app", "restore", "--from", str(archive)],
                code,
                service_env(HSN_DATA_DIR=str(into)),
            ) | {"references": sqlite_count(into / DB_FILE)}
            print(
                f"    app restore into SQLite: {r['app_restore_sqlite']['seconds']:.1f}s",
                flush=True,
            )
            shutil.rmtree(into)

            back = base / "sqlite-restored.sqlite3"
            began = time.perf_counter()
            with (
                contextlib.closing(sqlite3.connect(copy)) as src,
                contextlib.closing(sqlite3.connect(back)) as dst,
            ):
                src.backup(dst)
            r["sqlite_restore_api"] = {
                "seconds": time.perf_counter() - began,
                "references": sqlite_count(back),
            }
            back.unlink()
            copy.unlink()

            if postgres:
                name = f"hsn_{n}"
                postgres.sql(f"CREATE DATABASE {name}")
                url = postgres.url(name)
                r["app_restore_postgres"] = timed(
                    [sys.executable, "-m", "app", "restore", "--from", str(archive)],
                    code,
                    service_env(HSN_DATABASE_URL=url),
                ) | {"references": postgres.sql("SELECT COUNT(*) FROM refs", name)[0][0]}
                r["postgres_database_bytes"] = postgres.size_bytes(name)
                print(
                    f"    app restore into PostgreSQL: {r['app_restore_postgres']['seconds']:.1f}s",
                    flush=True,
                )
                pg_archive = base / "backup-from-postgres.zip"
                r["app_backup_postgres"] = timed(
                    [sys.executable, "-m", "app", "backup", "--out", str(pg_archive)],
                    code,
                    service_env(HSN_DATABASE_URL=url),
                ) | {"bytes": pg_archive.stat().st_size}
                pg_archive.unlink()
                dump = base / "pg.dump"
                r["pg_dump_fc"] = timed(
                    [str(binaries / "pg_dump"), "-Fc", "-f", str(dump), "-d", url], code
                ) | {"bytes": dump.stat().st_size}
                print(f"    pg_dump -Fc: {r['pg_dump_fc']['seconds']:.1f}s", flush=True)
                restored = f"hsn_{n}_restored"
                postgres.sql(f"CREATE DATABASE {restored}")
                r["pg_restore"] = timed(
                    [str(binaries / "pg_restore"), "-d", postgres.url(restored), str(dump)], code
                ) | {"references": postgres.sql("SELECT COUNT(*) FROM refs", restored)[0][0]}
                print(f"    pg_restore: {r['pg_restore']['seconds']:.1f}s", flush=True)
                dump.unlink()
                postgres.sql(f"DROP DATABASE {name}")
                postgres.sql(f"DROP DATABASE {restored}")
            shutil.rmtree(base)
            results["sizes"][str(n)] = r
    finally:
        if postgres:
            postgres.close()
    return results


# -- report ----------------------------------------------------------------------------------
def report(run: dict) -> str:
    lines = []
    if "load" in run:
        lo = run["load"]
        lines.append("1. Under load (HSN_WORKERS=2):")
        for name, s in lo["phases"].items():
            if s.get("requests"):
                lines.append(
                    f"   {name:14} {s['requests']:7d} req ({s['requests_per_s']:.0f}/s)  p50 "
                    f"{s['p50_ms']:.1f}  p99 {s['p99_ms']:.1f}  max {s['max_ms']:.1f} ms  "
                    f"non-2xx {s['non_2xx']}"
                )
        t = lo["throughput"]
        silence = lo["longest_silence_in_switch_window"]
        lines += [
            "   longest silence in the switch window: "
            + ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in silence.items()),
            f"   first searches after start: {lo['first_searches']['first_search_ms']}",
            f"   p99 job / steady: {lo['p99_job_over_steady']:.2f}; unanswered {lo['unanswered']}; "
            f"flip-backs {lo['versions']['flip_backs_new_to_old']}",
            f"   job {t.get('job_s', 0):.1f}s: {t.get('references_per_job_s', 0):.0f} refs/s "
            f"overall, {t.get('embedded_per_s', 0):.0f}/s between progress records",
            f"   writes: {lo['writes']['sent']} ({lo['writes']['during_job']} during the job), "
            f"non-2xx {lo['writes']['non_2xx']}",
            f"   own signal first: {lo['after_check']['found_first']}/"
            f"{lo['after_check']['checked']}; database: {lo['database']}",
        ]
    if "workers" in run:
        lines.append("2. Job without load:")
        for workers, r in run["workers"].items():
            t = r["throughput"]
            lines.append(
                f"   {workers} worker(s): job {t.get('job_s', 0):.1f}s, "
                f"{t.get('references_per_job_s', 0):.0f} refs/s"
            )
    if "kill" in run:
        k = run["kill"]
        lines += [
            "3. Holder SIGKILLed:",
            f"   restarted {k['worker_restarted']}, taken over after "
            f"{k['job_taken_over_s_after_kill']}, job {k['job_s']:.1f}s, searches "
            f"{k['searches']['statuses']}, unanswered {k['unanswered']}, writes non-2xx "
            f"{k['writes']['non_2xx']}",
            f"   database: {k['database']}",
            f"   own signal first: {k['after_check']['found_first']}/{k['after_check']['checked']}",
        ]
    if "backup" in run:
        lines.append("4. Backups:")
        for n, r in run["backup"]["sizes"].items():
            parts = [
                f"{k} {v['seconds']:.1f}s"
                + (f" {v['bytes'] / 2**20:.0f} MiB" if "bytes" in v else "")
                for k, v in r.items()
                if isinstance(v, dict)
            ]
            lines.append(f"   {int(n):,}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=ROOT / "models" / "default",
        help="v1: the model the collection default starts on (HSN_MODEL_DIR)",
    )
    parser.add_argument(
        "--new-model",
        type=Path,
        help="v2: an exported model of the same input contract (default: train "
        "one here, --train-epochs epochs of the same architecture, seed 1)",
    )
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs of the v2 trained here")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["load", "workers", "kill", "backup"],
        default=["load", "workers", "kill", "backup"],
        help="which parts to run (default all)",
    )
    parser.add_argument(
        "--current-commit",
        default="HEAD",
        help="the commit served (checked out into a temporary git worktree)",
    )
    parser.add_argument(
        "--references",
        type=int,
        default=100_000,
        help="references of the collection default in parts 1-3",
    )
    parser.add_argument(
        "--extra",
        type=int,
        default=4_000,
        help="signals kept aside for the query and the writes (parts 1 and 3)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="wrk connections searching in part 1 (one wrk thread each)",
    )
    parser.add_argument(
        "--write-interval-ms",
        type=float,
        default=100,
        help="one reference written every this many ms (parts 1 and 3)",
    )
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before steady")
    parser.add_argument(
        "--steady", type=float, default=30, help="seconds of steady state before the PUT (part 1)"
    )
    parser.add_argument(
        "--after",
        type=float,
        default=15,
        help="seconds of load once every process answers v2 (parts 1 and 3)",
    )
    parser.add_argument(
        "--switch-window",
        type=float,
        default=3,
        help="the switch's window (part 1) runs from this many seconds before the switch's "
        "commit to this many after the last process's first v2 answer",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.5,
        help="seconds between GET /collections/default (progress)",
    )
    parser.add_argument(
        "--check-sample",
        type=int,
        default=0,
        help="references searched by their own signal after the switch in part 1 "
        "(0: every one), besides every write",
    )
    parser.add_argument(
        "--worker-counts",
        type=int,
        nargs="+",
        default=[1, 2],
        help="HSN_WORKERS of the runs of part 2, in order",
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.4,
        help="share of the job done when its holder is SIGKILLed (part 3)",
    )
    parser.add_argument(
        "--kill-connections",
        type=int,
        default=2,
        help="wrk connections searching in part 3 (light load)",
    )
    parser.add_argument(
        "--kill-check-sample",
        type=int,
        default=2000,
        help="references searched by their own signal in part 3, besides writes",
    )
    parser.add_argument(
        "--job-limit", type=float, default=900, help="seconds a job may take before the run fails"
    )
    parser.add_argument(
        "--backup-sizes",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="references of the backup measurements (part 4)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "model_change.json",
        help="where the results JSON goes",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None and set(args.only) & {"load", "kill"}:
        print("needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    args.model_dir = args.model_dir.resolve()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    run: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_before": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    began = time.perf_counter()
    with (
        checkout(args.current_commit) as (code, run["code"]),
        tempfile.TemporaryDirectory(prefix="hsn-model-change-bench-") as scratch_,
    ):
        scratch = Path(scratch_)
        if scratch.stat().st_mode & 0o777 != 0o755:
            os.chmod(scratch, 0o755)  # the PostgreSQL server's user reaches its folder
        served = subprocess.run(
            [sys.executable, "-c", "import app; print(app.__file__)"],
            cwd=code,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert served.startswith(str(code)), f"the served code is {served}, not the worktree's"
        run["code"]["app_imported_from"] = served
        ctx: dict = {
            "code": code,
            "scratch": scratch,
            "model_dir": args.model_dir,
            "manifest": manifest,
            "v1": manifest["model_version"],
        }
        if set(args.only) & {"load", "workers", "kill"}:
            if args.new_model:
                new_model = args.new_model.resolve()
                run["new_model"] = {"given": str(new_model)}
            else:
                new_model = scratch / "v2"
                run["new_model"] = train_v2(code, args.model_dir, new_model, args.train_epochs, 1)
            new_manifest = json.loads((new_model / "manifest.json").read_text())
            assert contract(new_manifest) == contract(manifest), "v2 takes other input than v1"
            assert new_manifest["model_config"] == manifest["model_config"] or args.new_model
            run["new_model"] |= {
                "model_version": new_manifest["model_version"],
                "contract": contract(new_manifest),
            }
            ctx["v2"] = new_manifest["model_version"]
            repository = scratch / "repository"
            repository.mkdir()
            (repository / "v1").symlink_to(args.model_dir)
            (repository / "v2").symlink_to(new_model)
            ctx["repository"] = repository
            template = scratch / "template"
            template.mkdir()
            fill_times, ctx["pool"] = fill_real(
                code, template, args.model_dir, manifest, args, scratch
            )
            ctx["template"] = template
            run["fill"] = fill_times | {"references": args.references, "extra": args.extra}
            print(f"filled {args.references:,} references: {fill_times}", flush=True)
        if "load" in args.only:
            print("1. under load", flush=True)
            run["load"] = bench_load(ctx, args)
            shutil.rmtree(scratch / "load", ignore_errors=True)
        if "workers" in args.only:
            print("2. one worker against two, no load", flush=True)
            run["workers"] = bench_workers(ctx, args)
        if "kill" in args.only:
            print("3. the job's holder SIGKILLed", flush=True)
            run["kill"] = bench_kill(ctx, args)
            shutil.rmtree(scratch / "kill", ignore_errors=True)
        if "backup" in args.only:
            print("4. backups", flush=True)
            run["backup"] = bench_backup(ctx, args)
    run["seconds"] = time.perf_counter() - began
    run["load_average_after"] = os.getloadavg()
    print(report(run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1, default=str) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
