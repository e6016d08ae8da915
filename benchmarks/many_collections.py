"""Collections: what routing through them costs, and ten small collections against one large.

Two parts, every server its own ``python -m app`` process on loopback with the service's
defaults (one worker; inherited HSN_* variables are dropped; log level WARNING, as bench.py
runs it), the load from wrk (2 threads) on the same cores:

1. ``overhead``: requests/s and wrk's p50/p99 latency of /embed (one signal, JSON) and /search
   (the same signal, k = 5, against --overhead-references references written straight into
   the store) through
     A. the plain routes of this tree (they serve the collection ``default``),
     B. /collections/default/... of this tree,
     C. the plain routes of the last commit before collections (--base-commit, checked out
        into a temporary git worktree that is removed at the end, served by the same Python
        and model, with its own data directory holding the same references).
   Both servers run throughout (the one not measured waits). One wrk phase per variant and
   route, interleaved A, B, C (the order rotated each round) for --rounds rounds, so each ratio
   compares phases run next to each other: A / C and B / C per round, their median reported.
2. ``layouts``: the same --references vectors (the model's own dimension, read from its
   manifest; clustered like embeddings: elements of 50 references over 5 sessions) written
   straight into the store, never through the model, as one collection or as --collections
   collections of equal size (the collection ``default`` stays empty in both). For each layout:
   time from process start to /ready answering 200 on a cold start (no index segment: every
   index built from SQLite) and on a warm restart (mapping the segments the previous run
   built), each --starts times, interleaved; the server's memory (RSS, PSS and anonymous
   from /proc/PID/smaps_rollup) once ready, and again after the searches (each collection's anomaly
   calibration fitted by then); then search latency and requests/s, one signal per request,
   k = 5, with --search-connections connections, the requests cycling over every collection
   of the layout (and over --query-signals signals), the layouts interleaved for
   --search-rounds rounds.

Each wrk phase also records the CPU seconds the measured server, the other server, wrk and
everything else on the machine took (``others_s``: about 0 when nothing else ran). A round in
which any phase saw more than --clean-others-s of other work stays in the JSON but is left out
of the medians and ratios (unless no round was that quiet); the tables say how many rounds they
rest on. Every number goes to --out (benchmarks/results/collections.json).

    python benchmarks/many_collections.py                      # both parts, about 5 minutes
    python benchmarks/many_collections.py --only overhead --rounds 8
    python benchmarks/many_collections.py --only layouts --references 100000 --collections 10

Needs wrk (Debian: apt-get install wrk) and git. Run it as a script: the file is named like the
standard library's ``collections``, which the interpreter has imported before the script runs
(importing this file as a module ``collections`` would shadow it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import free_port  # noqa: E402
from scale_out import signals  # noqa: E402
from search_under_writes import WRK_REPORT, parse_wrk  # noqa: E402

VARIANTS = {  # variant -> (which server, route prefix)
    "A_plain": ("current", ""),
    "B_collections_default": ("current", "/collections/default"),
    "C_plain_before_collections": ("base", ""),
}
PER_ELEMENT, PER_SESSION = 50, 10  # references of one element, of one session

# Written into each reference set by the tree that serves it (its own store code and schema),
# run as ``python -c FILL SPEC`` in that tree: references r<i> of element e<i // 50> and session
# s<i // 10>, a zero signal, vectors[i] as the served model's embedding; each upsert goes to the
# change log as the service's own writes do.
FILL = r"""
import json, sys
from pathlib import Path
import numpy as np
from app.database import SqliteDatabase
from app.store import NewReference, ReferenceStore

spec = json.loads(sys.argv[1])
vectors = np.load(spec["vectors"], mmap_mode="r")
store = ReferenceStore(SqliteDatabase(Path(spec["data_dir"]) / "references.sqlite3"))
store.migrate()
signal = np.zeros(spec["signal_shape"], dtype=np.float32)
for part in spec["collections"]:
    if part["name"] == "default":
        target = store
    else:
        from app.catalog import CollectionTable
        target = store.of_collection(CollectionTable(store.db).create(part["name"], None).id)
    for start in range(part["start"], part["stop"], 10_000):
        stop = min(start + 10_000, part["stop"])
        target.upsert(
            [
                NewReference(
                    f"r{i}", f"e{i // spec['per_element']}", f"s{i // spec['per_session']}",
                    {}, signal, np.array(vectors[i], dtype=np.float32),
                )
                for i in range(start, stop)
            ],
            spec["model_version"],
        )
store.close()
"""


# -- data ------------------------------------------------------------------------------------
def clustered_vectors(n: int, dim: int, seed: int = 3) -> np.ndarray:
    """Unit vectors in blocks like embeddings: each element (PER_ELEMENT in a row) has a centre,
    each of its sessions (PER_SESSION in a row) an offset from it, each reference noise on top
    (centres N(0, 1) per dimension, offsets and noise 0.25 each, then normalised)."""
    rng = np.random.default_rng(seed)
    elements = -(-n // PER_ELEMENT)
    sessions = -(-n // PER_SESSION)
    centres = rng.normal(size=(elements, dim)).astype(np.float32)
    offsets = 0.25 * rng.normal(size=(sessions, dim)).astype(np.float32)
    index = np.arange(n)
    data = centres[index // PER_ELEMENT] + offsets[index // PER_SESSION]
    data += 0.25 * rng.normal(size=(n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def fill(code_root: Path, data_dir: Path, vectors: Path, parts: list[dict], manifest: dict):
    """Writes the references of ``parts`` ({name, start, stop} rows of ``vectors``) with the
    store code of ``code_root``; returns the seconds it took."""
    spec = {
        "data_dir": str(data_dir),
        "vectors": str(vectors),
        "collections": parts,
        "signal_shape": [manifest["in_channels"], manifest["trained_length"]],
        "model_version": manifest["model_version"],
        "per_element": PER_ELEMENT,
        "per_session": PER_SESSION,
    }
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", FILL, json.dumps(spec)], cwd=code_root, check=True)
    return time.perf_counter() - began


# -- servers ---------------------------------------------------------------------------------
def memory(pid: int) -> dict:
    """RSS, PSS and anonymous memory in MiB of the process and any children, from
    /proc/PID/smaps_rollup. PSS splits each shared page among the processes mapping it (torch's
    and ONNX Runtime's libraries, the model file), so it falls while other processes of the same
    Python environment run (the other server, other work on the machine); anonymous memory
    (heap: indexes, arrays, Python objects) is the process's own whatever else runs."""
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    kib = {"Rss:": 0, "Pss:": 0, "Anonymous:": 0}
    for process in processes:
        for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value, *_ = line.split()
            if name in kib:
                kib[name] += int(value)
    return {
        "rss_mib": kib["Rss:"] / 1024,
        "pss_mib": kib["Pss:"] / 1024,
        "anonymous_mib": kib["Anonymous:"] / 1024,
        "processes": len(processes),
    }


class Server:
    """``python -m app`` of ``code_root`` with the service's defaults, on a free loopback port;
    with ``log``, at log level INFO into that file (to tell segments mapped from built)."""

    def __init__(
        self,
        code_root: Path,
        model_dir: Path,
        data_dir: Path,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        ready_limit_s: float = 600,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("HSN_")}
        environment.update(
            HSN_MODEL_DIR=str(model_dir),
            HSN_DATA_DIR=str(data_dir),
            HSN_PORT=str(port),
            HSN_LOG_LEVEL="INFO" if log else "WARNING",
        )
        environment.update(env or {})
        output = open(log, "w") if log else None  # the child keeps it open
        self.began = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=code_root,
            env=environment,
            stdout=output,
            stderr=output,
        )
        if output:
            output.close()
        self.start_s = self._wait_ready(ready_limit_s)
        self.ready = httpx.get(f"{self.url}/ready", timeout=30).json()
        self.memory_at_ready = memory(self.process.pid)

    def _wait_ready(self, limit_s: float = 600) -> float:
        """Seconds from process start to the first 200 from /ready."""
        while time.perf_counter() - self.began < limit_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return time.perf_counter() - self.began
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("the server was not ready in time")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> float:
        """A graceful stop; returns the seconds it took."""
        began = time.perf_counter()
        self.process.terminate()
        self.process.wait(timeout=120)
        return time.perf_counter() - began


def search_once(url: str, path: str, signal: list) -> None:
    answer = httpx.post(f"{url}{path}", json={"signals": [signal], "k": 5}, timeout=600)
    answer.raise_for_status()


# -- load ------------------------------------------------------------------------------------
class Cpu:
    """CPU seconds over a phase: the machine's busy time, each named server's, wrk's (this
    process's finished children) and this process's; ``others_s`` is the rest."""

    def __init__(self, servers: dict[str, int]) -> None:
        self.servers = {name: psutil.Process(pid) for name, pid in servers.items()}
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "machine_busy_s": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
            "machine_steal_s": getattr(machine, "steal", 0.0),
            **{f"{n}_s": sum(p.cpu_times()[:2]) for n, p in self.servers.items()},
            "wrk_s": children.ru_utime + children.ru_stime,
            "this_process_s": sum(psutil.Process().cpu_times()[:2]),
        }

    def stop(self) -> dict:
        spent = {k: v - self.start[k] for k, v in self._now().items()}
        accounted = sum(v for k, v in spent.items() if not k.startswith("machine_"))
        spent["others_s"] = spent["machine_busy_s"] - accounted
        return spent


def lua(requests: list[tuple[str, dict]]) -> str:
    """A wrk script sending ``requests`` (path, JSON body) in turn on each thread, reporting
    its latency percentiles as one JSON line at the end."""
    paths = ", ".join(json.dumps(path) for path, _ in requests)
    bodies = ", ".join(f"[==[{json.dumps(body)}]==]" for _, body in requests)
    return (
        f"local paths = {{{paths}}}\n"
        f"local bodies = {{{bodies}}}\n"
        "local requests = {}\n"
        "local counter = 0\n"
        "init = function(args)\n"
        "  for i = 1, #paths do\n"
        '    requests[i] = wrk.format("POST", paths[i], '
        '{["Content-Type"] = "application/json"}, bodies[i])\n'
        "  end\n"
        "end\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  return requests[(counter - 1) % #requests + 1]\n"
        "end\n" + WRK_REPORT
    )


def wrk(
    url: str,
    requests: list[tuple[str, dict]],
    seconds: int,
    connections: int,
    servers: dict[str, int],
) -> dict:
    """wrk (up to 2 threads, ``connections`` connections, 30 s request timeout so that slow
    answers count as latencies) for ``seconds``: requests/s, latency in ms, the CPU taken."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua(requests))
    threads = min(2, connections)
    cpu = Cpu(servers)
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
            + ["-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    result = parse_wrk(out.stdout)
    result["cpu"] = cpu.stop()
    result["load_average"] = os.getloadavg()
    if result["errors"]:
        raise RuntimeError(f"wrk saw errors {result['error_counts']} on {url}:\n{out.stdout}")
    return result


def rotated(items: list, by: int) -> list:
    by %= len(items)
    return items[by:] + items[:by]


def summary(phases: list[dict]) -> dict:
    """Medians over the rounds."""
    return {
        f"{key}_median": float(np.median([p[key] for p in phases]))
        for key in ("requests_per_s", "p50_ms", "p99_ms")
    } | {"others_cpu_s_max": max(p["cpu"]["others_s"] for p in phases)}


def clean_rounds(phases: list[dict], limit_s: float) -> tuple[list[int], bool]:
    """The rounds in which no phase saw more than ``limit_s`` CPU seconds of other work (and
    True), or every round (and False) when none was that quiet."""
    rounds = sorted({p["round"] for p in phases})
    quiet = [
        r for r in rounds if all(p["cpu"]["others_s"] <= limit_s for p in phases if p["round"] == r)
    ]
    return (quiet, True) if quiet else (rounds, False)


# -- 1. overhead -----------------------------------------------------------------------------
def bench_overhead(args: argparse.Namespace, manifest: dict, scratch: Path, current: Path) -> dict:
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:
        base, base_code = stack.enter_context(checkout(args.base_commit))
        stack.callback(lambda: [server.stop() for server in servers.values()])
        vectors = scratch / "overhead-vectors.npy"
        np.save(vectors, clustered_vectors(args.overhead_references, manifest["embedding_dim"]))
        part = [{"name": "default", "start": 0, "stop": args.overhead_references}]
        for name, code in (("current", current), ("base", base)):
            data = scratch / f"overhead-{name}"
            data.mkdir()
            fill(code, data, vectors, part, manifest)
            servers[name] = Server(code, args.model_dir, data)
            assert servers[name].ready["references"] == args.overhead_references
        # the worktree's own code answers (its /ready knows no collections)
        assert "collections" in servers["current"].ready
        assert "collections" not in servers["base"].ready
        pids = {name: server.pid for name, server in servers.items()}
        one = signals(manifest, 1, np.random.default_rng(0))[0].tolist()
        bodies = {"embed": {"signals": [one]}, "search": {"signals": [one], "k": 5}}

        def phase(variant: str, route: str, seconds: int) -> dict:
            server, prefix = VARIANTS[variant]
            request = [(f"{prefix}/{route}", bodies[route])]
            measured = {f"{server}_server": pids[server]}
            measured |= {f"idle_{n}_server": p for n, p in pids.items() if n != server}
            return wrk(servers[server].url, request, seconds, args.connections, measured)

        for server, prefix in VARIANTS.values():  # each calibration fitted once
            search_once(servers[server].url, f"{prefix}/search", one)
        if args.warmup > 0:
            for route in bodies:
                for variant in VARIANTS:
                    phase(variant, route, args.warmup)
        phases: list[dict] = []
        for round_ in range(args.rounds):
            for route in bodies:
                for variant in rotated(list(VARIANTS), round_):
                    result = phase(variant, route, args.duration)
                    phases.append({"round": round_, "route": route, "variant": variant, **result})
                    print(
                        f"round {round_} /{route:6} {variant:27} "
                        f"{result['requests_per_s']:7.0f} req/s  p50 {result['p50_ms']:.2f} "
                        f"p99 {result['p99_ms']:.2f} ms  others {result['cpu']['others_s']:.1f} s",
                        flush=True,
                    )
        memory_after = {name: memory(server.pid) for name, server in servers.items()}
    table: dict = {}
    for route in bodies:
        used, quiet = clean_rounds([p for p in phases if p["route"] == route], args.clean_others_s)
        table[route] = {"rounds_used": used, "only_quiet_rounds": quiet}
        for variant in VARIANTS:
            mine = [
                p
                for p in phases
                if p["route"] == route and p["variant"] == variant and p["round"] in used
            ]
            table[route][variant] = summary(mine)
            if variant.startswith("C_"):
                continue
            ratios = []
            for round_ in used:
                this, base_ = (
                    next(
                        p
                        for p in phases
                        if (p["route"], p["variant"], p["round"]) == (route, v, round_)
                    )
                    for v in (variant, "C_plain_before_collections")
                )
                ratios.append(this["requests_per_s"] / base_["requests_per_s"])
            table[route][variant] |= {
                "ratio_vs_C_per_round": ratios,
                "ratio_vs_C_median": float(np.median(ratios)),
                "ratio_vs_C_min": min(ratios),
                "ratio_vs_C_max": max(ratios),
            }
    return {
        "base_code": base_code,
        "references": args.overhead_references,
        "start_s": {name: server.start_s for name, server in servers.items()},
        "memory_after": memory_after,
        "summary": table,
        "phases": phases,
    }


# -- 2. layouts ------------------------------------------------------------------------------
def layouts(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each layout's collections as {name, start, stop} rows of the vectors."""
    n, c = args.references, args.collections
    assert n % c == 0, "--references must be a multiple of --collections"
    size = n // c
    return {
        "one": [{"name": "all", "start": 0, "stop": n}],
        "many": [{"name": f"c{i}", "start": i * size, "stop": (i + 1) * size} for i in range(c)],
    }


def index_sources(log: Path) -> dict:
    """How the indexes were made at start-up, from the server's INFO log."""
    messages = []
    for line in log.read_text().splitlines():
        try:
            messages.append(json.loads(line).get("message", ""))
        except json.JSONDecodeError:
            continue
    return {
        "indexes_from_segment": sum(m.startswith("mapped index segment") for m in messages),
        "indexes_built": sum(m.startswith("built index from the store") for m in messages),
        "segments_unusable": sum(
            m.startswith("index segment") and "not used" in m for m in messages
        ),
    }


def start_record(server: Server, segments_before: int, stop_s: float) -> dict:
    ready = server.ready
    return {
        "start_s": server.start_s,
        "segments_before": segments_before,
        **{f"{k}_at_ready": v for k, v in server.memory_at_ready.items()},
        "index_mib": sum(c["index_memory_bytes"] for c in ready["collections"]) / 2**20,
        "indexes": sorted({c["index"] for c in ready["collections"] if c["references"]}),
        "stop_s": stop_s,
    }


def bench_layouts(args: argparse.Namespace, manifest: dict, scratch: Path, current: Path) -> dict:
    plan = layouts(args)
    vectors = scratch / "layout-vectors.npy"
    np.save(vectors, clustered_vectors(args.references, manifest["embedding_dim"]))
    data = {name: scratch / f"layout-{name}" for name in plan}
    fills = {}
    for name, parts in plan.items():
        data[name].mkdir()
        fills[name] = fill(current, data[name], vectors, parts, manifest)
        print(f"filled {name}: {fills[name]:.1f} s", flush=True)

    def check(server: Server, name: str) -> None:
        held = {c["name"]: c["references"] for c in server.ready["collections"]}
        wanted = {p["name"]: p["stop"] - p["start"] for p in plan[name]} | {"default": 0}
        assert held == wanted, (held, wanted)

    starts: dict[str, dict[str, list[dict]]] = {name: {"cold": [], "warm": []} for name in plan}
    for repeat in range(args.starts):
        for kind in ("cold", "warm"):
            for name in rotated(list(plan), repeat):
                segments = list(data[name].glob("segments/*/*/0*"))
                if kind == "cold":
                    shutil.rmtree(data[name] / "segments", ignore_errors=True)
                    segments = []
                log = scratch / f"start-{name}-{kind}-{repeat}.log"
                server = Server(current, args.model_dir, data[name], log=log)
                try:
                    check(server, name)
                finally:
                    stop_s = server.stop()
                record = start_record(server, len(segments), stop_s) | index_sources(log)
                starts[name][kind].append(record)
                print(
                    f"{kind} start, {name}: {record['start_s']:.2f} s, RSS "
                    f"{record['rss_mib_at_ready']:.0f} MiB, PSS {record['pss_mib_at_ready']:.0f} "
                    f"MiB, anonymous {record['anonymous_mib_at_ready']:.0f} MiB; indexes: "
                    f"{record['indexes_from_segment']} from segments, "
                    f"{record['indexes_built']} built",
                    flush=True,
                )

    # searches: both layouts served at once (warm), interleaved
    servers: dict[str, Server] = {}
    try:
        for name in plan:
            servers[name] = Server(current, args.model_dir, data[name])
        pids = {name: server.pid for name, server in servers.items()}
        queries = [
            s.tolist() for s in signals(manifest, args.query_signals, np.random.default_rng(1))
        ]
        requests = {}
        for name, parts in plan.items():
            requests[name] = [  # every collection, every query signal, in turn
                (
                    f"/collections/{parts[i % len(parts)]['name']}/search",
                    {"signals": [queries[i % len(queries)]], "k": 5},
                )
                for i in range(max(len(parts), len(queries)))
            ]
            for part in parts:  # each collection's calibration fitted before the measurement
                search_once(servers[name].url, f"/collections/{part['name']}/search", queries[0])

        def phase(name: str, seconds: int, connections: int) -> dict:
            measured = {f"{name}_server": pids[name]}
            measured |= {f"idle_{n}_server": p for n, p in pids.items() if n != name}
            return wrk(servers[name].url, requests[name], seconds, connections, measured)

        if args.warmup > 0:
            for name in plan:
                phase(name, args.warmup, max(args.search_connections))
        phases = []
        for round_ in range(args.search_rounds):
            for connections in args.search_connections:
                for name in rotated(list(plan), round_):
                    result = phase(name, args.search_duration, connections)
                    phases.append(
                        {"round": round_, "layout": name, "connections": connections, **result}
                    )
                    print(
                        f"round {round_} search {name:4} c{connections:<3} "
                        f"{result['requests_per_s']:7.0f} req/s  p50 {result['p50_ms']:.2f} "
                        f"p99 {result['p99_ms']:.2f} ms  others {result['cpu']['others_s']:.1f} s",
                        flush=True,
                    )
        after = {name: memory(server.pid) for name, server in servers.items()}
        served = {name: server.start_s for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    result = {}
    for name, parts in plan.items():
        result[name] = {
            "collections": [p["name"] for p in parts],
            "references_each": parts[0]["stop"] - parts[0]["start"],
            "fill_s": fills[name],
            "raw_vectors_mib": args.references * manifest["embedding_dim"] * 4 / 2**20,
            "starts": starts[name],
            "start_s_median": {
                kind: float(np.median([r["start_s"] for r in runs]))
                for kind, runs in starts[name].items()
            },
            "search_server_start_s": served[name],
            "memory_after_searches": after[name],
            "search": {},
        }
        for c in args.search_connections:
            same = [p for p in phases if p["connections"] == c]
            used, quiet = clean_rounds(same, args.clean_others_s)
            mine = [p for p in same if p["layout"] == name and p["round"] in used]
            result[name]["search"][str(c)] = summary(mine) | {
                "rounds_used": used,
                "only_quiet_rounds": quiet,
            }
    return {"layouts": result, "phases": phases}


def code_state(root: Path) -> dict:
    """The commit checked out in ``root`` and its uncommitted changes to the served code."""

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *command], capture_output=True, text=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "app", "model").splitlines(),
    }


@contextlib.contextmanager
def checkout(commit: str | None) -> Iterator[tuple[Path, dict]]:
    """The code to serve and its state: a detached git worktree of ``commit`` in a temporary
    directory, removed (``git worktree remove --force``) at the end; None: this working tree."""
    if commit is None:
        yield ROOT, {"tree": "working tree", **code_state(ROOT)}
        return
    parent = Path(tempfile.mkdtemp(prefix="hsn-collections-bench-"))
    path = parent / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), commit],
        check=True,
    )
    try:
        yield path, {"tree": f"worktree of {commit}", **code_state(path)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)])
        shutil.rmtree(parent, ignore_errors=True)


# -- report ----------------------------------------------------------------------------------
def report(run: dict) -> str:
    lines = []
    if "overhead" in run:
        o = run["overhead"]
        lines += [
            f"Overhead ({o['references']:,} references, {run['settings']['connections']} "
            f"connections; medians of the rounds "
            + "; ".join(
                f"/{route}: {len(t['rounds_used'])} of {run['settings']['rounds']}"
                + (" quiet" if t["only_quiet_rounds"] else ", none quiet")
                for route, t in o["summary"].items()
            )
            + "):",
            "",
            "| route | variant | requests/s | p50 ms | p99 ms | ÷ before collections "
            "(median, min–max of rounds) |",
            "|---|---|---:|---:|---:|---|",
        ]
        for route, variants in o["summary"].items():
            for variant, s in variants.items():
                if variant in ("rounds_used", "only_quiet_rounds"):
                    continue
                ratio = (
                    f"{s['ratio_vs_C_median']:.3f} ({s['ratio_vs_C_min']:.3f}–"
                    f"{s['ratio_vs_C_max']:.3f})"
                    if "ratio_vs_C_median" in s
                    else "1"
                )
                lines.append(
                    f"| /{route} | {variant} | {s['requests_per_s_median']:,.0f} "
                    f"| {s['p50_ms_median']:.2f} | {s['p99_ms_median']:.2f} | {ratio} |"
                )
        lines.append("")
    if "layouts" in run:
        lay = run["layouts"]["layouts"]
        connections = run["settings"]["search_connections"]

        def median(records: list[dict], key: str) -> float:
            return float(np.median([r[key] for r in records]))

        lines += [
            "Layouts, start-up (medians of the starts) and memory (MiB, RSS / PSS / anonymous):",
            "",
            "| layout | cold start s | warm start s | at ready, cold | at ready, warm "
            "| after searches | index MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in lay.values():
            cold, warm = r["starts"]["cold"], r["starts"]["warm"]
            at = [
                " / ".join(
                    f"{median(runs, f'{k}_mib_at_ready'):.0f}" for k in ("rss", "pss", "anonymous")
                )
                for runs in (cold, warm)
            ]
            m = r["memory_after_searches"]
            lines.append(
                f"| {len(r['collections'])} × {r['references_each']:,} "
                f"| {r['start_s_median']['cold']:.2f} | {r['start_s_median']['warm']:.2f} "
                f"| {at[0]} | {at[1]} "
                f"| {m['rss_mib']:.0f} / {m['pss_mib']:.0f} / {m['anonymous_mib']:.0f} "
                f"| {warm[0]['index_mib']:.1f} |"
            )
        lines += [
            "",
            "Layouts, /search (one signal, k = 5; medians of the rounds, "
            + "; ".join(
                f"{c} connection(s): {len(s['rounds_used'])} of {run['settings']['search_rounds']}"
                + (" quiet" if s["only_quiet_rounds"] else ", none quiet")
                for c, s in next(iter(lay.values()))["search"].items()
            )
            + "):",
            "",
            "| layout | "
            + " | ".join(f"{c} connection(s): req/s, p50 / p99 ms" for c in connections)
            + " |",
            "|---|" + "---:|" * len(connections),
        ]
        for r in lay.values():
            searches = " | ".join(
                f"{s['requests_per_s_median']:,.0f}, {s['p50_ms_median']:.2f} / "
                f"{s['p99_ms_median']:.2f}"
                for s in r["search"].values()
            )
            lines.append(f"| {len(r['collections'])} × {r['references_each']:,} | {searches} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, default=ROOT / "models" / "default", help="the served model"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["overhead", "layouts"],
        default=["overhead", "layouts"],
        help="which parts to run (default both)",
    )
    parser.add_argument(
        "--current-commit",
        help="serve this commit as the current code (checked out into a temporary git "
        "worktree, e.g. HEAD: steady while the working tree changes); default: this working tree",
    )
    parser.add_argument(
        "--base-commit",
        default="702f275",
        help="the commit to compare with in part 1: the last one before collections",
    )
    parser.add_argument(
        "--overhead-references",
        type=int,
        default=1000,
        help="references /search runs against in part 1",
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds in part 1")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk phase, part 1")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, part 1")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of wrk per variant first (both parts)"
    )
    parser.add_argument("--references", type=int, default=100_000, help="references in all, part 2")
    parser.add_argument(
        "--collections", type=int, default=10, help="collections they are split into, part 2"
    )
    parser.add_argument(
        "--starts", type=int, default=2, help="cold and warm starts per layout, part 2"
    )
    parser.add_argument(
        "--search-rounds", type=int, default=3, help="interleaved search rounds, part 2"
    )
    parser.add_argument(
        "--search-duration", type=int, default=5, help="seconds per wrk phase, part 2"
    )
    parser.add_argument(
        "--search-connections",
        type=int,
        nargs="+",
        default=[1, 16],
        help="wrk connections of the search phases, part 2 (1: a lone client's latency)",
    )
    parser.add_argument(
        "--clean-others-s",
        type=float,
        default=0.5,
        help="a round whose phases saw more CPU seconds of other work than this (any phase) is "
        "kept in the JSON but left out of the medians and ratios, unless no round was that quiet",
    )
    parser.add_argument(
        "--query-signals", type=int, default=8, help="distinct query signals, part 2"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "collections.json",
        help="where the results JSON goes",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    args.model_dir = args.model_dir.resolve()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_before": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_dir", "out")}
        | {
            "wrk_threads": 2,
            "k": 5,
            "model_version": manifest["model_version"],
            "embedding_dim": manifest["embedding_dim"],
            "signal_shape": [manifest["in_channels"], manifest["trained_length"]],
        },
    }
    began = time.perf_counter()
    with (
        checkout(args.current_commit) as (current, run["current_code"]),
        tempfile.TemporaryDirectory(prefix="hsn-collections-bench-") as scratch,
    ):
        if "overhead" in args.only:
            run["overhead"] = bench_overhead(args, manifest, Path(scratch), current)
        if "layouts" in args.only:
            run["layouts"] = bench_layouts(args, manifest, Path(scratch), current)
        if args.current_commit is None:  # the working tree may have changed meanwhile
            run["current_code_at_end"] = code_state(ROOT)
    run["seconds"] = time.perf_counter() - began
    run["load_average_after"] = os.getloadavg()
    print(report(run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
