"""Ten million references on one box: memory, recall, speed, writes during a build, start-up.

128-d unit vectors clustered like embeddings (elements of 50 references over 5 sessions: a centre
per element, an offset per session, noise per reference, as many_collections.py makes them, but
generated a chunk at a time so that 10^7 never sit in memory) are written straight into a SQLite
store with the store's own ``upsert`` (embedding 10^7 signals would be hours of model time);
each size's database is written once into --cache and reused. For each size and index type:

1. ``start``: the first start builds the large segment (its build time from the segment's
   meta.json); a restart maps it and replays the log (time to /ready).
2. ``memory``: proportional set size (PSS, /proc/PID/smaps_rollup) of one server after 20
   searches, then of it and a second server process joining the same data directory (a second
   worker of the machine, timed to /ready) after 20 searches each; the same for one and two
   servers with no references (subtracted in the report). Then the first again after the load.
3. ``quality``: recall@10 against exact search of --queries held-out queries (new noise around
   stored elements' centres and sessions' offsets), through the service's own index code
   (``VectorIndex`` over the segment the service built), exact search being a scan of the
   segment's float vectors.
4. ``speed``: p50/p99 of one client's /search (one signal, k = 10, sequential) and requests/s of
   --connections connections (wrk), through the service.
5. ``writes`` (the default index type only): p99 of one client's single-reference POST
   /references while the service is idle, then while it builds the next large segment (set off
   by --trigger references written straight into the store past the mutable segment's limit);
   how long a write made on one server takes to be found by a search on the other.
6. ``disk``: bytes a reference in the SQLite file, and in the segment folder beside it.

Today's float IVF comparison: the same measurements of --base-commit (checked out into a
temporary worktree) for the sizes in --base-sizes, where each process rebuilt its own copy.

    python benchmarks/ten_million.py --cache DIR --base-commit 02e9657
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from many_collections import Server, checkout, memory, wrk  # noqa: E402

PER_ELEMENT, PER_SESSION = 50, 10
WARM = 20  # searches each server answers before its memory is read
CHUNK = 10_000
SEED = 3


# -- data ------------------------------------------------------------------------------------
def _rows(rng_key: tuple, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(rng_key).normal(size=(n, dim)).astype(np.float32)


def centres(first: int, last: int, dim: int, per: int, tag: int) -> np.ndarray:
    """One vector per group in [first, last], each from its own seed (so any chunk regenerates
    the same ones)."""
    return np.stack([_rows((SEED, tag, g), 1, dim)[0] for g in range(first, last + 1)])


def chunk_vectors(start: int, stop: int, dim: int, noise_tag: int = 2) -> np.ndarray:
    index = np.arange(start, stop)
    elements, sessions = index // PER_ELEMENT, index // PER_SESSION
    c = centres(elements[0], elements[-1], dim, PER_ELEMENT, 0)[elements - elements[0]]
    o = 0.25 * centres(sessions[0], sessions[-1], dim, PER_SESSION, 1)[sessions - sessions[0]]
    data = c + o + 0.25 * _rows((SEED, noise_tag, start), stop - start, dim)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def queries(n: int, total: int, dim: int) -> np.ndarray:
    """Held-out queries: new noise around random stored references' element and session."""
    picks = np.random.default_rng(11).integers(0, total, n)
    out = [
        chunk_vectors(int(i), int(i) + 1, dim, noise_tag=1000 + j)[0] for j, i in enumerate(picks)
    ]
    return np.stack(out).astype(np.float32)


def fill(data_dir: Path, n: int, manifest: dict, first: int = 0) -> float:
    """Writes references first..first+n into the store; returns the seconds it took."""
    from app.database import SqliteDatabase
    from app.store import NewReference, ReferenceStore

    store = ReferenceStore(SqliteDatabase(data_dir / "references.sqlite3"))
    store.prepare()
    signal = np.zeros((manifest["in_channels"], 32), np.float32)
    began = time.perf_counter()
    for start in range(first, first + n, CHUNK):
        stop = min(start + CHUNK, first + n)
        vectors = chunk_vectors(start, stop, manifest["embedding_dim"])
        store.upsert(
            [
                NewReference(
                    f"r{i}", f"e{i // PER_ELEMENT}", f"s{i // PER_SESSION}", {}, signal,
                    vectors[i - start],
                )
                for i in range(start, stop)
            ],
            manifest["model_version"],
        )  # fmt: skip
        if (stop - first) % (20 * CHUNK) == 0:
            rate = (stop - first) / (time.perf_counter() - began)
            print(f"  filled {stop - first:,}/{n:,} ({rate:,.0f}/s)", flush=True)
    store.close()
    return time.perf_counter() - began


def database(cache: Path, n: int, manifest: dict) -> Path:
    """The cached store of ``n`` references (written the first time)."""
    folder = cache / f"refs-{n}"
    done = folder / "filled.json"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "references.sqlite3").unlink(missing_ok=True)
        print(f"writing {n:,} references into {folder}", flush=True)
        seconds = fill(folder, n, manifest)
        done.write_text(json.dumps({"references": n, "fill_s": seconds}))
    return folder


# -- measurements ----------------------------------------------------------------------------
def pss_mib(pid: int) -> float:
    return memory(pid)["pss_mib"]


def one_client(url: str, body: dict, n: int, path: str = "/search") -> dict:
    times = []
    with httpx.Client(timeout=120) as http:
        for _ in range(n):
            began = time.perf_counter()
            http.post(f"{url}{path}", json=body).raise_for_status()
            times.append(1000 * (time.perf_counter() - began))
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99) - 1]}


def signal_body(manifest: dict) -> list:
    rng = np.random.default_rng(0)
    return rng.normal(size=(manifest["in_channels"], manifest["trained_length"])).tolist()


def segment_path(data_dir: Path) -> Path | None:
    folders = sorted((data_dir / "segments").glob("*/*/0*"))
    return folders[-1] if folders else None


def recall(data_dir: Path, dim: int, n: int, count: int, k: int = 10) -> dict:
    """recall@k of the service's index code over the service's segment, against a scan of the
    segment's float vectors."""
    from app.index import VectorIndex
    from app.index_policy import IndexPolicy
    from app.segments import BuildParameters, Segment

    path = segment_path(data_dir)
    meta = json.loads((path / "meta.json").read_text())
    segment = Segment.open(path, meta["model_version"], meta["epoch"], BuildParameters(dim))
    index = VectorIndex(dim, IndexPolicy())
    index.adopt(segment, None)
    q = queries(count, n, dim)
    scores = np.full((count, k), -np.inf, np.float32)
    keys = np.zeros((count, k), np.int64)
    for start in range(0, len(segment), 1_000_000):  # exact: every vector, a block at a time
        block = np.asarray(segment.vectors[start : start + 1_000_000])
        sims = q @ block.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        both_s = np.concatenate([scores, np.take_along_axis(sims, top, 1)], axis=1)
        both_k = np.concatenate([keys, segment.keys[start + top]], axis=1)
        order = np.argsort(-both_s, axis=1)[:, :k]
        scores, keys = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_k, order, 1)
    index.search(q, k)  # pages in what the queries touch (the builder left it on disk only)
    began = time.perf_counter()
    found = index.search(q, k)
    per_query_ms = 1000 * (time.perf_counter() - began) / count
    hits = [
        len({h.key for h in row} & set(truth.tolist())) / k
        for row, truth in zip(found, keys, strict=True)
    ]
    return {"recall_at_10": float(np.mean(hits)), "index_ms_per_query": per_query_ms}


def writes_during_build(server: Server, data_dir: Path, manifest: dict, n: int, trigger: int):
    """p99 of single-reference writes, idle and while the next large segment is built."""
    rng = np.random.default_rng(5)

    def write_times(count: int, tag: str) -> list[float]:
        times = []
        with httpx.Client(timeout=120) as http:
            for i in range(count):
                ref = {
                    "id": f"w-{tag}-{i}", "element_id": "w", "session_id": tag,
                    "signal": rng.normal(size=(manifest["in_channels"], 64)).tolist(),
                }  # fmt: skip
                began = time.perf_counter()
                http.post(f"{server.url}/references", json={"references": [ref]}).raise_for_status()
                times.append(1000 * (time.perf_counter() - began))
        return times

    def p(times: list[float], q: float) -> float:
        return sorted(times)[max(0, int(len(times) * q) - 1)]

    idle = write_times(300, "idle")
    filler = threading.Thread(target=fill, args=(data_dir, trigger, manifest, n))
    filler.start()
    while True:  # until the service has started the build
        status = httpx.get(f"{server.url}/ready", timeout=30).json()["collections"][0]["segments"]
        if status["building"]:
            break
        time.sleep(0.2)
    filler.join()
    building, began = [], time.perf_counter()
    while status["building"]:
        building += write_times(50, f"b{len(building)}")
        status = httpx.get(f"{server.url}/ready", timeout=30).json()["collections"][0]["segments"]
    build_s = time.perf_counter() - began
    return {
        "idle_p50_ms": p(idle, 0.5), "idle_p99_ms": p(idle, 0.99),
        "building_p50_ms": p(building, 0.5), "building_p99_ms": p(building, 0.99),
        "writes_during_build": len(building), "build_seen_s": build_s,
        "p99_ratio": p(building, 0.99) / p(idle, 0.99),
    }  # fmt: skip


def visible_elsewhere(a: Server, b: Server, manifest: dict, tries: int = 20) -> dict:
    """ms from a write answered by ``a`` to a search on ``b`` finding it."""
    rng = np.random.default_rng(9)
    delays = []
    with httpx.Client(timeout=60) as http:
        for i in range(tries):
            signal = rng.normal(size=(manifest["in_channels"], 64)).tolist()
            ref = {"id": f"v{i}", "element_id": "v", "session_id": "v", "signal": signal}
            http.post(f"{a.url}/references", json={"references": [ref]}).raise_for_status()
            written = time.perf_counter()
            while True:
                hit = http.post(
                    f"{b.url}/search", json={"signals": [signal], "k": 1, "element_id": "v"}
                ).json()["results"][0]["neighbors"]
                if hit and hit[0]["id"] == f"v{i}":
                    break
                time.sleep(0.005)
            delays.append(1000 * (time.perf_counter() - written))
    return {"median_ms": statistics.median(delays), "max_ms": max(delays)}


def measure(code: Path, args, manifest: dict, n: int, env: dict, scratch: Path, tag: str):
    """Every measurement of one size and configuration on a copy of the cached store."""
    source = database(args.cache, n, manifest)
    data = scratch / f"{tag}-{n}"
    data.mkdir()
    copy = sqlite3.connect(source / "references.sqlite3")  # a consistent copy, WAL included
    target = sqlite3.connect(data / "references.sqlite3")
    copy.backup(target)
    copy.close()
    target.close()
    model = args.model_dir
    result: dict = {"references": n, "configuration": tag, "env": env}
    log = scratch / f"{tag}-{n}.log"
    first = Server(code, model, data, log=log, env=env, ready_limit_s=3600)
    result["first_start_s"] = first.start_s
    first.stop()
    path = segment_path(data)
    if path is not None:
        meta = json.loads((path / "meta.json").read_text())
        result["segment"] = {"kind": meta["kind"], "build_s": meta["build_seconds"]}
        result["disk_beside_store_bytes_per_ref"] = (
            sum(f.stat().st_size for f in path.iterdir()) / n
        )
    result["store_bytes_per_ref"] = (
        sum(f.stat().st_size for f in data.glob("references.sqlite3*")) / n
    )
    # log level WARNING from here: an INFO line a request would slow what is measured
    body = {"signals": [signal_body(manifest)], "k": 10}
    one = Server(code, model, data, env=env, ready_limit_s=3600)
    result["restart_s"] = one.start_s
    one_client(one.url, body, WARM)  # calibrations fitted: memory as it serves
    result["pss_one_mib"] = pss_mib(one.pid)
    two = Server(code, model, data, env=env, ready_limit_s=3600)
    result["second_worker_ready_s"] = two.start_s
    one_client(two.url, body, WARM)
    result["pss_two_mib"] = [pss_mib(one.pid), pss_mib(two.pid)]
    result["one_client"] = one_client(one.url, body, args.single_requests)
    load = wrk(
        one.url,
        [("/search", body)],
        args.seconds,
        args.connections,
        {"one": one.pid, "two": two.pid},
    )
    result["wrk"] = {k: load[k] for k in ("requests_per_s", "p50_ms", "p99_ms")}
    result["pss_one_after_load_mib"] = pss_mib(one.pid)
    if args.writes and tag == "current":
        result["visible_on_other_worker"] = visible_elsewhere(one, two, manifest)
        two.stop()
        result["writes"] = writes_during_build(one, data, manifest, n, args.trigger)
    else:
        two.stop()
    one.stop()
    if path is not None and tag == "current":
        result["quality"] = recall(data, manifest["embedding_dim"], n, args.queries)
    result["first_start_log"] = start_messages(log)
    shutil.rmtree(data)  # the copy goes; the cached store stays
    print(json.dumps(result), flush=True)
    return result


def start_messages(log: Path) -> list[str]:
    """What a server's INFO log says of its index at start-up."""
    words = ("segment", "index", "rebuilt", "snapshot", "embedding")
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            message = json.loads(line).get("message", "")
        except json.JSONDecodeError:
            continue
        if any(w in message for w in words) and not message.startswith(("GET", "POST")):
            out.append(message)
    return out[:20]


def empty_pss(code: Path, args, scratch: Path, tag: str) -> dict:
    """PSS of one server, then of two, on a data directory with no references, warmed as the
    measured ones are."""
    data = scratch / f"empty-{tag}"
    data.mkdir()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    body = {"signals": [signal_body(manifest)], "k": 10}
    one = Server(code, args.model_dir, data)
    one_client(one.url, body, WARM)
    alone = pss_mib(one.pid)
    two = Server(code, args.model_dir, data)
    one_client(two.url, body, WARM)
    both = [pss_mib(one.pid), pss_mib(two.pid)]
    two.stop()
    one.stop()
    return {"one_mib": alone, "two_mib": both}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="where the stores are kept")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--types", nargs="+", default=["auto"], help="HSN_INDEX_TYPE values")
    parser.add_argument(
        "--current-commit",
        default=None,
        help="serve this commit from a temporary worktree (steady while the tree changes)",
    )
    parser.add_argument("--base-commit", default=None, help="today's float IVF, per process")
    parser.add_argument("--base-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--single-requests", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--trigger", type=int, default=60_000, help="writes setting off a build")
    parser.add_argument("--no-writes", dest="writes", action="store_false")
    parser.add_argument("--fill-only", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ten_million.json")
    args = parser.parse_args()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    args.cache.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        database(args.cache, n, manifest)
    if args.fill_only:
        return 0
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or '?'}",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="hsn-ten-million-") as tmp:
        scratch = Path(tmp)
        with checkout(args.current_commit) as (current, state):
            run["current"] = state
            run["empty_pss_mib"] = {"current": empty_pss(current, args, scratch, "current")}
            for n in args.sizes:
                for kind in args.types:
                    env = {"HSN_INDEX_TYPE": kind}
                    run["results"].append(
                        measure(current, args, manifest, n, env, scratch, "current")
                    )
                    args.out.write_text(json.dumps(run, indent=1))
        if args.base_commit:
            with checkout(args.base_commit) as (base, state):
                run["base"] = state
                run["empty_pss_mib"]["base"] = empty_pss(base, args, scratch, "base")
                for n in args.base_sizes:
                    run["results"].append(measure(base, args, manifest, n, {}, scratch, "base"))
                    args.out.write_text(json.dumps(run, indent=1))
    args.out.write_text(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
