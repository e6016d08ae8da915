"""VectorIndex on its own: labels, filters, the index type chosen by size, snapshots; the
anomaly calibration given its vectors."""

from dataclasses import dataclass

import numpy as np
import pytest

from app.ann import IVFBackend
from app.anomaly import AnomalyCalibration, neighbour_search
from app.calibration import EmpiricalCDF
from app.index import VectorIndex
from app.index_policy import IVF_MIN_REFERENCES, IndexPolicy
from app.labels import Filters, IndexRows

DIM = 16


@dataclass
class Ref:
    element_id: str
    session_id: str


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, elements: int, per_element: int):
    """Unit vectors around one centre per element; refs label them e<i>, sessions s<i>_<j%2>."""
    centres = unit(rng, elements)
    vectors, refs = [], []
    for e in range(elements):
        for j in range(per_element):
            v = centres[e] + 0.2 * rng.normal(size=DIM).astype(np.float32)
            vectors.append(v / np.linalg.norm(v))
            refs.append(Ref(f"e{e}", f"s{e}_{j % 2}"))
    return np.stack(vectors), refs


def rows_of(keys: list[int], refs: list[Ref], vectors: np.ndarray) -> IndexRows:
    return IndexRows(
        np.array(keys, dtype=np.int64),
        [f"id{k}" for k in keys],
        [r.element_id for r in refs],
        [r.session_id for r in refs],
        np.asarray(vectors, dtype=np.float32).reshape(len(keys), DIM),
    )


class Harness:
    """An index and a stand-in store, written the way the change log's owner writes: apply, or
    rebuild from everything when the index asks for it."""

    def __init__(self, kind: str, approximate_above: int = 20_000, **options) -> None:
        self.refs: dict[int, tuple[Ref, np.ndarray]] = {}
        self.index = VectorIndex(DIM, IndexPolicy(kind, approximate_above), **options)
        self.rebuilds = 0

    def upsert(self, keys: list[int], refs: list[Ref], embeddings: np.ndarray) -> None:
        for key, ref, vector in zip(keys, refs, embeddings, strict=True):
            self.refs[key] = (ref, vector)
        if not self.index.apply(rows_of(keys, refs, embeddings), np.zeros(0, np.int64)):
            self.rebuild()

    def remove(self, key: int) -> None:
        del self.refs[key]
        empty = rows_of([], [], np.zeros((0, DIM)))
        if not self.index.apply(empty, np.array([key], dtype=np.int64)):
            self.rebuild()

    def rebuild(self) -> None:
        self.rebuilds += 1
        keys = sorted(self.refs)
        rows = rows_of(keys, [self.refs[k][0] for k in keys], [self.refs[k][1] for k in keys])
        # a random sample of the size the index asks for, as the store gives it
        order = np.random.default_rng(0).permutation(len(keys))
        self.index.rebuild(len(keys), [rows], lambda size: rows.vectors[order[:size]])


def test_filters_follow_replacements_and_removals():
    rng = np.random.default_rng(0)
    vectors, refs = clustered(rng, 4, 10)
    harness = Harness("flat")
    harness.upsert(list(range(40)), refs, vectors)
    query = vectors[:1]
    assert {n.key for n in harness.index.search(query, 40, Filters(element_id="e1"))[0]} == set(
        range(10, 20)
    )
    # key 3 moves to element e1; key 12 goes
    harness.upsert([3], [Ref("e1", "s1_0")], vectors[3:4])
    harness.remove(12)
    found = {n.key for n in harness.index.search(query, 40, Filters(element_id="e1"))[0]}
    assert found == (set(range(10, 20)) | {3}) - {12}
    in_session = {n.key for n in harness.index.search(query, 40, Filters(session_id="s1_0"))[0]}
    assert in_session == {3, 10, 14, 16, 18}
    excluded = {
        n.key for n in harness.index.search(query, 40, Filters(exclude_session_id="s0_0"))[0]
    }
    assert excluded.isdisjoint({0, 2, 4, 6, 8}) and len(excluded) == 39 - 5
    assert harness.index.has_element("e1") and not harness.index.has_element("nobody")
    # a key below the largest comes back (keys are AUTOINCREMENT, but the index does not rely on it)
    harness.upsert([12, 41], [Ref("e3", "s3_0"), Ref("e3", "s3_1")], vectors[12:14])
    e3 = {n.key for n in harness.index.search(query, 40, Filters(element_id="e3"))[0]}
    assert e3 == set(range(30, 40)) | {12, 41}
    assert harness.index.labels.keys.tolist() == sorted(harness.index.labels.keys.tolist())
    assert harness.rebuilds == 0


def test_auto_switches_to_ivf_past_the_threshold_and_stays_exact_enough():
    rng = np.random.default_rng(1)
    vectors, refs = clustered(rng, 60, 40)  # 2,400 references
    harness = Harness("auto", approximate_above=IVF_MIN_REFERENCES, ivf_nprobe=8)
    harness.upsert(list(range(IVF_MIN_REFERENCES)), refs[:IVF_MIN_REFERENCES], vectors[:1000])
    assert harness.index.current_kind == "flat" and harness.rebuilds == 0
    harness.upsert(list(range(1000, 2400)), refs[1000:], vectors[1000:])
    assert harness.index.current_kind == "ivf" and harness.rebuilds == 1
    assert len(harness.index) == 2400
    # every stored vector finds itself, and an element filter finds members wherever they are
    top = harness.index.search(vectors, 1)
    assert np.mean([row[0].key == i for i, row in enumerate(top)]) > 0.97
    far = -vectors[:1]  # the opposite direction: no list near it holds e5's vectors
    members = {n.key for n in harness.index.search(far, 100, Filters(element_id="e5"))[0]}
    assert members == set(range(200, 240))
    # IVF removes and replaces without a rebuild
    harness.remove(0)
    harness.upsert([1], [Ref("e9", "s9_0")], vectors[1:2])
    assert harness.rebuilds == 1 and len(harness.index) == 2399
    assert 1 in {n.key for n in harness.index.search(vectors[1:2], 5, Filters(element_id="e9"))[0]}


def test_ivf_is_retrained_once_it_outgrows_its_lists():
    rng = np.random.default_rng(2)
    vectors, refs = clustered(rng, 100, 100)
    harness = Harness("ivf")
    harness.upsert(list(range(1200)), refs[:1200], vectors[:1200])
    lists = harness.index.backend.lists
    assert harness.index.current_kind == "ivf" and harness.rebuilds == 1
    harness.upsert(list(range(1200, 10_000)), refs[1200:], vectors[1200:])
    assert harness.rebuilds == 2 and harness.index.backend.lists > lists
    assert harness.index.backend.lists == IVFBackend.lists_for(10_000)  # from n, not the sample


def test_a_size_hovering_at_the_threshold_does_not_rebuild_on_every_write():
    rng = np.random.default_rng(5)
    vectors, refs = clustered(rng, 20, 60)
    harness = Harness("auto", approximate_above=1, ivf_nprobe=4)  # floor: 1,000
    harness.upsert(list(range(1000)), refs[:1000], vectors[:1000])
    assert harness.index.current_kind == "flat" and harness.rebuilds == 0
    harness.upsert([1000], refs[1000:1001], vectors[1000:1001])
    assert harness.index.current_kind == "ivf" and harness.rebuilds == 1
    for cycle in range(10):  # a retention job deleting while new data arrives
        harness.remove(cycle)
        harness.upsert([5], [Ref("e0", "s0_1")], vectors[5:6])
        harness.upsert([2000 + cycle], refs[cycle : cycle + 1], vectors[cycle : cycle + 1])
    assert harness.rebuilds == 1
    for key in range(10, 600):  # shrinking to half the threshold goes back to exact search
        harness.remove(key)
    harness.upsert([3000], refs[:1], vectors[:1])
    assert harness.index.current_kind == "flat" and harness.rebuilds == 2


def test_excluding_a_session_still_finds_k_on_ivf():
    """The lists nearest a query may hold nothing but the excluded session."""
    rng = np.random.default_rng(6)
    centres = unit(rng, 4)
    vectors = np.concatenate([centres[s] + 0.05 * unit(rng, 1500) for s in range(4)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    refs = [Ref(f"e{s}", f"rec{s}") for s in range(4) for _ in range(1500)]
    harness = Harness("ivf", ivf_nprobe=2)
    harness.upsert(list(range(6000)), refs, vectors)
    rows = harness.index.search(vectors[:5], 10, Filters(exclude_session_id="rec0"))
    assert [len(row) for row in rows] == [10] * 5
    assert all(n.key >= 1500 for row in rows for n in row)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_snapshot_round_trip(tmp_path, kind):
    rng = np.random.default_rng(3)
    vectors, refs = clustered(rng, 30, 50)
    harness = Harness(kind)
    harness.upsert(list(range(1500)), refs, vectors)
    path = tmp_path / "index.npz"
    harness.index.save(path, seq=7, model_version="m1", epoch=42)
    expected = harness.index.search(vectors[:20], 5, Filters(element_id="e2"))

    fresh = VectorIndex(DIM, IndexPolicy(kind))
    snapshot = fresh.load(path, model_version="m1", epoch=42)
    assert snapshot.seq == 7 and snapshot.references == 1500
    assert fresh.current_kind == harness.index.current_kind
    assert fresh.search(vectors[:20], 5, Filters(element_id="e2")) == expected
    assert fresh.describe(np.array([3])) == {3: ("id3", "e0", "s0_1")}
    # another model or database: rebuild instead; a truncated file: rebuild instead, the index
    # unchanged
    assert VectorIndex(DIM, IndexPolicy(kind)).load(path, model_version="m2", epoch=42) is None
    assert VectorIndex(DIM, IndexPolicy(kind)).load(path, model_version="m1", epoch=43) is None
    path.write_bytes(path.read_bytes()[:1000])
    assert fresh.load(path, model_version="m1", epoch=42) is None and len(fresh) == 1500


def test_within_element_distances_compare_each_reference_with_its_own_element():
    """Two tight elements close to each other: among all references a reference's nearest
    others may be the other element's; within its element they are its own."""
    rng = np.random.default_rng(5)
    centre = rng.normal(size=DIM)
    near = centre + 0.05 * rng.normal(size=DIM)
    vectors = np.concatenate([c + 0.1 * rng.normal(size=(20, DIM)) for c in (centre, near)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    refs = [Ref("a", "sa")] * 20 + [Ref("b", "sb")] * 20 + [Ref("alone", "s")]
    vectors = np.concatenate([vectors, unit(rng, 1)]).astype(np.float32)
    harness = Harness("flat")
    harness.upsert(list(range(41)), refs, vectors)
    keys = np.arange(41)
    rows = neighbour_search(harness.index, True)(keys, vectors, 4)
    for key, row in zip(keys.tolist(), rows, strict=True):
        own = refs[key].element_id
        assert all(refs[other].element_id == own for other, _ in row)
    assert rows[40] == [(40, pytest.approx(1.0))]  # alone: only itself
    distances = AnomalyCalibration(k=3).fit(keys, vectors, neighbour_search(harness.index, True))
    assert len(distances) == 40  # the lone reference has no other to be compared with
    everyone = AnomalyCalibration(k=3).fit(keys, vectors, neighbour_search(harness.index, False))
    assert len(everyone) == 41 and np.median(everyone.sorted) <= np.median(distances.sorted)


def test_scores_beyond_the_largest_reference_distance_stay_ordered():
    calibration = AnomalyCalibration(k=1)
    calibrated = np.sort(np.random.default_rng(3).uniform(0.1, 0.2, 40))
    top = calibrated[36:]
    scale = np.mean(top - top[0])
    similarities = [[1 - d] for d in (calibrated[-1], calibrated[-1] + 1e-9, 0.21, 0.23, 0.26)]
    cdf = EmpiricalCDF(calibrated, tail=True)
    at_max, just_beyond, *far = calibration.scores(cdf, similarities)
    assert at_max == pytest.approx(39 / 40) and just_beyond == pytest.approx(39 / 40)
    assert far == sorted(far) and len(set(far)) == 3 and far[-1] < 1.0  # 1.0 past ~35 scales
    assert far[0] == pytest.approx(1 - np.exp(-(0.21 - calibrated[-1]) / scale) / 40)


def test_an_empty_index_snapshot_loads(tmp_path):
    """An empty collection's snapshot (a restart with nothing stored) loads, not rebuilt."""
    path = tmp_path / "empty.npz"
    VectorIndex(DIM, IndexPolicy("auto")).save(path, seq=3, model_version="m", epoch=1)
    snapshot = VectorIndex(DIM, IndexPolicy("auto")).load(path, model_version="m", epoch=1)
    assert snapshot is not None and snapshot.seq == 3 and snapshot.references == 0
