"""IndexSync on its own, over a real store on both engines: a commit is applied before the
writer's answer, another process's write within the interval, a process that starts later
rebuilds from the store, and a failed apply is caught up before the next search."""

import asyncio

import numpy as np
import pytest

from app.database import PostgresDatabase, SqliteDatabase
from app.index import VectorIndex
from app.index_policy import IndexPolicy
from app.labels import Filters
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
    sync = IndexSync(store, index, "m1", no_model, tmp_path / f"{name}.npz", 0.05, [observer])
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
        await sync.start()  # no snapshot: rebuilt from the store
        assert len(sync.index) == 10 and observer.events == [("rebuilt", 10)]
        await sync.stop()  # saves a snapshot
        again, observer = make_sync(store, tmp_path, "late")
        store.upsert([ref("r10", "e9")], "m1")
        await again.start()  # the snapshot, and the log replayed after it
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
