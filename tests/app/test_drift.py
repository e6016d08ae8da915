"""Drift monitoring: the score's properties on vectors made to order, and the API on real
references (recorded_at, GET /elements, GET /elements/{id}/drift, POST /drift)."""

from __future__ import annotations

import numpy as np
import pytest

from app.drift import (
    Baseline,
    DriftCalibration,
    NothingToCompare,
    RecordedSession,
    session_drift,
    split,
    two_sample_test,
)
from tests.app.helpers import NPY, npy, npz_body
from training.synthetic import SynthConfig, generate

DIM = 32
SHARED = 4  # directions along which every element's sessions vary


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


LENGTH = 64
TIME = np.arange(LENGTH)


def make_element(
    rng, basis, sessions: int, drift: np.ndarray | None = None, bump: float = 0.0
) -> list[RecordedSession]:
    """Sessions of 12 signals around one centre; each session moves the centre along the shared
    directions (session-to-session variation); ``drift`` is added to the later ones. Their
    signals: one wave of the element's own place and width, plus noise; from the fourth session
    on a bump of ``bump`` times the wave's height per session grows beside the wave, which the
    embeddings made to order here do not see."""
    centre = rng.normal(size=DIM)
    place, width = rng.uniform(20, 40), rng.uniform(3, 6)
    wave = np.exp(-0.5 * ((TIME - place) / width) ** 2)
    out = []
    for s in range(sessions):
        moved = centre + rng.normal(0, 1.0, SHARED) @ basis
        if drift is not None and s >= 3:
            moved = moved + drift * (s - 2)
        shape = wave + bump * max(0, s - 2) * np.exp(-0.5 * ((TIME - place - 14) / 2) ** 2)
        signals = [(shape + rng.normal(0, 0.05, LENGTH))[None] for _ in range(12)]
        embeddings = unit(moved * 3 + rng.normal(0, 1.0, (12, DIM)))
        out.append(RecordedSession(f"s{s}", f"2026-01-{s + 1:02d}", embeddings, signals))
    return out


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0][:SHARED]  # (SHARED, DIM) orthonormal
    elements = [make_element(rng, basis, 8) for _ in range(120)]
    calibration = DriftCalibration.fit([Baseline.of(e[:3]) for e in elements])
    return rng, basis, elements, calibration


def test_clean_sessions_score_like_the_baselines_own(world):
    _, _, elements, calibration = world
    scores = np.concatenate(
        [[d.score for d in session_drift(*split(e, 3), calibration, 0.99)] for e in elements]
    )
    assert 0.35 < np.median(scores) < 0.65  # calibrated: a clean session is a typical one
    assert np.mean(scores > 0.99) < 0.03


def test_sessions_of_unequal_noise_pass_the_threshold_no_more_often_than_calibrated():
    """A left-out baseline session is measured in its comparison sessions' spread, as a later
    session is: measured in a spread of its own noise too, a noisy one looked nearer, and later
    sessions as noisy passed .99 3.3% of the time here (and .95 9.5%)."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0][:SHARED]
    elements = []
    for _ in range(120):
        centre, sessions = rng.normal(size=DIM), []
        for s in range(8):
            moved = centre + rng.normal(0, 1.0, SHARED) @ basis
            noisy = unit(moved * 3 + rng.normal(0, rng.uniform(0.3, 3.0), (12, DIM)))
            sessions.append(RecordedSession(f"s{s}", "t", noisy, [np.ones((1, 8))] * 12))
        elements.append(sessions)
    calibration = DriftCalibration.fit([Baseline.of(e[:3]) for e in elements])
    later = np.concatenate(
        [[d.distance for d in session_drift(*split(e, 3), calibration, 0.99)] for e in elements]
    )
    shares = calibration.null(later)
    assert np.mean(shares > 0.99) < 0.015 and np.mean(shares > 0.95) < 0.06


def test_a_shift_along_the_sessions_own_directions_is_not_drift_but_the_same_elsewhere_is(world):
    rng, basis, _, calibration = world
    elsewhere = np.linalg.qr(np.concatenate([basis, rng.normal(size=(1, DIM))]).T)[0][:, -1]
    size = 1.0  # per session after the third: the first drifted session moves this far
    along = [make_element(rng, basis, 8, drift=size * basis[0]) for _ in range(30)]
    across = [make_element(rng, basis, 8, drift=size * elsewhere) for _ in range(30)]

    def first_drifted(elements):
        return [session_drift(*split(e, 3), calibration, 0.99)[0] for e in elements]

    # The naive centroid distance sees two equal moves; the distance sees only the second as
    # drift (its share of the baseline sessions' own distances), and so does the score
    across, along = first_drifted(across), first_drifted(along)
    assert np.median(calibration.null([d.distance for d in across])) > 0.9
    assert np.median(calibration.null([d.distance for d in along])) < 0.8
    assert np.median([d.score for d in across]) > np.median([d.score for d in along]) + 0.2


def test_a_change_of_shape_the_embedding_misses_is_drift_by_its_map(world):
    rng, basis, _, calibration = world
    changed = [make_element(rng, basis, 8, bump=0.3) for _ in range(30)]
    clean = [make_element(rng, basis, 8) for _ in range(30)]
    first = [session_drift(*split(e, 3), calibration, 0.99)[0] for e in changed]
    unchanged = [session_drift(*split(e, 3), calibration, 0.99)[0] for e in clean]
    assert np.median([d.map_distance for d in first]) > 2 * np.median(
        [d.map_distance for d in unchanged]
    )
    assert np.median([d.score for d in first]) > 0.95
    assert np.median([d.score for d in unchanged]) < 0.8
    # the distance alone, as before the map joined, ranks them no better than chance
    distances = [d.distance for d in first], [d.distance for d in unchanged]
    assert abs(np.median(distances[0]) - np.median(distances[1])) < 0.5


def test_a_left_out_session_is_measured_in_the_others_spread_or_the_whole_baselines():
    rng = np.random.default_rng(2)
    quiet, loud = unit(rng.normal(0, 0.1, (6, DIM)) + 1), unit(rng.normal(0, 1.0, (6, DIM)) + 1)
    sessions = [RecordedSession(f"s{i}", "t", e, []) for i, e in enumerate([quiet, loud, quiet])]
    baseline = Baseline.of(sessions)
    shifts = baseline.leave_one_out_shifts()
    others = np.concatenate([quiet, quiet])
    expected = (loud.mean(0) - others.mean(0)) / np.sqrt(quiet.var(0).mean())
    np.testing.assert_allclose(shifts[1], expected, rtol=1e-5)  # the two quiet ones' spread
    singles = [RecordedSession(f"s{i}", "t", quiet[i : i + 1], []) for i in range(2)]
    pair = Baseline.of(singles)  # one signal left beside the left-out one: no spread of its own
    np.testing.assert_allclose(
        pair.leave_one_out_shifts()[0], (quiet[0] - quiet[1]) / pair.spread, rtol=1e-5
    )


def test_split_and_baseline_refuse_what_cannot_be_compared(world):
    _, _, elements, _ = world
    with pytest.raises(NothingToCompare, match="8 session"):
        split(elements[0], 8)
    with pytest.raises(NothingToCompare, match="one signal"):
        Baseline.of([RecordedSession("s", "t", elements[0][0].embeddings[:1], [])])
    with pytest.raises(NothingToCompare, match="two or more sessions"):
        DriftCalibration.fit([Baseline.of(elements[0][:1])])


def test_the_two_sample_test_tells_a_shifted_batch_from_the_same_one():
    rng = np.random.default_rng(1)
    baseline = unit(rng.normal(size=(60, DIM)) + 2)
    same = two_sample_test(unit(rng.normal(size=(20, DIM)) + 2), baseline, permutations=500)
    shifted = two_sample_test(unit(rng.normal(size=(20, DIM)) + 2.6), baseline, permutations=500)
    assert same.p_value > 0.05
    assert shifted.p_value <= 0.01 and shifted.mmd > same.mmd
    assert shifted.p_value >= 1 / 501  # never zero: (1 + hits) / (1 + permutations)


# -- the API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drift_set():
    return generate(
        SynthConfig(
            elements=5,
            sessions=5,
            min_sessions=5,
            signals=4,
            length=128,
            seed=21,
            drift_fraction=0.4,
        )
    )


def test_elements_and_their_drift(client, drift_set):
    # Stored out of time order: sessions are ordered by when they were recorded
    order = np.argsort(-drift_set.extras["session_index"], kind="stable")
    stored = drift_set.subset(order)
    response = client.post(
        "/references/npz", content=npz_body(stored, recorded_at=stored.extras["recorded_at"])
    )
    assert response.status_code == 201

    page = client.get("/elements", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    first = page["items"][0]
    assert first["element_id"] == sorted(set(drift_set.element_ids))[1]
    assert first["references"] == 20 and first["sessions"] == 5
    assert first["first_recorded_at"] < first["last_recorded_at"]
    found = client.get("/elements", params={"contains": first["element_id"][-3:].upper()}).json()
    assert [e["element_id"] for e in found["items"]] == [first["element_id"]]
    assert found["total"] == 1
    assert client.get("/elements", params={"contains": "%"}).json()["total"] == 0  # no wildcard

    element = first["element_id"]
    report = client.get(f"/elements/{element}/drift", params={"baseline_sessions": 2}).json()
    assert report["baseline"]["sessions"] == [f"{element}/session_0", f"{element}/session_1"]
    assert report["baseline"]["references"] == 8
    sessions = report["sessions"]
    assert [s["session_id"] for s in sessions] == [f"{element}/session_{i}" for i in (2, 3, 4)]
    assert [s["recorded_at"] for s in sessions] == sorted(s["recorded_at"] for s in sessions)
    for s in sessions:
        assert 0 <= s["score"] <= 1 and s["distance"] >= 0 and s["references"] == 4
        assert s["drifting"] == (s["score"] > report["threshold"])
    # baseline pairs of the 5 elements: half find the directions, half (2 x 2) measure them
    assert report["calibrated_on"] == {"elements": 5, "sessions": 4}

    default = client.get(f"/elements/{element}/drift").json()  # HSN_DRIFT_BASELINE_SESSIONS=3
    assert len(default["baseline"]["sessions"]) == 3 and len(default["sessions"]) == 2

    metrics = client.get("/metrics").text
    assert "hsn_drift_score_count 5.0" in metrics and "hsn_elements_drifting" in metrics
    assert element not in metrics  # never one series per element


def test_drift_of_a_batch_not_stored(client, drift_set):
    client.post(
        "/references/npz", content=npz_body(drift_set, recorded_at=drift_set.extras["recorded_at"])
    ).raise_for_status()
    element = str(drift_set.element_ids[0])
    last = drift_set.signals[drift_set.session_ids == f"{element}/session_4"][:, 0]
    answer = client.post("/drift", json={"element_id": element, "signals": last.tolist()}).json()
    assert answer["signals"] == 4 and answer["baseline"]["references"] == 12
    assert 0 <= answer["score"] <= 1 and 0 < answer["p_value"] <= 1
    assert answer["permutations"] == 1000 and answer["centroid_distance"] >= 0
    as_npy = client.post(
        "/drift", content=npy(last), headers=NPY, params={"element_id": element}
    ).json()
    assert as_npy["score"] == answer["score"] and as_npy["p_value"] == answer["p_value"]


def test_drift_fits_are_bounded_by_the_sessions_elements_have(client, drift_set):
    """Asking for ever larger baselines costs no new fits: a baseline holds at most what its
    element has (5 sessions here), and POST /drift is calibrated for the baseline it uses."""
    client.post(
        "/references/npz", content=npz_body(drift_set, recorded_at=drift_set.extras["recorded_at"])
    ).raise_for_status()
    element = str(drift_set.element_ids[0])
    signals = drift_set.signals[:2, 0].tolist()
    answers = [
        client.post(
            "/drift", json={"element_id": element, "signals": signals, "baseline_sessions": n}
        )
        for n in (5, 6, 50, 9999)
    ]
    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["score"] for a in answers}) == 1  # one baseline, one calibration
    assert all(len(a.json()["baseline"]["sessions"]) == 5 for a in answers)
    fits = client.app.state.services.default.calibrations
    assert [k for k in fits._entries if k[0] == "drift"] == [("drift", 5)]


def test_drift_errors_name_the_field(client, drift_set):
    client.post(
        "/references/npz", content=npz_body(drift_set, recorded_at=drift_set.extras["recorded_at"])
    ).raise_for_status()
    element = str(drift_set.element_ids[0])
    signals = drift_set.signals[:2, 0].tolist()

    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["detail"][0]

    assert error(client.get("/elements/nobody/drift"), 404)["loc"] == ["path", "element_id"]
    refused = error(client.get(f"/elements/{element}/drift?baseline_sessions=5"), 409)
    assert refused["loc"] == ["query", "baseline_sessions"] and "5 session" in refused["msg"]
    assert error(client.get(f"/elements/{element}/drift?baseline_sessions=0"), 422)["loc"] == [
        "query",
        "baseline_sessions",
    ]
    missing = error(client.post("/drift", json={"element_id": "nobody", "signals": signals}), 404)
    assert missing["loc"] == ["body", "element_id"]
    one = error(client.post("/drift", json={"element_id": element, "signals": signals[:1]}), 422)
    assert one["loc"] == ["body", "signals"]
    assert error(client.post("/drift", json={"signals": signals}), 422)["loc"] == [
        "body",
        "element_id",
    ]


def test_recorded_at_is_stored_in_utc_and_checked(client, service_data):
    signal = service_data.signals[0, 0].tolist()
    ref = {"element_id": "e", "session_id": "s", "signal": signal}
    created = client.post(
        "/references",
        json={"references": [{**ref, "id": "a", "recorded_at": "2026-03-01T12:00:00+02:00"}]},
    )
    assert created.status_code == 201
    assert client.get("/references/a").json()["recorded_at"] == "2026-03-01T10:00:00.000+00:00"
    client.post("/references", json={"references": [{**ref, "id": "b"}]}).raise_for_status()
    b = client.get("/references/b").json()
    assert b["recorded_at"] == b["updated_at"]  # default: when stored
    bad = client.post("/references", json={"references": [{**ref, "recorded_at": "last tuesday"}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"][:4] == ["body", "references", 0, "recorded_at"]
