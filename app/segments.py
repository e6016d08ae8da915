"""A collection's large, immutable segment: built from the store, written once to a folder, and
memory-mapped by every process of the machine, so that N worker processes hold one copy.

A segment folder holds the FAISS index (its arrays mapped with ``IO_FLAG_MMAP_IFC``), the float
vectors in key order (the exact rescoring of a compressed index's shortlist, and exact searches
within a small filter), and the labels (keys, ids, element and session codes, with the positions
of each element's and session's references; the names sorted), all as raw arrays whose sizes
``meta.json`` records. The builder writes a hidden folder and renames it into place, so a folder
is seen whole or not at all; ``meta.json`` names the change-log entry the segment reflects, the
model and the database epoch. A folder that is truncated, of another model, database or format is
never opened: a process builds a new one instead.

One process at a time builds (an exclusive ``flock`` on ``build.lock``); the others map what it
publishes. The builder removes older folders once its own is published: a process still mapping
one keeps its pages (Linux frees them with the last mapping). A large background build runs in a
process of its own (:class:`BuildProcess`), so that the service's threads never wait for it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.ann import FlatBackend, HNSWBackend, IVFBackend, IVFPQBackend, VectorBackend
from app.index_policy import IndexKind
from app.labels import Codes, IndexRows, positions_in

log = logging.getLogger(__name__)

SEGMENT_FORMAT = 2  # bump when what a segment folder holds changes: older ones are rebuilt

# name -> dtype of each raw array of a segment
ARRAYS = {
    "keys": np.int64,
    "vectors": np.float32,
    "element_of": np.int32,
    "session_of": np.int32,
    "ids_bytes": np.uint8,
    "ids_ends": np.int64,
    "by_element": np.int32,
    "element_starts": np.int64,
    "by_session": np.int32,
    "session_starts": np.int64,
    "pairs": np.int64,  # (element code, session code, references) of every pair present
    # element and session names, sorted (a name's code is its rank), as the ids are stored
    "element_names_bytes": np.uint8,
    "element_names_ends": np.int64,
    "session_names_bytes": np.uint8,
    "session_names_ends": np.int64,
}


class SegmentUnusable(Exception):
    """A segment folder that must not be served (truncated, or of another model, database or
    format)."""


@dataclass(frozen=True)
class BuildParameters:
    dim: int
    ivf_nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 128


class PackedStrings:
    """Strings as one UTF-8 byte array and their end offsets, both mapped: the i-th string
    without a Python object for each (10^7 references have 10^6 session names: as a list and
    a dict, 170 MiB in each process)."""

    def __init__(self, data: np.ndarray, ends: np.ndarray) -> None:
        self.data, self.ends = data, ends

    def __len__(self) -> int:
        return len(self.ends)

    def at(self, positions: np.ndarray) -> list[str]:
        positions = np.asarray(positions, dtype=np.int64)
        ends = self.ends[positions]
        starts = np.where(positions > 0, self.ends[np.maximum(positions - 1, 0)], 0)
        data = self.data
        return [
            data[s:e].tobytes().decode()
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        ]

    def find(self, name: str) -> int | None:
        """The position of ``name`` in a table sorted by UTF-8 bytes (binary search)."""
        wanted, lo, hi = name.encode(), 0, len(self.ends)
        while lo < hi:
            mid = (lo + hi) // 2
            start = int(self.ends[mid - 1]) if mid else 0
            if self.data[start : int(self.ends[mid])].tobytes() < wanted:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.ends) and self.at(np.array([lo]))[0] == name:
            return lo
        return None


class Segment:
    """One published segment, mapped read-only. Thread-safe (nothing in it changes)."""

    def __init__(self, path: Path, meta: dict, backend: VectorBackend, arrays: dict) -> None:
        self.path, self.meta, self.backend = path, meta, backend
        self.seq: int = meta["seq"]
        self.keys: np.ndarray = arrays["keys"]
        self.vectors: np.ndarray = arrays["vectors"]
        self.element_of: np.ndarray = arrays["element_of"]
        self.session_of: np.ndarray = arrays["session_of"]
        self.ids = PackedStrings(arrays["ids_bytes"], arrays["ids_ends"])
        self._by_element, self._element_starts = arrays["by_element"], arrays["element_starts"]
        self._by_session, self._session_starts = arrays["by_session"], arrays["session_starts"]
        self.pairs: np.ndarray = arrays["pairs"]
        self.elements = PackedStrings(arrays["element_names_bytes"], arrays["element_names_ends"])
        self.sessions = PackedStrings(arrays["session_names_bytes"], arrays["session_names_ends"])
        self._arrays = list(arrays.values())

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def kind(self) -> str:
        return self.backend.kind

    def positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where ``keys`` sit, and which of them are here."""
        return positions_in(self.keys, keys)

    def keys_of_element(self, name: str) -> np.ndarray:
        """The element's keys, ascending."""
        return self._grouped(self.elements, self._by_element, self._element_starts, name)

    def keys_of_session(self, name: str) -> np.ndarray:
        return self._grouped(self.sessions, self._by_session, self._session_starts, name)

    def _grouped(self, names: PackedStrings, order: np.ndarray, starts: np.ndarray, name: str):
        code = names.find(name)
        if code is None:
            return self.keys[:0]
        return self.keys[np.sort(order[starts[code] : starts[code + 1]])]

    def disk_bytes(self) -> int:
        """Its files' sizes as written (the folder may be gone already: a newer segment was
        published, and this one is served until it is swapped in)."""
        return sum(self.meta["files"].values())

    def memory_bytes(self) -> int:
        """What this process holds of it beyond the mapped files: the index's own (an IVF
        index's centroids; a flat or HNSW index whole)."""
        return self.backend.memory_bytes()

    def mapped_bytes(self) -> int:
        """The files it maps (what of them is resident is the page cache's, shared)."""
        return self.backend.mapped_bytes() + sum(a.nbytes for a in self._arrays)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, model_version: str, epoch: int, params: BuildParameters) -> Segment:
        """Maps a published folder, or raises SegmentUnusable saying why not."""
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise SegmentUnusable(f"no readable meta.json ({exc})") from exc
        if meta.get("format") != SEGMENT_FORMAT:
            raise SegmentUnusable(
                f"format {meta.get('format')}, this service reads {SEGMENT_FORMAT}"
            )
        if meta.get("model_version") != model_version:
            raise SegmentUnusable(f"of model {meta.get('model_version')}, not {model_version}")
        if meta.get("epoch") != epoch:
            raise SegmentUnusable("of another database (a restore?)")
        for name, size in meta["files"].items():
            actual = (path / name).stat().st_size if (path / name).exists() else -1
            if actual != size:
                raise SegmentUnusable(f"{name} is {actual} bytes, {size} were written")
        n, dim = meta["references"], meta["dim"]
        if dim != params.dim:
            raise SegmentUnusable(f"vectors of {dim} dimensions, the model makes {params.dim}")
        arrays = {}
        for name, dtype in ARRAYS.items():
            shape = meta["shapes"][name]
            if np.prod(shape) == 0:
                arrays[name] = np.zeros(shape, dtype)
            else:
                array = np.memmap(path / name, dtype=dtype, mode="r", shape=tuple(shape))
                # a row where a row is asked for: without it the readahead around each page
                # fault (read_ahead_kb 8192 here) read 6 MiB for 100 rows instead of 400 KiB
                array._mmap.madvise(mmap.MADV_RANDOM)
                arrays[name] = array
        try:
            backend = VectorBackend.read(path / "index.faiss", params.ivf_nprobe, params.ef_search)
        except RuntimeError as exc:
            raise SegmentUnusable(f"index.faiss unreadable ({exc})") from exc
        if len(backend) != n or len(arrays["keys"]) != n:
            raise SegmentUnusable(f"{len(backend)} vectors in the index, {n} references")
        return cls(path, meta, backend, arrays)


class SegmentFolder:
    """Where one collection's segments of one model are published, built and removed: a folder
    named by the model version inside the collection's (beside the other versions it served)."""

    def __init__(self, root: Path, params: BuildParameters) -> None:
        self.root, self.params = root, params

    def published(self) -> list[Path]:
        """Published folders, newest (highest change-log entry) first."""
        if not self.root.is_dir():
            return []
        return sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.name,
            reverse=True,
        )

    def latest(self, model_version: str, epoch: int, newer_than: int = -1) -> Segment | None:
        """The newest usable segment past change ``newer_than``; unusable ones are logged and
        skipped (the next build removes them)."""
        for path in self.published():
            if _seq_of(path) <= newer_than:
                return None
            try:
                return Segment.open(path, model_version, epoch, self.params)
            except (SegmentUnusable, OSError) as exc:  # OSError: removed while opening
                log.warning("index segment %s not used: %s", path.name, exc)
        return None

    @contextmanager
    def build_lock(self, wait: bool) -> Iterator[bool]:
        """Holds the folder's build lock (whether it was got: not when ``wait`` is False and
        another process holds it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "build.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def build(
        self,
        kind: IndexKind,
        seq: int,
        n: int,
        chunks: Iterable[IndexRows],
        sample_of: Callable[[int], np.ndarray],
        model_version: str,
        epoch: int,
    ) -> Path:
        """Writes a segment of ``kind`` of ``chunks`` (about ``n`` references, ascending keys)
        reflecting change ``seq``, and publishes it. The caller holds the build lock. An index
        type that is trained asks ``sample_of(size)`` for that many stored vectors first."""
        started = time.perf_counter()
        for stale in self.root.glob(".building-*"):  # a build that died: nobody else builds
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            backend = self._empty(kind, n, sample_of)
            shapes, count = _write_rows(tmp, chunks, backend, self.params.dim)
            backend.write(tmp / "index.faiss")
            meta = {
                "format": SEGMENT_FORMAT,
                "seq": seq,
                "model_version": model_version,
                "epoch": epoch,
                "references": count,
                "dim": self.params.dim,
                "kind": backend.kind,
                "shapes": shapes,
                "built_at": time.time(),
                "build_seconds": round(time.perf_counter() - started, 3),
            }
            meta["files"] = {p.name: p.stat().st_size for p in tmp.iterdir()}
            (tmp / "meta.json").write_text(json.dumps(meta))
            for p in tmp.iterdir():
                _fsync(p)
            final = self.root / f"{seq:016d}-{uuid.uuid4().hex[:8]}"
            tmp.rename(final)
            _fsync(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.published():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def remove(self) -> None:
        """The collection's segments of every model version (it was deleted)."""
        shutil.rmtree(self.root.parent, ignore_errors=True)

    def forget(self, version: str) -> None:
        """The segments of another model version the collection served."""
        if version != self.root.name:
            shutil.rmtree(self.root.parent / version, ignore_errors=True)

    def _empty(
        self, kind: IndexKind, n: int, sample_of: Callable[[int], np.ndarray]
    ) -> VectorBackend:
        p = self.params
        if kind == "hnsw":
            return HNSWBackend.empty(p.dim, p.hnsw_m, p.ef_search)
        if kind in ("ivf", "ivfpq"):
            cls = IVFPQBackend if kind == "ivfpq" else IVFBackend
            return cls.trained(sample_of(cls.sample_size(n)), n, p.ivf_nprobe)
        return FlatBackend.empty(p.dim)


def _seq_of(path: Path) -> int:
    try:
        return int(path.name.split("-")[0])
    except ValueError:
        return -1


def _fsync(path: Path) -> None:
    """On disk, and out of the page cache: pages cached as they were written are large folios
    (2 MiB here), and a process mapping them maps a whole folio at each row it reads (100
    rescored queries mapped 110 MiB of a 150 MiB file; read back from disk with MADV_RANDOM,
    400 KiB)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if path.is_file():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _write_rows(
    folder: Path, chunks: Iterable[IndexRows], backend: VectorBackend, dim: int
) -> tuple[dict, int]:
    """Streams the rows into the raw arrays and the index; writes the groupings at the end.
    Returns each array's shape and the number of references."""
    elements, sessions = Codes(), Codes()
    element_of: list[np.ndarray] = []
    session_of: list[np.ndarray] = []
    count, id_bytes, last_key = 0, 0, -1
    files = {
        name: open(folder / name, "wb") for name in ("keys", "vectors", "ids_bytes", "ids_ends")
    }
    try:
        for chunk in chunks:
            keys = np.asarray(chunk.keys, dtype=np.int64)
            if not len(keys):
                continue
            if keys[0] <= last_key or (np.diff(keys) <= 0).any():
                raise ValueError("a segment's rows must come in ascending key order")
            last_key = int(keys[-1])
            vectors = np.ascontiguousarray(chunk.vectors, dtype=np.float32)
            encoded = [i.encode() for i in chunk.ids]
            ends = id_bytes + np.cumsum([len(b) for b in encoded], dtype=np.int64)
            id_bytes = int(ends[-1])
            files["keys"].write(keys.tobytes())
            files["vectors"].write(vectors.tobytes())
            files["ids_bytes"].write(b"".join(encoded))
            files["ids_ends"].write(ends.tobytes())
            element_of.append(np.array([elements.code(e) for e in chunk.element_ids], np.int32))
            session_of.append(np.array([sessions.code(s) for s in chunk.session_ids], np.int32))
            backend.add(keys, vectors)
            count += len(keys)
    finally:
        for f in files.values():
            f.close()
    e_of = np.concatenate(element_of) if element_of else np.zeros(0, np.int32)
    s_of = np.concatenate(session_of) if session_of else np.zeros(0, np.int32)
    element_names, e_of = _sorted_names(elements, e_of)
    session_names, s_of = _sorted_names(sessions, s_of)
    derived = {
        "element_of": e_of,
        "session_of": s_of,
        **_grouping("element", e_of, len(elements.names)),
        **_grouping("session", s_of, len(sessions.names)),
        "pairs": _pairs(e_of, s_of),
        **_packed("element_names", element_names),
        **_packed("session_names", session_names),
    }
    for name, array in derived.items():
        array.astype(ARRAYS[name]).tofile(folder / name)
    shapes = {name: list(array.shape) for name, array in derived.items()}
    shapes.update(keys=[count], vectors=[count, dim], ids_bytes=[id_bytes], ids_ends=[count])
    return shapes, count


def _sorted_names(codes: Codes, of: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The names sorted by their UTF-8 bytes, and ``of`` recoded to each name's rank."""
    encoded = [name.encode() for name in codes.names]
    order = sorted(range(len(encoded)), key=encoded.__getitem__)
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return [encoded[i] for i in order], rank[of] if len(of) else of


def _packed(name: str, encoded: list[bytes]) -> dict[str, np.ndarray]:
    return {
        f"{name}_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        f"{name}_ends": np.cumsum([len(b) for b in encoded], dtype=np.int64),
    }


def _grouping(name: str, codes: np.ndarray, n_codes: int) -> dict[str, np.ndarray]:
    """Positions ordered by code, and where each code's run starts: a code's positions are
    ``by[starts[c]:starts[c + 1]]``, with no scan of every reference."""
    order = np.argsort(codes, kind="stable").astype(np.int32)
    starts = np.searchsorted(codes[order], np.arange(n_codes + 1)).astype(np.int64)
    return {f"by_{name}": order, f"{name}_starts": starts}


def pair_codes(element_of, session_of) -> np.ndarray:
    """(element code, session code) pairs as one int64 each, ordered as the pairs are."""
    return (np.asarray(element_of, np.int64) << 32) | np.asarray(session_of, np.int64)


def _pairs(element_of: np.ndarray, session_of: np.ndarray) -> np.ndarray:
    """(element code, session code, references) of each pair present."""
    # one int64 a pair: np.unique of it is a plain sort (of the stacked pairs, 10x slower)
    pairs, counts = np.unique(pair_codes(element_of, session_of), return_counts=True)
    return np.stack([pairs >> 32, pairs & 0xFFFFFFFF, counts], axis=1).astype(np.int64)


# -- building from the store -----------------------------------------------------------------
@dataclass(frozen=True)
class StoreSource:
    """What a build reads: a collection's references with one model's embeddings."""

    address: tuple[str, str]  # the database (app.database.Database.address)
    collection: int
    model_version: str
    epoch: int


def build_from_store(
    store,
    source: StoreSource,
    folder: SegmentFolder,
    kind_for: Callable[[int], IndexKind],
    chunks: Callable[[Iterator[IndexRows]], Iterator[IndexRows]] = lambda c: c,
) -> Path:
    """Builds and publishes a segment of everything ``store`` (an app.store.ReferenceStore of
    the collection) holds with the model's embedding, of the type ``kind_for`` its size;
    ``chunks`` wraps the rows read (a stop check). The caller holds the build lock."""
    seq = store.last_seq()  # first: rows read after it are replayed
    n = store.count_embedded(source.model_version)
    kind = kind_for(n)
    started = time.perf_counter()
    path = folder.build(
        kind,
        seq,
        n,
        chunks(store.iter_index_rows(source.model_version)),
        lambda size: store.sample_vectors(source.model_version, size),
        source.model_version,
        source.epoch,
    )
    log.info(
        "built a %s index segment of %d references at change %d in %.1fs",
        kind, n, seq, time.perf_counter() - started,
    )  # fmt: skip
    return path


class BuildProcess:
    """A build in a process of its own, at the lowest CPU and disk priority, with one FAISS
    thread: the service's threads never wait for the build's share of Python's interpreter
    lock (a background build in a thread of the service made single writes' p99 11x idle at
    10^6 references, niced or not; in a process at nice 10, 2.8x). It dies with the service
    (``app.lifetime``), whose build lock it works under."""

    def __init__(self) -> None:
        self._process = None

    def run(
        self, source: StoreSource, folder: SegmentFolder, kind_for: Callable[[int], IndexKind]
    ) -> Path:
        """(Blocking.) The published folder; RuntimeError with the child's reason if it failed
        or was stopped."""
        context = multiprocessing.get_context("spawn")  # no copy of the service's threads
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_build_child,
            args=(send, source, folder.root, folder.params, kind_for),
            name="hsn-segment-build",
            daemon=True,
        )
        self._process.start()
        send.close()
        try:
            ok, answer = receive.recv()
        except EOFError:
            ok, answer = False, f"the build process ended ({self._process.exitcode})"
        finally:
            self._process.join()
            receive.close()
        if not ok:
            raise RuntimeError(answer)
        return Path(answer)

    def stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()


BUILD_NICENESS = 19  # the lowest CPU priority: requests first
IOPRIO_SET, IOPRIO_LOWEST = 251, (2 << 13) | 7  # x86-64 ioprio_set; best effort, level 7


def _build_child(send, source: StoreSource, root: Path, params: BuildParameters, kind_for) -> None:
    import ctypes

    from app.lifetime import die_with_parent

    die_with_parent()
    os.nice(BUILD_NICENESS)
    try:  # and the lowest disk priority: its reads and writes behind the writers' fsyncs
        ctypes.CDLL(None, use_errno=True).syscall(IOPRIO_SET, 1, 0, IOPRIO_LOWEST)
    except (OSError, AttributeError):
        pass
    from app.ann import set_search_threads
    from app.database import reconnect
    from app.store import ReferenceStore

    set_search_threads(1)
    try:
        store = ReferenceStore(reconnect(source.address)).of_collection(source.collection)
        try:
            path = build_from_store(store, source, SegmentFolder(root, params), kind_for)
        finally:
            store.close()
        send.send((True, str(path)))
    except Exception as exc:  # told to the service, which logs it and retries later
        send.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()
