"""POST /align through the service: the model's keypoints, the four kinds of target, the response
contract (warps that reproduce the aligned signal) and errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from app.alignment import Warp, apply_warp
from tests.app.helpers import NPY, npy, references


@pytest.fixture
def stored(client, service_data):
    index = np.arange(len(service_data))
    client.post(
        "/references", json={"references": references(service_data, index)}
    ).raise_for_status()
    return service_data


def test_signals_are_aligned_on_their_own_median_keypoints(client, service_data):
    signals = service_data.signals[:6, 0]
    answer = client.post("/align", json={"signals": signals.tolist(), "average": True}).json()
    names = client.get("/model").json()["keypoint_names"]
    assert set(answer["target"]) <= set(names) and answer["reference"] in answer["target"]
    assert len(answer["results"]) == 6
    for signal, result in zip(signals, answer["results"], strict=True):
        warp = result["warp"]
        assert warp["source"][0] == 0 and warp["source"][-1] == len(signal) - 1
        assert np.all(np.diff(warp["source"]) > 0) and np.all(np.diff(warp["target"]) > 0)
        # aligned[t] = signal[w^-1(t)], linear, the ends held
        grid = np.arange(len(signal))
        inverse = np.interp(grid, warp["target"], warp["source"])
        expected = np.interp(inverse, np.arange(len(signal)), signal)
        assert np.allclose(result["aligned"], expected, atol=1e-4)
        used = result["keypoints_used"]
        assert set(used) | {s["name"] for s in result["skipped"]} == set(names)
        # each used anchor lands on the target, as far as its shrinkage lets it
        assert answer["reference"] in used
    mean, std = np.array(answer["average"]["mean"]), np.array(answer["average"]["std"])
    aligned = np.array([r["aligned"] for r in answer["results"]])
    assert np.allclose(mean, aligned.mean(0), atol=1e-4) and np.allclose(
        std, aligned.std(0), atol=1e-4
    )


def test_shift_moves_each_signal_by_its_reference_keypoint(client, service_data):
    signals = service_data.signals[:4, 0]
    positions = {"main_peak": 60.0}
    answer = client.post(
        "/align",
        json={"signals": signals.tolist(), "mode": "shift", "target": {"positions": positions}},
    ).json()
    assert answer["reference"] == "main_peak" and answer["average"] is None
    keypoints = client.post("/keypoints", json={"signals": signals.tolist()}).json()["keypoints"]
    for result, found in zip(answer["results"], keypoints, strict=True):
        main = next(k["position"] for k in found if k["name"] == "main_peak")
        warp = Warp(**result["warp"])
        assert apply_warp(warp, np.array([main]))[0] == pytest.approx(60.0, abs=1e-3)
        assert np.diff(np.array(warp.target) - np.array(warp.source)).max() < 1e-6  # a shift


def test_targets_from_a_reference_or_an_element(client, stored):
    signals = stored.signals[:3, 0].tolist()
    by_reference = client.post(
        "/align", json={"signals": signals, "target": {"reference_id": "ref-5"}}
    ).json()
    one = client.post("/keypoints", json={"signals": [stored.signals[5, 0].tolist()]}).json()
    confident = {k["name"]: k["position"] for k in one["keypoints"][0] if k["confidence"] >= 0.5}
    assert by_reference["target"] == pytest.approx(confident, abs=1e-3)
    element = str(stored.element_ids[0])
    by_element = client.post(
        "/align", json={"signals": signals, "target": {"element_id": element}, "length": 100}
    ).json()
    assert all(len(r["aligned"]) == 100 for r in by_element["results"])
    as_npy = client.post(
        "/align",
        content=npy(stored.signals[:3, 0]),
        headers=NPY,
        params={"element_id": element, "length": 100, "mode": "shift"},
    ).json()
    assert as_npy["target"] == pytest.approx(by_element["target"])


def test_align_errors_name_the_field(client, stored):
    signals = stored.signals[:2, 0].tolist()

    def error(body, status=422):
        response = client.post("/align", json={"signals": signals, **body})
        assert response.status_code == status, response.text
        return response.json()["detail"][0]

    assert error({"target": {"reference_id": "nope"}}, 404)["loc"] == [
        "body",
        "target",
        "reference_id",
    ]
    assert error({"target": {"element_id": "nobody"}}, 404)["loc"] == [
        "body",
        "target",
        "element_id",
    ]
    assert error({"target": {}})["loc"] == ["body", "target"]
    assert error({"target": {"positions": {"onset": 1.0}, "element_id": "x"}})["loc"] == [
        "body",
        "target",
    ]
    missing = error({"target": {"positions": {"onset": 3.0}}, "keypoints": ["end"]})
    assert missing["loc"] == ["body", "target", "positions"] and "end" in missing["msg"]
    assert error({"target": {"positions": {"R_peak": 3.0}}})["loc"] == [
        "body",
        "target",
        "positions",
        "R_peak",
    ]
    assert error({"keypoints": ["bogus"]})["loc"] == ["body", "keypoints", "0"]
    assert error({"mode": "sideways"})["loc"] == ["body", "mode"]
    assert error({"length": 1})["loc"] == ["body", "length"]
    mixed = client.post(
        "/align", json={"signals": [signals[0], signals[1][:100]], "average": True}
    ).json()
    assert len(mixed["average"]["mean"]) == len(signals[0])  # the longest signal's grid
    assert [len(r["aligned"]) for r in mixed["results"]] == [len(signals[0])] * 2
