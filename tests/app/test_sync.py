"""IndexSync on its own, over a real store on both engines: a commit is applied before the
writer's answer, another process's write within the interval, a process that starts later
rebuilds from the store, and a failed apply is caught up before the next search."""

import asyncio
import threading
import time

import numpy as np
import pytest

from app.database import PostgresDatabase, SqliteDatabase
from app.index import VectorIndex
from app.index_policy import IndexPolicy
from app.labels import Filters
from app.segments import BuildParameters, SegmentFolder
from app.store import NewReference, ReferenceStore
from app.sync import IndexSync

DIM = 4
SIGNAL = np.arange(8, dtype=np.float32)[None]


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def changed(self, writes: int, total: int) -> None:
        self.events.append(("changed", writes, total))

    def rebuilt(self, total: int) -> None:
        self.events.append(("rebuilt", total))


async def no_model(signals):
    raise AssertionError("every reference here has this model's embedding")


def ref(ref_id: str, element: str = "e", vector: float = 1.0) -> NewReference:
    v = np.zeros(DIM, np.float32)
    v[hash(element) % DIM] = vector
    return NewReference(ref_id, element, "s", {}, SIGNAL, v / np.linalg.norm(v))


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """open_store() -> a new connection to one database (as a second process would have)."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
    stores = []

    def make() -> ReferenceStore:
        database = (
            SqliteDatabase(tmp_path / "refs.sqlite3") if url is None else PostgresDatabase(url)
        )
        store = ReferenceStore(database)
        store.prepare()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def make_sync(store: ReferenceStore, tmp_path, name: str) -> tuple[IndexSync, Observer]:
    observer = Observer()
    index = VectorIndex(DIM, IndexPolicy("flat"))
    folder = SegmentFolder(tmp_path / f"segments-{name}", BuildParameters(DIM))
    sync = IndexSync(store, index, "m1", no_model, folder, 0.05, [observer])
    return sync, observer


def test_a_commit_is_in_the_index_when_after_commit_returns(open_store, tmp_path):
    async def run():
        store = open_store()
        sync, observer = make_sync(store, tmp_path, "a")
        await sync.start()
        committed = store.upsert([ref("a"), ref("b", "f")], "m1")
        await sync.after_commit(committed.seq)
        assert len(sync.index) == 2 and sync.applied_seq == committed.seq
        assert observer.events[-1] == ("changed", 2, 2)
        await sync.after_commit(store.delete("a").seq)
        assert len(sync.index) == 1 and observer.events[-1] == ("changed", 1, 1)
        await sync.stop()

    asyncio.run(run())


def test_another_process_write_arrives_within_the_interval(open_store, tmp_path):
    async def run():
        mine, theirs = open_store(), open_store()
        sync, observer = make_sync(mine, tmp_path, "mine")
        await sync.start()
        theirs.upsert([ref("x", "g")], "m1")  # committed by another process
        for _ in range(100):
            if len(sync.index):
                break
            await asyncio.sleep(0.02)
        assert sync.index.has_element("g") and ("changed", 1, 1) in observer.events
        await sync.stop()

    asyncio.run(run())


def test_a_process_that_starts_later_rebuilds_from_the_store(open_store, tmp_path):
    async def run():
        store = open_store()
        store.upsert([ref(f"r{i}", f"e{i % 3}") for i in range(10)], "m1")
        sync, observer = make_sync(store, tmp_path, "late")
        await sync.start()  # no segment: built from the store
        assert len(sync.index) == 10 and observer.events == [("rebuilt", 10)]
        await sync.stop()
        again, observer = make_sync(store, tmp_path, "late")
        store.upsert([ref("r10", "e9")], "m1")
        await again.start()  # the segment mapped, and the log replayed after it
        assert len(again.index.base) == 10 and len(again.index.mutable) == 1
        assert len(again.index) == 11 and again.index.has_element("e9")
        assert observer.events[-1] == ("rebuilt", 11)
        await again.stop()

    asyncio.run(run())


def test_a_failed_apply_is_caught_up_before_the_next_search(open_store, tmp_path, monkeypatch):
    async def run():
        store = open_store()
        sync, _ = make_sync(store, tmp_path, "fail")
        await sync.start()
        sync.interval_s = 60.0  # only the writer's catch-up, not the poll, may apply it
        real_apply = sync.index.apply

        def broken_apply(rows, removed):  # a fault that cannot be caused for real here
            raise RuntimeError("index out of memory")

        monkeypatch.setattr(sync.index, "apply", broken_apply)
        committed = store.upsert([ref("a", "h")], "m1")
        await sync.after_commit(committed.seq)  # logged, not raised: the write is committed
        assert sync.stale and len(sync.index) == 0
        monkeypatch.setattr(sync.index, "apply", real_apply)
        await sync.ensure_fresh()
        found = sync.index.search(np.eye(DIM, dtype=np.float32)[:1], 1, Filters(element_id="h"))
        assert not sync.stale and [h.key for h in found[0]] == committed.keys
        await sync.stop()

    asyncio.run(run())


def many(n: int, first: int = 0) -> list[NewReference]:
    rng = np.random.default_rng(first)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return [
        NewReference(f"r{first + i}", f"e{(first + i) % 7}", "s", {}, SIGNAL, v / np.linalg.norm(v))
        for i, v in enumerate(vectors)
    ]


def found_ids(sync: IndexSync, vector: np.ndarray, k: int = 50) -> set[str]:
    hits = sync.index.search(vector[None].astype(np.float32), k)[0]
    return {
        ref_id for ref_id, _, _ in sync.index.describe(np.array([h.key for h in hits])).values()
    }


def test_a_background_build_keeps_the_writes_made_during_it(open_store, tmp_path, monkeypatch):
    """Past the mutable segment's limit the next segment is built in the background; writes
    go on meanwhile (they land while the build is still running), and the ones made after it
    read its rows keep their state once it is served."""

    async def run():
        store = open_store()
        sync, _ = make_sync(store, tmp_path, "bg")
        await sync.start()  # an empty segment
        rows_read = threading.Event()
        real = store.iter_index_rows

        def slow(version):
            yield from real(version)
            rows_read.set()
            time.sleep(1.0)  # a big segment being written: the writes below land meanwhile

        monkeypatch.setattr(store, "iter_index_rows", slow)
        refs = many(1001)  # past MUTABLE_MIN: the build starts
        await sync.after_commit(store.upsert(refs, "m1").seq)
        assert sync.building
        await asyncio.to_thread(rows_read.wait, 10)
        moved = NewReference("r5", "elsewhere", "s2", {}, SIGNAL, refs[6].embedding)
        committed = store.upsert([moved], "m1")
        await sync.after_commit(committed.seq)
        await sync.after_commit(store.delete("r7").seq)
        await sync.after_commit(store.upsert(many(1, first=5000), "m1").seq)
        assert sync.building  # none of the three waited for the build
        assert "r7" not in found_ids(sync, refs[7].embedding)
        await sync._build
        base = sync.index.base
        assert base is not None and len(base) == 1001  # as read: r5 old, r7 there
        assert len(sync.index) == 1001 and len(sync.index.mutable) == 2  # r5, r5000
        assert "r7" not in found_ids(sync, refs[7].embedding)
        assert "r5000" in found_ids(sync, many(1, first=5000)[0].embedding)
        (key5,) = committed.keys
        assert sync.index.describe(np.array([key5]))[key5] == ("r5", "elsewhere", "s2")
        assert sync.index.keys_of_element("elsewhere").tolist() == [key5]
        await sync.stop()

    asyncio.run(run())


def test_two_processes_building_at_once_build_one_segment(open_store, tmp_path, monkeypatch):
    """Two processes of one machine start on a store with no segment: one builds, the other
    waits for the build lock and maps what it published. A delete of a reference in that
    segment is then never returned by either."""

    async def run():
        writer = open_store()
        writer.upsert(many(300), "m1")
        folder = SegmentFolder(tmp_path / "shared", BuildParameters(DIM))
        syncs = []
        for _ in range(2):  # each its own connection, as a process would have
            index = VectorIndex(DIM, IndexPolicy("flat"))
            syncs.append(IndexSync(open_store(), index, "m1", no_model, folder, 0.05, []))
        built = []
        real_build = folder.build

        def counted(*args, **kwargs):
            built.append(1)
            time.sleep(0.3)  # the other process reaches the lock meanwhile
            return real_build(*args, **kwargs)

        monkeypatch.setattr(folder, "build", counted)
        await asyncio.gather(*(s.start() for s in syncs))
        a, b = syncs
        assert len(built) == 1 and len(folder.published()) == 1
        assert a.index.base.path == b.index.base.path and len(a.index) == len(b.index) == 300
        victim = many(300)[42]
        assert "r42" in found_ids(a, victim.embedding) and "r42" in found_ids(b, victim.embedding)
        await a.after_commit(writer.delete("r42").seq)
        for _ in range(100):
            if len(b.index) == 299:
                break
            await asyncio.sleep(0.02)
        assert "r42" not in found_ids(a, victim.embedding) | found_ids(b, victim.embedding)
        assert len(a.index.tombstones) == len(b.index.tombstones) == 1
        for sync in syncs:
            await sync.stop()

    asyncio.run(run())
