"""The benchmark suite: model runtimes, the service end to end, dynamic batching, search, training.

    python benchmarks/bench.py            # quick (a few minutes): make bench
    python benchmarks/bench.py --full     # larger sizes and longer runs: make bench-full

Prints one table per section and writes every number to benchmarks/results/bench.json (and
plots as PNG). Ratios inside one run are what to compare across machines, not absolute times.
The service runs in its own process on loopback; the load generator is this process.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "cache"  # generated inputs worth keeping between runs
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402
import uvloop  # noqa: E402
from tqdm import tqdm  # noqa: E402

from app.index import VectorIndex, index_of  # noqa: E402
from app.index_policy import IndexPolicy  # noqa: E402
from app.labels import IndexRows  # noqa: E402
from app.onnx_engine import derive_session  # noqa: E402
from app.segments import BuildParameters  # noqa: E402
from model import HierarchicalSignalNet, ModelConfig  # noqa: E402
from training.export import load_export  # noqa: E402

faiss.cvar.distance_compute_blas_threshold = 20


def timed(fn, repeat: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")


# -- 1. model runtimes ------------------------------------------------------------------------
def bench_model(model_dir: Path, full: bool) -> dict:
    scripted, manifest = load_export(model_dir)
    eager = HierarchicalSignalNet(ModelConfig.from_dict(manifest["model_config"])).eval()
    eager.load_state_dict(scripted.state_dict())
    session = derive_session(scripted, manifest, threads=1)
    channels = manifest["in_channels"]
    lengths = [manifest["trained_length"], 2 * manifest["trained_length"]]
    results, rows = [], []
    for length in lengths:
        for batch in (1, 8, 64):
            x = torch.randn(batch, channels, length)
            repeat = (60 if batch == 1 else 12) * (3 if full else 1)
            with torch.inference_mode():
                ref = scripted.embed_and_keypoints(x)[0].numpy()
                runs = {
                    "eager": timed(lambda x=x: eager.embed_and_keypoints(x), repeat),
                    "torchscript": timed(lambda x=x: scripted.embed_and_keypoints(x), repeat),
                }
            xn = x.numpy()
            runs["onnx"] = timed(lambda xn=xn: session.run(None, {"x": xn}), repeat)
            emb = session.run(None, {"x": xn})[0]
            cosine = float(np.min(np.sum(emb * ref, axis=1)))
            medians = {k: float(np.median(v)) for k, v in runs.items()}
            entry = {
                "length": length,
                "batch": batch,
                "cosine_min_onnx_vs_torchscript": cosine,
                **{f"{k}_ms": v * 1000 for k, v in medians.items()},
                **{f"{k}_signals_per_s": batch / v for k, v in medians.items()},
            }
            results.append(entry)
            rows.append(
                [
                    length,
                    batch,
                    medians["eager"] * 1000,
                    medians["torchscript"] * 1000,
                    medians["onnx"] * 1000,
                    medians["onnx"] / medians["torchscript"],
                    batch / medians["onnx"],
                    cosine,
                ]
            )
    table(
        "Model runtimes (one thread, median ms per call)",
        [
            "L",
            "B",
            "eager ms",
            "TorchScript ms",
            "ONNX ms",
            "ONNX / TorchScript",
            "ONNX signals/s",
            "min cosine ONNX vs TS",
        ],
        rows,
    )
    return {"runtimes": results}


# -- 2 and 3. the service ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, model_dir: Path, **env: str) -> None:
        self.data = tempfile.TemporaryDirectory()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        environment = {
            **os.environ,
            "HSN_MODEL_DIR": str(model_dir),
            "HSN_DATA_DIR": env.pop("HSN_DATA_DIR", self.data.name),
            "HSN_PORT": str(port),
            "HSN_LOG_LEVEL": "WARNING",
            **env,
        }
        self.process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=environment)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("service did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.data.cleanup()


def npy_bytes(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


async def drive(url: str, route: str, make_body, concurrency: int, seconds: float):
    """``concurrency`` clients, one keep-alive connection each, sending back to back for
    ``seconds``: latencies, elapsed seconds and the count of non-200 answers.

    The requests are fixed bytes written straight to the socket and the answers read by their
    Content-Length: a general HTTP client (httpx) spent more CPU per request than the server
    did, on the same two cores, and so measured itself."""
    host, port = url.removeprefix("http://").split(":")
    content, headers = make_body()
    head = f"POST {route} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(content)}\r\n"
    request = (
        head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    ).encode() + content
    latencies: list[float] = []
    errors = 0
    until = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = answer.lower().index(b"content-length:") + len(b"content-length:")
            await reader.readexactly(int(answer[length : answer.index(b"\r\n", length)]))
            latencies.append(time.perf_counter() - started)
            errors += not answer.startswith(b"HTTP/1.1 200")
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.monotonic() - started, errors


def body_maker(x: np.ndarray, kind: str):
    if kind == "npy":
        content = npy_bytes(x)
        return lambda: (content, {"content-type": "application/x-npy"})
    import orjson

    content = orjson.dumps({"signals": x[:, 0].tolist() if x.shape[1] == 1 else x.tolist()})
    return lambda: (content, {"content-type": "application/json"})


def in_process_throughput(model_dir: Path, x: np.ndarray, engine: str) -> float:
    scripted, manifest = load_export(model_dir)
    if engine == "onnx":
        session = derive_session(scripted, manifest, threads=1)
        times = timed(lambda: session.run(None, {"x": x}), 10)
    else:
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            times = timed(lambda: scripted.embed_and_keypoints(xt), 10)
    return len(x) / float(np.median(times))


def bench_service(model_dir: Path, full: bool) -> dict:
    _, manifest = load_export(model_dir)
    length, channels = manifest["trained_length"], manifest["in_channels"]
    rng = np.random.default_rng(0)
    seconds = 20.0 if full else 6.0
    results, rows = [], []
    inprocess = {}
    service = Service(model_dir)
    try:
        for batch in (1, 64):
            x = rng.normal(size=(batch, channels, length)).astype(np.float32)
            inprocess[batch] = {
                e: in_process_throughput(model_dir, x, e) for e in ("torchscript", "onnx")
            }
            for kind in ("json", "npy"):
                for concurrency in (1, 8, 32):
                    lat, elapsed, errors = uvloop.run(
                        drive(service.url, "/embed", body_maker(x, kind), concurrency, seconds)
                    )
                    throughput = len(lat) * batch / elapsed
                    p50, p99 = np.percentile(lat, [50, 99]) * 1000
                    entry = {
                        "batch": batch,
                        "body": kind,
                        "concurrency": concurrency,
                        "signals_per_s": throughput,
                        "requests_per_s": len(lat) / elapsed,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "errors": errors,
                        "ratio_to_in_process_torchscript": throughput
                        / inprocess[batch]["torchscript"],
                        "ratio_to_in_process_onnx": throughput / inprocess[batch]["onnx"],
                    }
                    results.append(entry)
                    rows.append(
                        [
                            batch,
                            kind,
                            concurrency,
                            throughput,
                            p50,
                            p99,
                            entry["ratio_to_in_process_torchscript"],
                            entry["ratio_to_in_process_onnx"],
                            errors,
                        ]
                    )
    finally:
        service.close()
    table(
        "Service /embed over loopback (server: ONNX Runtime, one inference thread)",
        [
            "B",
            "body",
            "clients",
            "signals/s",
            "p50 ms",
            "p99 ms",
            "÷ in-process TorchScript",
            "÷ in-process ONNX",
            "errors",
        ],
        rows,
    )
    print(
        "\nin-process signals/s, same run: "
        + json.dumps({b: {k: round(v, 1) for k, v in d.items()} for b, d in inprocess.items()})
    )
    return {"service": results, "in_process_signals_per_s": inprocess}


def bench_batching(model_dir: Path, full: bool) -> dict:
    """32 single-signal clients against the service with dynamic batching on and off, for
    both engines: batching can only save model time, so what it buys depends on how much of a
    request the model is."""
    _, manifest = load_export(model_dir)
    x = (
        np.random.default_rng(1)
        .normal(size=(1, manifest["in_channels"], manifest["trained_length"]))
        .astype(np.float32)
    )
    seconds = 20.0 if full else 6.0
    results, rows, speedups = {}, [], {}
    for engine in ("onnx", "torchscript"):
        for label, enabled in (("on", "true"), ("off", "false")):
            service = Service(model_dir, HSN_ENGINE=engine, HSN_DYNAMIC_BATCHING=enabled)
            try:
                single, _, _ = uvloop.run(
                    drive(service.url, "/embed", body_maker(x, "npy"), 1, seconds / 2)
                )
                lat, elapsed, errors = uvloop.run(
                    drive(service.url, "/embed", body_maker(x, "npy"), 32, seconds)
                )
            finally:
                service.close()
            entry = {
                "requests_per_s": len(lat) / elapsed,
                "p50_ms": float(np.percentile(lat, 50) * 1000),
                "p99_ms": float(np.percentile(lat, 99) * 1000),
                "single_request_p50_ms": float(np.percentile(single, 50) * 1000),
                "errors": errors,
            }
            results[f"{engine}_{label}"] = entry
            rows.append(
                [
                    engine,
                    label,
                    entry["requests_per_s"],
                    entry["p50_ms"],
                    entry["p99_ms"],
                    entry["single_request_p50_ms"],
                    entry["p99_ms"] / entry["single_request_p50_ms"],
                    errors,
                ]
            )
        speedups[engine] = (
            results[f"{engine}_on"]["requests_per_s"] / results[f"{engine}_off"]["requests_per_s"]
        )
    table(
        "Dynamic batching, 32 concurrent single-signal clients (npy bodies)",
        [
            "engine",
            "batching",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "one client alone p50 ms",
            "p99 ÷ single",
            "errors",
        ],
        rows,
    )
    ratios = {engine: round(ratio, 2) for engine, ratio in speedups.items()}
    print(f"\nbatching on ÷ off, requests/s: {json.dumps(ratios)}")
    return {"batching": results, "batching_speedup": speedups}


# -- 4. search --------------------------------------------------------------------------------
def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Clustered unit vectors, like embeddings of elements: harder for ANN than uniform noise."""
    centres = rng.normal(size=(max(n // 50, 10), dim)).astype(np.float32)
    data = centres[rng.integers(0, len(centres), n)]
    data += 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    faiss.normalize_L2(data)
    return data


def real_embeddings(model_dir: Path, n: int) -> np.ndarray:
    """``n`` embeddings by the served model of synthetic signals of many elements (each about
    36 signals over 2 to 4 sessions), made once per model and size and cached beside the
    results: a million take a few minutes."""
    from training.synthetic import SynthConfig, generate

    scripted, manifest = load_export(model_dir)
    cache = CACHE / f"embeddings-{manifest['model_version']}-{n}.npy"
    if cache.is_file():
        return np.load(cache)
    session = derive_session(scripted, manifest, threads=os.cpu_count() or 1)
    parts, done, chunk = [], 0, 0
    bar = tqdm(total=n, desc="embedding synthetic signals", unit="signal", disable=None)
    while done < n:
        data = generate(
            SynthConfig(
                elements=500,
                length=manifest["trained_length"],
                channels=manifest["in_channels"],
                seed=1000 + chunk,
            )
        )
        for start in range(0, len(data.signals), 256):
            parts.append(session.run(None, {"x": data.signals[start : start + 256]})[0])
        done += len(data.signals)
        chunk += 1
        bar.update(len(data.signals))
    bar.close()
    embeddings = np.ascontiguousarray(np.concatenate(parts)[:n], dtype=np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    return embeddings


def search_latencies(index: VectorIndex, queries: np.ndarray) -> list[float]:
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], 10)
        latencies.append(time.perf_counter() - started)
    return latencies


def bench_search(model_dir: Path, full: bool) -> dict:
    """Each index type as the service builds it (``VectorIndex``): build time, single-query
    latency and recall@10 against exact search, on held-out queries; IVF and HNSW also at other
    search breadths, for the recall-vs-speed curve."""
    rng = np.random.default_rng(2)
    sizes = [10_000, 100_000] + ([1_000_000] if full else [])
    datasets = [("synthetic", n) for n in sizes] + [("real", 100_000)]
    if full:
        datasets.append(("real", 1_000_000))
    breadths = {
        "ivf": [4, 8, 16, 32, 64, 128],
        "ivfpq": [4, 8, 16, 32, 64, 128],
        "hnsw": [16, 32, 64, 128, 256],
    }
    rows, results = [], []
    for source, n in datasets:
        dim = 128
        if source == "synthetic":
            data = synthetic_vectors(n + 500, dim, rng)
        else:
            data = real_embeddings(model_dir, n + 500)
            dim = data.shape[1]
        queries, data = data[:500], data[500:]  # held out: never in the index
        keys = np.arange(n, dtype=np.int64)
        everything = IndexRows(keys, [str(k) for k in range(n)], ["e"] * n, ["s"] * n, data)
        truth = None
        for kind in ("flat", "ivf", "ivfpq", "hnsw"):
            if kind == "hnsw" and n > 100_000 and not full:
                continue
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:  # its files stay mapped once removed
                index = index_of(everything, IndexPolicy(kind), Path(folder))
            build = time.perf_counter() - started
            size_mib = (index.memory_bytes() + index.base.backend.mapped_bytes()) / 2**20
            if truth is None:  # flat comes first: exact
                truth = np.array([[nb.key for nb in row] for row in index.search(queries, 10)])
            backend = index.base.backend
            params = BuildParameters(dim)
            default_breadth = {"ivf": params.ivf_nprobe, "ivfpq": params.ivf_nprobe}.get(
                kind, params.ef_search if kind == "hnsw" else None
            )
            for breadth in breadths.get(kind, [None]):
                if breadth is not None:
                    backend.set_breadth(breadth)
                latencies = search_latencies(index, queries[:300])
                found = [[nb.key for nb in row] for row in index.search(queries, 10)]
                recall = float(
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
                )
                setting = {
                    "ivf": f"nprobe {breadth}/{getattr(backend, 'lists', 0)}",
                    "ivfpq": f"nprobe {breadth}/{getattr(backend, 'lists', 0)}, rescored",
                    "hnsw": f"M 32, efSearch {breadth}",
                }.get(kind, "exact")
                entry = {
                    "vectors": source,
                    "n": n,
                    "index": kind,
                    "setting": setting,
                    "breadth": breadth,
                    "service_default": breadth == default_breadth,
                    "build_s": build,
                    "index_mib": size_mib,
                    "qps_single": 1 / float(np.median(latencies)),
                    "p50_ms": float(np.percentile(latencies, 50) * 1000),
                    "p99_ms": float(np.percentile(latencies, 99) * 1000),
                    "recall_at_10": recall,
                }
                results.append(entry)
                if entry["service_default"] or full:
                    rows.append(
                        [
                            source,
                            n,
                            kind,
                            setting,
                            build,
                            size_mib,
                            entry["qps_single"],
                            entry["p99_ms"],
                            recall,
                        ]
                    )
            del index
    table(
        "Search, one query at a time through the service's index, one thread (d = 128)",
        [
            "vectors",
            "references",
            "index",
            "setting",
            "build s",
            "index MiB",
            "queries/s",
            "p99 ms",
            "recall@10",
        ],
        rows,
    )
    return {"search": results}


# -- 5. start-up with many stored references -----------------------------------------------
def fill_store(data_dir: Path, n: int, manifest: dict, first: int = 0) -> None:
    """n references (ids from r<first>) written straight into the service's database, embedded
    by 'this' model; each write goes to the change log as the service's own would."""
    from app.database import SqliteDatabase
    from app.store import NewReference, ReferenceStore

    store = ReferenceStore(SqliteDatabase(data_dir / "references.sqlite3"))
    store.migrate()
    rng = np.random.default_rng(3 + first)
    dim, length = manifest["embedding_dim"], manifest["trained_length"]
    signal = np.zeros((manifest["in_channels"], length), dtype=np.float32)
    for start in range(first, first + n, 10_000):
        count = min(10_000, first + n - start)
        vectors = rng.normal(size=(count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(
            [
                NewReference(
                    f"r{start + i}",
                    f"e{(start + i) % 1000}",
                    f"s{(start + i) % 5000}",
                    {},
                    signal,
                    vectors[i],
                )
                for i in range(count)
            ],
            manifest["model_version"],
        )
    store.close()


REPLAYED = 10_000  # change-log entries a restarted process replays after its segment


def bench_startup(model_dir: Path, full: bool) -> dict:
    import psutil

    _, manifest = load_export(model_dir)
    rows, results = [], []
    for n in [100_000] + ([1_000_000] if full else []):
        raw_mib = n * manifest["embedding_dim"] * 4 / 2**20
        with tempfile.TemporaryDirectory() as data_dir:
            fill_store(Path(data_dir), n, manifest)
            for start in ("build from SQLite", "segment", "segment + log replay"):
                if start == "build from SQLite":
                    shutil.rmtree(Path(data_dir) / "segments", ignore_errors=True)
                if start == "segment + log replay":  # written by others while it was down
                    fill_store(Path(data_dir), REPLAYED, manifest, first=n)
                began = time.perf_counter()
                service = Service(model_dir, HSN_DATA_DIR=data_dir)
                seconds = time.perf_counter() - began
                rss = psutil.Process(service.process.pid).memory_info().rss / 2**20
                ready = httpx.get(f"{service.url}/ready").json()
                service.process.terminate()
                service.process.wait(timeout=120)
                assert ready["references"] == n + (REPLAYED if "replay" in start else 0)
                results.append(
                    {
                        "references": ready["references"],
                        "start": start,
                        "seconds": seconds,
                        "rss_mib": rss,
                        "raw_vectors_mib": raw_mib,
                    }
                )
                rows.append([n, start, seconds, rss, raw_mib, rss / raw_mib])
    table(
        "Start-up with stored references (process start to /ready)",
        ["references", "index from", "seconds", "RSS MiB", "raw vectors MiB", "RSS ÷ raw vectors"],
        rows,
    )
    return {"startup": results}


# -- 6. training ------------------------------------------------------------------------------
def bench_training() -> dict:
    from training.loss import HierarchicalLoss

    net = HierarchicalSignalNet(ModelConfig(num_keypoints=4)).train()
    loss = HierarchicalLoss(stride=net.keypoint_stride)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(64, 1, 256)
    elements = torch.arange(16).repeat_interleave(4)
    sessions = torch.arange(32).repeat_interleave(2)
    positions = torch.randint(0, 256, (64, 4))

    def step() -> None:
        embeddings, logits = net(x)
        optimizer.zero_grad()
        loss(embeddings, logits, positions, elements, sessions).total.backward()
        optimizer.step()

    seconds = float(np.median(timed(step, 10)))
    table(
        "Training step (default network, B = 64 = P 16 x K 4, L = 256, one thread)",
        ["ms per step", "signals/s"],
        [[seconds * 1000, 64 / seconds]],
    )
    return {"training_signals_per_s": 64 / seconds}


def plot(results: dict, out: Path) -> list[Path]:
    """Throughput vs concurrency (service) and recall vs queries/s (search), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "service" in results:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, batch in zip(axes, (1, 64), strict=True):
            for body in ("npy", "json"):
                points = [
                    (e["concurrency"], e["signals_per_s"])
                    for e in results["service"]
                    if e["batch"] == batch and e["body"] == body
                ]
                ax.plot(*zip(*points, strict=True), marker="o", label=f"service, {body} bodies")
            for engine, value in results["in_process_signals_per_s"][str(batch)].items():
                ax.axhline(value, linestyle="--", color="grey" if engine == "onnx" else "black")
                ax.annotate(f"in-process {engine}", (1, value), fontsize=8, va="bottom")
            ax.set(title=f"/embed, B = {batch}", xlabel="concurrent clients", ylabel="signals/s")
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        written.append(out / "service_throughput.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if "search" in results:
        groups = sorted({(e["vectors"], e["n"]) for e in results["search"]})
        fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), squeeze=False)
        for ax, (source, n) in zip(axes[0], groups, strict=True):
            for kind, style in (("flat", "s"), ("ivf", "o-"), ("hnsw", "^-")):
                points = [
                    (e["qps_single"], e["recall_at_10"])
                    for e in results["search"]
                    if (e["vectors"], e["n"], e["index"]) == (source, n, kind)
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=kind)
            ax.set(title=f"{source} vectors, {n:,}", xlabel="queries/s (one thread)")
            ax.set(ylabel="recall@10", xscale="log")
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "search_recall_qps.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["model", "service", "batching", "search", "startup", "training"],
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    print(
        f"# Benchmarks {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or ''} "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {'full' if args.full else 'quick'}"
    )
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "full" if args.full else "quick",
        "cores": os.cpu_count(),
    }
    results: dict = {}
    sections = {
        "model": lambda: bench_model(args.model_dir, args.full),
        "service": lambda: bench_service(args.model_dir, args.full),
        "batching": lambda: bench_batching(args.model_dir, args.full),
        "search": lambda: bench_search(args.model_dir, args.full),
        "startup": lambda: bench_startup(args.model_dir, args.full),
        "training": bench_training,
    }
    for name in args.only:
        results.update(sections[name]())
        results[f"{name}_run"] = run
    # Sections run now replace their earlier figures; the others stay.
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    results = {**earlier, **json.loads(json.dumps(results))}  # JSON keys: strings throughout
    path.write_text(json.dumps(results, indent=2))
    for path in plot(results, args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
