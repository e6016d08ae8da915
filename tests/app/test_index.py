"""VectorIndex on its own: segments, tombstones, filters, the index type chosen by size, a
segment mapped by another process; the anomaly calibration given its vectors."""

from dataclasses import dataclass

import numpy as np
import pytest

from app.ann import IVFBackend
from app.anomaly import AnomalyCalibration, neighbour_search
from app.calibration import EmpiricalCDF
from app.index import VectorIndex
from app.index_policy import IVF_MIN_REFERENCES, IndexPolicy
from app.labels import Filters, IndexRows
from app.segments import BuildParameters, Segment, SegmentFolder, SegmentUnusable

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
    """An index and a stand-in store with a change log, written the way the log's owner
    (app.sync.IndexSync) writes: apply each change, and build the next large segment from
    everything when the index asks for one."""

    def __init__(self, folder, kind: str, approximate_above: int = 20_000, **options) -> None:
        self.refs: dict[int, tuple[Ref, np.ndarray]] = {}
        self.seq = 0
        self.index = VectorIndex(DIM, IndexPolicy(kind, approximate_above))
        self.folder = SegmentFolder(folder, BuildParameters(DIM, **options))
        self.builds = 0

    def upsert(self, keys: list[int], refs: list[Ref], embeddings: np.ndarray) -> None:
        for key, ref, vector in zip(keys, refs, embeddings, strict=True):
            self.refs[key] = (ref, vector)
        self.seq += 1
        self.index.apply(rows_of(keys, refs, embeddings), np.zeros(0, np.int64))
        self.maybe_build()

    def remove(self, key: int) -> None:
        del self.refs[key]
        self.seq += 1
        self.index.apply(rows_of([], [], np.zeros((0, DIM))), np.array([key], dtype=np.int64))
        self.maybe_build()

    def maybe_build(self) -> None:
        if self.index.wants_build():
            self.build()

    def build(self) -> Segment:
        self.builds += 1
        keys = sorted(self.refs)
        rows = rows_of(keys, [self.refs[k][0] for k in keys], [self.refs[k][1] for k in keys])
        # a random sample of the size the index asks for, as the store gives it
        order = np.random.default_rng(0).permutation(len(keys))
        kind = self.index.policy.kind_for(len(keys))
        path = self.folder.build(
            kind, self.seq, len(keys), [rows], lambda size: rows.vectors[order[:size]], "m1", 42
        )
        segment = Segment.open(path, "m1", 42, self.folder.params)
        self.index.adopt(segment, None)
        return segment


@pytest.fixture
def harness(tmp_path):
    return lambda *args, **options: Harness(tmp_path / "segments", *args, **options)


def test_filters_follow_replacements_and_removals_across_segments(harness):
    rng = np.random.default_rng(0)
    vectors, refs = clustered(rng, 4, 10)
    harness = harness("flat")
    harness.upsert(list(range(40)), refs, vectors)
    harness.build()  # the 40 in the large segment: what follows is mutable and tombstones
    query = vectors[:1]
    assert {n.key for n in harness.index.search(query, 40, Filters(element_id="e1"))[0]} == set(
        range(10, 20)
    )
    # key 3 moves to element e1; key 12 goes
    harness.upsert([3], [Ref("e1", "s1_0")], vectors[3:4])
    harness.remove(12)
    assert harness.index.tombstones.tolist() == [3, 12] and len(harness.index) == 39
    found = {n.key for n in harness.index.search(query, 40, Filters(element_id="e1"))[0]}
    assert found == (set(range(10, 20)) | {3}) - {12}
    in_session = {n.key for n in harness.index.search(query, 40, Filters(session_id="s1_0"))[0]}
    assert in_session == {3, 10, 14, 16, 18}
    excluded = {
        n.key for n in harness.index.search(query, 40, Filters(exclude_session_id="s0_0"))[0]
    }
    assert excluded.isdisjoint({0, 2, 4, 6, 8}) and len(excluded) == 39 - 5
    unfiltered = [n.key for n in harness.index.search(query, 40)[0]]
    assert len(unfiltered) == 39 and 12 not in unfiltered and unfiltered.count(3) == 1
    assert harness.index.describe(np.array([3, 12])) == {3: ("id3", "e1", "s1_0")}
    assert harness.index.has_element("e1") and not harness.index.has_element("nobody")
    assert harness.index.session_counts() == {"e0": 2, "e1": 2, "e2": 2, "e3": 2}
    sessions = harness.index.sessions_of_element("e1")
    assert sorted(sessions["s1_0"].tolist()) == [3, 10, 14, 16, 18]
    # a key below the largest comes back (keys are AUTOINCREMENT, but the index does not rely on it)
    harness.upsert([12, 41], [Ref("e3", "s3_0"), Ref("e3", "s3_1")], vectors[12:14])
    e3 = {n.key for n in harness.index.search(query, 40, Filters(element_id="e3"))[0]}
    assert e3 == set(range(30, 40)) | {12, 41}
    assert harness.builds == 2  # the first write's (no segment yet) and the one above


def test_a_filter_that_matches_nothing_finds_nothing(harness):
    rng = np.random.default_rng(0)
    vectors, refs = clustered(rng, 4, 10)
    harness = harness("flat")
    harness.upsert(list(range(30)), refs[:30], vectors[:30])
    harness.build()
    harness.upsert(list(range(30, 40)), refs[30:], vectors[30:])
    for filters in (
        Filters(element_id="nobody"),
        Filters(session_id="nowhere"),
        Filters(element_id="e1", session_id="s2_0"),  # both exist, never together
    ):
        assert harness.index.search(vectors[:3], 5, filters) == [[], [], []]
    harness.remove(35)  # e3's last... not yet: the rest of e3 is still there
    for key in range(30, 40):
        if key != 35:
            harness.remove(key)
    assert harness.index.search(vectors[:1], 5, Filters(element_id="e3")) == [[]]
    assert not harness.index.has_element("e3")


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_kinds_switch_past_the_floor_and_stay_exact_enough(harness, kind):
    rng = np.random.default_rng(1)
    vectors, refs = clustered(rng, 60, 40)  # 2,400 references
    harness = harness(kind, ivf_nprobe=8)
    harness.upsert(list(range(IVF_MIN_REFERENCES)), refs[:IVF_MIN_REFERENCES], vectors[:1000])
    assert harness.index.current_kind == "flat" and harness.builds == 1  # the first
    harness.upsert(list(range(1000, 2400)), refs[1000:], vectors[1000:])
    assert harness.index.current_kind == kind and harness.builds == 2
    assert len(harness.index) == 2400 and harness.index.base.backend.compressed == (kind == "ivfpq")
    # every stored vector finds itself, with its exact similarity (rescored when compressed)
    top = harness.index.search(vectors, 1)
    assert np.mean([row[0].key == i for i, row in enumerate(top)]) > 0.97
    assert np.median([row[0].similarity for row in top]) == pytest.approx(1.0, abs=1e-5)
    # an element filter finds its members wherever they are
    far = -vectors[:1]  # the opposite direction: no list near it holds e5's vectors
    members = {n.key for n in harness.index.search(far, 100, Filters(element_id="e5"))[0]}
    assert members == set(range(200, 240))
    # removals and replacements are tombstones, not rebuilds
    harness.remove(0)
    harness.upsert([1], [Ref("e9", "s9_0")], vectors[1:2])
    assert harness.builds == 2 and len(harness.index) == 2399
    assert 1 in {n.key for n in harness.index.search(vectors[1:2], 5, Filters(element_id="e9"))[0]}
    assert 0 not in {n.key for n in harness.index.search(vectors[:1], 10)[0]}


def test_ivf_is_retrained_once_it_outgrows_its_lists(harness):
    rng = np.random.default_rng(2)
    vectors, refs = clustered(rng, 100, 100)
    harness = harness("ivf")
    harness.upsert(list(range(1200)), refs[:1200], vectors[:1200])
    lists = harness.index.base.backend.lists
    assert harness.index.current_kind == "ivf" and harness.builds == 1
    harness.upsert(list(range(1200, 10_000)), refs[1200:], vectors[1200:])
    assert harness.builds == 2 and harness.index.base.backend.lists > lists
    assert harness.index.base.backend.lists == IVFBackend.lists_for(10_000)  # from n


def test_a_size_hovering_at_the_threshold_does_not_rebuild_on_every_write(harness):
    rng = np.random.default_rng(5)
    vectors, refs = clustered(rng, 20, 60)
    harness = harness("auto", approximate_above=1, ivf_nprobe=4)  # floor: 1,000
    harness.upsert(list(range(1000)), refs[:1000], vectors[:1000])
    assert harness.index.current_kind == "flat" and harness.builds == 1
    harness.upsert([1000], refs[1000:1001], vectors[1000:1001])
    assert harness.index.current_kind == "ivf" and harness.builds == 2
    for cycle in range(10):  # a retention job deleting while new data arrives
        harness.remove(cycle)
        harness.upsert([5], [Ref("e0", "s0_1")], vectors[5:6])
        harness.upsert([2000 + cycle], refs[cycle : cycle + 1], vectors[cycle : cycle + 1])
    assert harness.builds == 2
    for key in range(10, 600):  # shrinking to half the threshold goes back to exact search
        harness.remove(key)
    harness.upsert([3000], refs[:1], vectors[:1])
    assert harness.index.current_kind == "flat" and harness.builds == 3


def test_writes_past_the_mutable_limit_build_the_next_segment(harness):
    rng = np.random.default_rng(4)
    vectors, refs = clustered(rng, 40, 60)  # 2,400
    harness = harness("flat")
    harness.upsert(list(range(100)), refs[:100], vectors[:100])
    assert harness.builds == 1  # the first segment
    for start in range(100, 1100, 100):  # 1,000 more: the limit (MUTABLE_MIN) is reached
        harness.upsert(
            list(range(start, start + 100)), refs[start : start + 100], vectors[start : start + 100]
        )
    assert harness.builds == 1 and len(harness.index.mutable) == 1000
    harness.upsert([1100], refs[1100:1101], vectors[1100:1101])
    assert harness.builds == 2 and len(harness.index.mutable) == 0
    assert len(harness.index.base) == 1101


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_excluding_a_session_still_finds_k_on_ivf(harness, kind):
    """The lists nearest a query may hold nothing but the excluded session."""
    rng = np.random.default_rng(6)
    centres = unit(rng, 4)
    vectors = np.concatenate([centres[s] + 0.05 * unit(rng, 1500) for s in range(4)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    refs = [Ref(f"e{s}", f"rec{s}") for s in range(4) for _ in range(1500)]
    harness = harness(kind, ivf_nprobe=2)
    harness.upsert(list(range(6000)), refs, vectors)
    assert harness.index.current_kind == kind
    rows = harness.index.search(vectors[:5], 10, Filters(exclude_session_id="rec0"))
    assert [len(row) for row in rows] == [10] * 5
    assert all(n.key >= 1500 for row in rows for n in row)


def test_adopting_a_segment_keeps_what_was_written_after_it(harness):
    """Another process's segment of change S, served by a process that applied more: the keys
    of the changes after S keep their state here (mutable, or deleted)."""
    rng = np.random.default_rng(7)
    vectors, refs = clustered(rng, 10, 10)
    mine = harness("flat")
    mine.upsert(list(range(90)), refs[:90], vectors[:90])
    segment = mine.build()  # change S
    # after S: 5 replaced (moved to e9), 7 deleted, 95 new; a fresh segment of S is adopted
    mine.upsert([5], [Ref("e9", "s9_0")], vectors[95:96])
    mine.remove(7)
    mine.upsert([95], refs[95:96], vectors[95:96])
    mine.index.adopt(Segment.open(segment.path, "m1", 42, mine.folder.params), np.array([5, 7, 95]))
    assert mine.index.tombstones.tolist() == [5, 7]
    assert sorted(mine.index.mutable.keys.tolist()) == [5, 95] and len(mine.index) == 90
    assert mine.index.describe(np.array([5, 7])) == {5: ("id5", "e9", "s9_0")}
    assert 7 not in {n.key for n in mine.index.search(vectors[7:8], 10)[0]}
    # a process that had not reached S: the segment holds everything it had
    mine.index.adopt(segment, None)
    assert len(mine.index.mutable) == 0 and len(mine.index.tombstones) == 0


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_a_segment_maps_in_another_process_and_refuses_what_it_cannot_serve(harness, kind):
    rng = np.random.default_rng(3)
    vectors, refs = clustered(rng, 30, 50)
    harness = harness(kind)
    harness.upsert(list(range(1500)), refs, vectors)
    segment = harness.build()
    assert segment.kind == kind
    expected = harness.index.search(vectors[:20], 5, Filters(element_id="e2"))

    fresh = VectorIndex(DIM, IndexPolicy(kind))
    fresh.adopt(Segment.open(segment.path, "m1", 42, harness.folder.params), None)
    assert fresh.current_kind == kind and len(fresh) == 1500
    assert fresh.search(vectors[:20], 5, Filters(element_id="e2")) == expected
    assert fresh.describe(np.array([3])) == {3: ("id3", "e0", "s0_1")}
    # another model, database or dimension; a truncated file: never opened
    params = harness.folder.params
    for version, epoch, why in (("m2", 42, "of model m1, not m2"), ("m1", 43, "another database")):
        with pytest.raises(SegmentUnusable, match=why):
            Segment.open(segment.path, version, epoch, params)
    with pytest.raises(SegmentUnusable, match="dimensions"):
        Segment.open(segment.path, "m1", 42, BuildParameters(DIM * 2))
    index_file = segment.path / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:1000])
    with pytest.raises(SegmentUnusable, match="index.faiss is 1000 bytes"):
        Segment.open(segment.path, "m1", 42, params)
    assert harness.folder.latest("m1", 42) is None  # skipped: the next start builds


def test_an_empty_collection_has_a_segment_too(harness):
    harness = harness("auto")
    harness.build()
    assert harness.index.search(unit(np.random.default_rng(0), 2), 5) == [[], []]
    assert len(harness.folder.latest("m1", 42)) == 0


def test_within_element_distances_compare_each_reference_with_its_own_element(harness):
    """Two tight elements close to each other: among all references a reference's nearest
    others may be the other element's; within its element they are its own."""
    rng = np.random.default_rng(5)
    centre = rng.normal(size=DIM)
    near = centre + 0.05 * rng.normal(size=DIM)
    vectors = np.concatenate([c + 0.1 * rng.normal(size=(20, DIM)) for c in (centre, near)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    refs = [Ref("a", "sa")] * 20 + [Ref("b", "sb")] * 20 + [Ref("alone", "s")]
    vectors = np.concatenate([vectors, unit(rng, 1)]).astype(np.float32)
    harness = harness("flat")
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


def test_names_of_any_text_are_found_in_a_segment(harness):
    """Element and session names are stored sorted by their UTF-8 bytes and looked up by
    binary search: names that sort differently as text and as bytes, empty-looking ones."""
    rng = np.random.default_rng(8)
    names = ["b", "a", "é", "z", "Z", "a b", "日本", "ab", "\u00a0", "e\u0301"]
    refs = [Ref(name, f"{name}/s") for name in names for _ in range(3)]
    vectors = unit(rng, len(refs))
    harness = harness("flat")
    harness.upsert(list(range(len(refs))), refs, vectors)
    harness.build()
    for i, name in enumerate(names):
        found = harness.index.search(vectors[:1], 10, Filters(element_id=name))[0]
        assert sorted(h.key for h in found) == [3 * i, 3 * i + 1, 3 * i + 2], name
        assert harness.index.has_element(name)
        in_session = harness.index.search(vectors[:1], 10, Filters(session_id=f"{name}/s"))[0]
        assert len(in_session) == 3
    for absent in ("", "c", "日", "zz", "e"):
        assert not harness.index.has_element(absent)
    assert harness.index.describe(np.array([6])) == {6: ("id6", "é", "é/s")}
    assert harness.index.session_counts() == dict.fromkeys(names, 1)
