"""The reference store on both engines: change log, embeddings per model version, migration."""

import sqlite3

import numpy as np
import pytest

from app.database import PostgresDatabase, SqliteDatabase
from app.store import SCHEMA_VERSION, NewReference, ReferenceStore

SIGNAL = np.arange(8, dtype=np.float32)[None]


def ref(ref_id: str, element: str = "e", vector: float = 1.0) -> NewReference:
    return NewReference(ref_id, element, "s", {"n": 1}, SIGNAL, np.full(4, vector, np.float32))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        database = SqliteDatabase(tmp_path / "refs.sqlite3")
    else:
        database = PostgresDatabase(request.getfixturevalue("postgres").new_database())
    store = ReferenceStore(database)
    with database.exclusive():
        assert store.migrate() == 0
    yield store
    store.close()


def test_writes_and_deletes_are_logged_in_order_and_read_back_by_key(store):
    first = store.upsert([ref("a"), ref("b")], "m1")
    second = store.upsert([ref("a", element="f")], "m1")  # replaced: same key, new entry
    gone = store.delete("b")
    assert store.delete("nobody") is None
    assert [c.key for c in store.changes_after(0).entries] == [
        *first.keys,
        first.keys[0],
        first.keys[1],
    ]
    assert second.keys == first.keys[:1] and gone.seq == store.last_seq() == 4
    rows, removed, missing = store.index_rows(first.keys, "m1")
    assert rows.keys.tolist() == first.keys[:1] and rows.element_ids == ["f"]
    assert removed.tolist() == first.keys[1:] and missing == []


def test_another_models_embedding_is_added_unless_the_signal_changed_meanwhile(store):
    key = store.upsert([ref("a")], "m1").keys[0]
    (missing,) = store.unembedded("m2")
    assert store.count_unembedded("m2") == 1 and missing.key == key
    store.upsert([ref("a", vector=2.0)], "m1")  # rewritten after m2 read it
    store.add_embeddings([missing], np.ones((1, 4), np.float32), "m2")
    assert store.count_embedded("m2") == 0  # the stale embedding was not kept
    (fresh,) = store.unembedded("m2")
    store.add_embeddings([fresh], np.ones((1, 4), np.float32), "m2")
    assert store.count_embedded("m2") == store.count_embedded("m1") == 1
    store.upsert([ref("a")], "m2")  # a new signal drops every other model's embedding
    assert store.count_embedded("m1") == 0 and store.count_unembedded("m1") == 1


def test_a_version_1_database_is_migrated_with_its_embeddings(tmp_path):
    path = tmp_path / "refs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE refs (key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " element_id TEXT NOT NULL, session_id TEXT NOT NULL, metadata BLOB NOT NULL,"
        " channels INTEGER NOT NULL, length INTEGER NOT NULL, signal BLOB NOT NULL,"
        " embedding BLOB NOT NULL, model_version TEXT NOT NULL, updated_at TEXT NOT NULL);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('generation', 1);"
    )
    vector = np.full(4, 0.5, np.float32)
    old.execute(
        "INSERT INTO refs (id, element_id, session_id, metadata, channels, length, signal,"
        " embedding, model_version, updated_at)"
        " VALUES ('a', 'e', 's', '{}', 1, 8, ?, ?, 'm1', 't')",
        (SIGNAL.tobytes(), vector.tobytes()),
    )
    old.commit()
    old.close()
    store = ReferenceStore(SqliteDatabase(path))
    assert store.migrate() == 1
    keys, vectors = store.embeddings(np.array([1]), "m1")
    assert keys.tolist() == [1] and np.array_equal(vectors[0], vector)
    assert np.array_equal(store.get("a").signal, SIGNAL)
    assert store.get("a").recorded_at == "t"  # when it was stored stands in
    store.upsert([ref("b")], "m1")  # the log works on the migrated file
    assert [c.key for c in store.changes_after(0).entries] == [2]
    assert store.migrate() == SCHEMA_VERSION
    store.close()


def test_a_version_2_database_gets_recording_times(store):
    store.upsert([ref("a"), ref("b", element="f")], "m1")
    with store.db.write() as s:  # back to version 2: no recorded_at
        s.execute("ALTER TABLE refs DROP COLUMN recorded_at")
        s.execute("UPDATE meta SET value = 2 WHERE name = 'schema_version'")
    with store.db.exclusive():
        assert store.migrate() == 2
    a = store.get("a")
    assert a.recorded_at == a.updated_at
    store.upsert(
        [NewReference("c", "e", "s2", {}, SIGNAL, np.ones(4, np.float32), "2020-01-01")], "m1"
    )
    assert [r.session_id for r in store.element_references("e")] == ["s2", "s"]
    elements, total = store.elements(limit=10, offset=0)
    assert total == 2 and [(e.element_id, e.references, e.sessions) for e in elements] == [
        ("e", 2, 2),
        ("f", 1, 1),
    ]
    assert elements[0].first_recorded_at == "2020-01-01"
