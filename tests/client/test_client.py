"""``Client`` against a real server: every call, batches split at the server's limit, the
service's error detail, the API key."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from hsn_client import Client, HsnError
from hsn_client.operations import Operations

from model.shards import write_shards
from tests.app.conftest import Server
from tests.app.helpers import NPY, npy
from tests.client.conftest import KEY, MAX_BATCH


def requests_to(raw, route: str, status: int = 200) -> float:
    """POST requests to ``route`` answered with ``status`` so far, from the server's metrics."""
    text = raw.get("/metrics").text
    pattern = rf'hsn_requests_total{{method="POST",route="{route}",status="{status}"}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_embed_splits_a_batch_over_the_servers_limit(client, raw, stored_data):
    x = stored_data.signals[:10, 0]
    assert raw.post("/embed", json={"signals": x.tolist()}).status_code == 413  # a real limit
    before = requests_to(raw, "/embed")
    embeddings = client.embed(x)
    assert requests_to(raw, "/embed") - before == 3  # 4 + 4 + 2
    assert embeddings.shape == (10, 32) and embeddings.dtype == np.float32
    one_by_one = [raw.post("/embed", json={"signals": [s.tolist()]}).json() for s in x]
    expected = [answer["embeddings"][0] for answer in one_by_one]
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)


def test_bodies_over_the_servers_byte_limit_are_cut_smaller(model_dir, stored_data, tmp_path):
    """A small HSN_MAX_BODY_BYTES, read from /openapi.json: 10 signals of 128 float32 samples
    go in pieces of at most two (a .npy of two is 1,152 bytes, of three 1,664)."""
    server = Server(model_dir, tmp_path / "data", HSN_MAX_BODY_BYTES="1200").start()
    try:
        x = stored_data.signals[:10, 0]
        with httpx.Client(base_url=server.url, timeout=30) as raw, Client(server.url) as client:
            assert raw.post("/embed", json={"signals": x[:3].tolist()}).status_code == 413
            embeddings = client.embed(x)
            assert requests_to(raw, "/embed") == 6  # 10 -> 5 + 5, each 5 -> 2 + (1 + 2)
            alone = raw.post("/embed", content=npy(x[-1:]), headers=NPY).json()["embeddings"]
            np.testing.assert_allclose(embeddings[-1:], alone, atol=1e-6)
            with pytest.raises(HsnError) as too_large:  # one reference's JSON is over 1,200
                client.add_references(x[:2], ["e", "e"], ["s", "s"])
            assert too_large.value.status == 413
            assert str(too_large.value).startswith("references 0 to 0: 413 from POST /references")
    finally:
        server.stop()


def test_once_a_piece_was_cut_the_next_start_at_the_size_that_fitted():
    operations = Operations(max_batch=10, npy=True)
    operations.max_body_bytes = 250
    built = []

    def body_of(start, stop):  # 100 bytes an item
        built.append((start, stop))
        return {"content": b"x" * 100 * (stop - start)}

    pieces = [(a, b) for a, b, _ in operations._pieces(40, 10, body_of)]
    assert [a for a, _ in pieces] == [0, *[b for _, b in pieces[:-1]]] and pieces[-1][1] == 40
    assert all(100 * (b - a) <= 250 for a, b in pieces)
    first = [p for p in built if p[1] <= 10]  # the first ten were cut from 10 down to 2
    assert len(first) == 11 and built[len(first) :] == pieces[-15:]  # the rest built once


def test_npy_and_json_bodies_and_signals_of_mixed_lengths_give_the_same_answers(
    service, client, stored_data
):
    x = stored_data.signals[:6]  # (6, 1, 128): channels given
    with Client(service.url, api_key=KEY, npy=False) as as_json:
        np.testing.assert_allclose(as_json.embed(x), client.embed(x), atol=1e-6)
        mixed = [x[0, 0], x[1, 0, :96], x[2]]  # (L,) and (C, L), two lengths: JSON
        one_length_each = [client.embed(s) for s in (x[0:1], x[1:2, :, :96], x[2:3])]
        np.testing.assert_allclose(client.embed(mixed), np.concatenate(one_length_each), atol=1e-6)


def test_keypoints_in_manifest_order(client, raw, stored_data):
    x = stored_data.signals[:6, 0]
    keypoints = client.keypoints(x)
    assert keypoints.names == client.model()["keypoint_names"]
    assert keypoints.positions.shape == keypoints.confidences.shape == (6, len(keypoints.names))
    answers = [
        raw.post("/keypoints", content=npy(x[i : i + 3]), headers=NPY).json() for i in (0, 3)
    ]
    expected = [[k["position"] for k in s] for answer in answers for s in answer["keypoints"]]
    np.testing.assert_allclose(keypoints.positions, expected, atol=1e-3)
    assert keypoints.model_version == answers[0]["model_version"]


def test_search_finds_each_stored_signal_first_with_its_element(client, raw, stored_data):
    index = [0, 9, 30, 41, 60, 77]
    results = client.search(stored_data.signals[index, 0], k=3)
    assert len(results) == 6
    for i, result in zip(index, results, strict=True):
        assert result.neighbors[0].id == f"ref-{i}" and result.neighbors[0].similarity > 0.999
        assert result.predicted_element.element_id == stored_data.element_ids[i]
        assert 0 <= result.anomaly.score <= 1 and len(result.neighbors) == 3
    element = str(stored_data.element_ids[30])
    only = client.search(stored_data.signals[[0, 30], 0], k=4, element_id=element)
    assert {n.element_id for r in only for n in r.neighbors} == {element}
    answer = raw.post(
        "/search", json={"signals": [stored_data.signals[9, 0].tolist()], "k": 3}
    ).json()
    expected = [(n["id"], n["similarity"]) for n in answer["results"][0]["neighbors"]]
    assert [(n.id, pytest.approx(n.similarity, abs=1e-5)) for n in results[1].neighbors] == expected


def test_references_are_added_read_listed_and_deleted(client, stored_data):
    x = stored_data.signals[:6, 0]
    when = [datetime(2026, 11, 2, 22, i, tzinfo=UTC) for i in range(6)]
    ids = client.add_references(
        x,
        ["client-e"] * 6,
        ["client-e/s0"] * 3 + ["client-e/s1"] * 3,
        ids=[f"client-{i}" for i in range(6)],
        metadata=[{"n": i} for i in range(6)],
        recorded_at=when,
    )
    assert ids == [f"client-{i}" for i in range(6)]
    reference = client.get_reference("client-4")
    np.testing.assert_array_equal(reference.signal, x[4])
    assert (reference.session_id, reference.metadata) == ("client-e/s1", {"n": 4})
    assert reference.recorded_at == when[4]
    first = client.list_references(element_id="client-e", limit=4)
    rest = client.list_references(element_id="client-e", limit=4, offset=4)
    assert (first.total, len(first.items), len(rest.items)) == (6, 4, 2)
    assert [r.id for r in first.items + rest.items] == ids and first.items[0].length == 128
    new = client.add_references(x[:5], ["client-e"] * 5, ["client-e/s2"] * 5)
    assert len(set(new) - set(ids)) == 5  # ids the service chose
    for ref_id in ids + new:
        client.delete_reference(ref_id)
    assert client.list_references(element_id="client-e").total == 0
    with pytest.raises(HsnError) as missing:
        client.get_reference("client-4")
    assert missing.value.status == 404 and missing.value.detail[0]["loc"] == ["path", "ref_id"]


def test_an_npz_loads_in_pieces_as_the_whole_file_would(client, raw, stored_data, tmp_path, capsys):
    # Session ids repeat across the two elements, but not within a piece of 4: the service,
    # given each piece alone, would keep "s0" for both elements.
    path = tmp_path / "pieces.npz"
    arrays = {
        "signals": stored_data.signals[:8],
        "element_ids": np.array(["npz-a"] * 4 + ["npz-b"] * 4),
        "session_ids": np.array(["s0", "s0", "s1", "s1"] * 2),
    }
    np.savez(path, **arrays, ids=np.array([f"npz-{i}" for i in range(8)]))
    whole = tmp_path / "whole.npz"
    np.savez(whole, **arrays, ids=np.array([f"whole-{i}" for i in range(8)]))
    assert raw.post("/references/npz", content=whole.read_bytes()).status_code == 201

    before = requests_to(raw, "/references/npz", 201)
    assert client.load_npz(path, progress=True) == [f"npz-{i}" for i in range(8)]
    assert requests_to(raw, "/references/npz", 201) - before == 8 / MAX_BATCH
    assert "loading pieces.npz: 8/8 references\n" in capsys.readouterr().err
    sessions = [client.get_reference(f"npz-{i}").session_id for i in range(8)]
    assert sessions == [client.get_reference(f"whole-{i}").session_id for i in range(8)]
    assert sessions[0] == "npz-a/s0" and sessions[4] == "npz-b/s0"
    client.load_npz(path, progress=False)  # with ids, loading again replaces
    assert client.list_references(element_id="npz-a").total == 8  # 4 + 4 of whole.npz

    arrays["signals"] = arrays["signals"].copy()
    arrays["signals"][5, 0, 3] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(HsnError) as refused:
        client.load_npz(path, progress=False)
    assert refused.value.status == 422
    assert f"{path}, references 4 to 7: 422 from POST /references/npz" in str(refused.value)
    for ref_id in [f"{p}-{i}" for p in ("npz", "whole") for i in range(8)]:
        client.delete_reference(ref_id)


def test_a_sharded_directory_loads_shard_by_shard(client, stored_data, tmp_path):
    data = stored_data.subset(np.arange(10))
    data.extras = {"ids": np.array([f"shard-{i}" for i in range(10)])}
    index = write_shards([data], tmp_path / "shards", shard_size=4)
    assert len(index["shards"]) == 3
    stored = client.load_npz(tmp_path / "shards", progress=False)
    assert sorted(stored) == sorted(f"shard-{i}" for i in range(10))
    for ref_id in stored:
        assert client.get_reference(ref_id).element_id in set(data.element_ids)
        client.delete_reference(ref_id)
    with pytest.raises(ValueError, match="not a sharded dataset"):
        client.load_npz(tmp_path, progress=False)


def test_align_by_the_signals_own_keypoints_a_reference_or_given_positions(
    service, client, raw, stored_data
):
    x = stored_data.signals[:3, 0]
    own = client.align(x, average=True)
    assert len(own.results) == 3 and own.mean.shape == own.std.shape == (128,)
    assert own.results[0].aligned.shape == (128,) and own.results[0].warp.source[0] == 0
    with Client(service.url, api_key=KEY, npy=False) as as_json:
        same = as_json.align(x, average=True)
    assert same.target == pytest.approx(own.target)
    np.testing.assert_allclose(same.mean, own.mean, atol=1e-6)

    by_reference = client.align(x, reference_id="ref-0", mode="shift", keypoints=["main_peak"])
    answer = raw.post(
        "/align",
        json={
            "signals": x.tolist(),
            "target": {"reference_id": "ref-0"},
            "mode": "shift",
            "keypoints": ["main_peak"],
        },
    ).json()
    assert by_reference.target == pytest.approx(answer["target"])
    assert by_reference.reference == answer["reference"] == "main_peak"
    assert all(r.keypoints_used == ["main_peak"] for r in by_reference.results)

    placed = client.align(x, positions={"main_peak": 64.0}, mode="shift", length=100)
    assert placed.target == {"main_peak": 64.0} and placed.results[0].aligned.shape == (100,)
    assert placed.mean is None

    with pytest.raises(HsnError) as too_many:  # one request, never split: the limit applies
        client.align(stored_data.signals[: MAX_BATCH + 1, 0])
    assert too_many.value.status == 413


def test_verify_a_session_of_a_stored_element(client, raw, stored_data):
    element = str(stored_data.element_ids[0])
    signals = stored_data.signals[stored_data.element_ids == element][-3:, 0]
    verification = client.verify(signals, element)
    answer = raw.post("/verify", json={"element_id": element, "signals": signals.tolist()})
    expected = answer.json()
    assert verification.element_id == element and verification.signals_used == 3
    assert verification.score == pytest.approx(expected["score"], abs=1e-6)
    assert verification.accepted == (verification.score >= verification.threshold)
    assert verification.nearest_other.element_id == expected["nearest_other"]["element_id"]


def test_elements_and_their_drift(client, raw, stored_data):
    page = client.elements(limit=2, offset=1)
    expected = raw.get("/elements", params={"limit": 2, "offset": 1}).json()
    assert [e.element_id for e in page.items] == [e["element_id"] for e in expected["items"]]
    assert (page.total, page.limit, page.offset) == (expected["total"], 2, 1)
    assert page.items[0].first_recorded_at <= page.items[0].last_recorded_at
    named = page.items[0].element_id
    found = client.elements(contains=named.upper())
    assert [e.element_id for e in found.items] == [named] and found.total == 1

    element = str(stored_data.element_ids[0])
    report = client.element_drift(element, baseline_sessions=3)
    assert len(report.baseline.sessions) == 3 and len(report.sessions) == 1
    assert report.sessions[0].drifting == (report.sessions[0].score > report.threshold)
    assert report.calibrated_on.sessions > 0

    session = stored_data.signals[stored_data.element_ids == element][-4:, 0]
    drift = client.drift(session, element, baseline_sessions=3)
    answer = raw.post(
        "/drift", json={"element_id": element, "signals": session.tolist(), "baseline_sessions": 3}
    ).json()
    assert drift.signals == 4 and 0 <= drift.p_value <= 1 and drift.mmd >= 0
    # what depends on the request alone (a refit of the calibration may land between the two)
    assert drift.centroid_distance == pytest.approx(answer["centroid_distance"])
    assert drift.mmd == pytest.approx(answer["mmd"])
    assert drift.baseline.sessions == answer["baseline"]["sessions"]


def test_errors_carry_the_services_detail(service, client, stored_data):
    short = stored_data.signals[:3, 0, :10]
    with pytest.raises(HsnError) as npy_body:
        client.embed(short)
    assert npy_body.value.status == 422
    assert npy_body.value.detail[0]["loc"] == ["body"]  # the service's field for a .npy body
    assert "10 samples, shorter than the minimum" in str(npy_body.value)
    with Client(service.url, api_key=KEY, npy=False) as as_json, pytest.raises(HsnError) as json:
        as_json.embed(short)
    assert json.value.detail[0]["loc"] == ["body", "signals"]

    x = stored_data.signals[:8, 0].copy()
    x[1, 10], x[5, 10] = np.nan, np.inf
    with pytest.raises(HsnError) as first_piece:
        client.embed(x)
    assert first_piece.value.detail[0]["loc"] == ["body", "1"]
    assert str(first_piece.value).startswith("signals 0 to 3: 422 from POST /embed: body.1:")
    x[1, 10] = 0.0
    with pytest.raises(HsnError) as second_piece:  # indices count from the piece's start
        client.embed(x)
    assert second_piece.value.detail[0]["loc"] == ["body", "1"]
    assert str(second_piece.value).startswith("signals 4 to 7: 422 from POST /embed: body.1:")

    with pytest.raises(HsnError) as unknown:
        client.verify(x[:2], "nobody")
    assert unknown.value.status == 404
    with pytest.raises(HsnError) as too_large:
        client.search(x[:1], k=1000)
    assert too_large.value.detail[0]["loc"] == ["body", "k"]
    with pytest.raises(HsnError) as no_element:
        client.element_drift("a/b")  # a slash in an id reaches the route, which knows no a/b
    assert no_element.value.status == 404 and "a/b" in no_element.value.detail[0]["msg"]


def test_the_api_key_is_sent_and_its_absence_refused(service, stored_data):
    x = stored_data.signals[:2, 0]
    for key in (None, "wrong"):
        with Client(service.url, api_key=key) as client:
            for call in (
                lambda c: c.embed(x),
                lambda c: c.add_references(x, ["e", "e"], ["s", "s"], ids=["k-0", "k-1"]),
            ):
                with pytest.raises(HsnError) as refused:
                    call(client)
                assert refused.value.status == 401
                assert refused.value.detail[0]["loc"] == ["header", "authorization"]
    with Client(service.url, api_key=KEY) as client:
        assert client.embed(x).shape == (2, 32)


def test_a_client_of_a_collection_calls_its_routes(service, pump_data):
    """Collections made, used through ``collection=`` (batches split as anywhere) and deleted;
    the plain client meanwhile still speaks to default."""
    with Client(service.url, api_key=KEY) as admin:
        made = admin.create_collection("pump-client", "pump")
        assert (made.name, made.model, made.in_channels, made.dim) == ("pump-client", "pump", 2, 24)
        assert "pump-client" in [c.name for c in admin.collections()]
        with pytest.raises(HsnError) as exists:
            admin.create_collection("pump-client", "pump")
        assert exists.value.status == 409
        signals = pump_data.signals[:6]  # 6 > MAX_BATCH: sent in two requests
        with Client(service.url, api_key=KEY, collection="pump-client") as pump:
            ids = pump.add_references(
                signals, pump_data.element_ids[:6].tolist(), pump_data.session_ids[:6].tolist()
            )
            assert pump.embed(signals).shape == (6, 24)
            nearest = pump.search(signals[:2], k=1)
            assert [r.neighbors[0].id for r in nearest] == ids[:2]
            assert pump.model()["in_channels"] == 2
            assert pump.list_references().total == 6
        assert admin.collection("pump-client").references == 6
        assert admin.model()["in_channels"] == 1  # the plain client: default
        admin.delete_collection("pump-client")
        with pytest.raises(HsnError) as gone:
            admin.collection("pump-client")
        assert gone.value.status == 404


def test_search_with_explain_returns_each_anomaly_map(client, stored_data):
    signals = stored_data.signals[:3]  # 3 < MAX_BATCH... and 128 samples each
    explained = client.search(signals, k=2, explain=True)
    plain = client.search(signals, k=2)
    for with_map, without in zip(explained, plain, strict=True):
        assert with_map.anomaly.map.shape == (signals.shape[-1],)
        assert with_map.anomaly.peak == int(np.argmax(with_map.anomaly.map))
        assert without.anomaly.map is None and without.anomaly.peak is None
