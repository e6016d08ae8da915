"""/embed and /keypoints: shapes, JSON and npy agreeing, batch independence, mixed lengths."""

import numpy as np
import pytest
import torch

from app.onnx_engine import derive_session
from model import HierarchicalSignalNet, ModelConfig
from tests.app.helpers import NPY, npy


def test_embed_returns_unit_vectors_with_dim_and_version(client, service_data):
    response = client.post("/embed", json={"signals": service_data.signals[:4, 0].tolist()})
    assert response.status_code == 200
    body = response.json()
    embeddings = np.array(body["embeddings"])
    assert embeddings.shape == (4, body["dim"]) == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert body["model_version"] == client.get("/model").json()["model_version"]


def test_channels_first_signals_are_accepted(client, service_data):
    one_channel = service_data.signals[:2, 0].tolist()
    explicit = [[s] for s in one_channel]  # (B, 1, L): one list per channel
    a = client.post("/embed", json={"signals": one_channel}).json()["embeddings"]
    b = client.post("/embed", json={"signals": explicit}).json()["embeddings"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_json_and_npy_give_the_same_numbers(client, service_data):
    x = service_data.signals[:5]
    for route in ("/embed", "/keypoints"):
        as_json = client.post(route, json={"signals": x[:, 0].tolist()}).json()
        as_npy = client.post(route, content=npy(x), headers=NPY).json()
        assert as_json == as_npy, route
    as_2d = client.post("/embed", content=npy(x[:, 0].astype(np.float64)), headers=NPY).json()
    np.testing.assert_allclose(as_2d["embeddings"], as_json_embed(client, x), atol=1e-6)


def as_json_embed(client, x):
    return client.post("/embed", json={"signals": x[:, 0].tolist()}).json()["embeddings"]


def test_a_signals_result_does_not_depend_on_its_batch_mates(client, service_data):
    x = service_data.signals[:, 0]
    alone = client.post("/embed", json={"signals": [x[7].tolist()]}).json()["embeddings"][0]
    crowd = client.post("/embed", json={"signals": x[3:12].tolist()}).json()["embeddings"][4]
    np.testing.assert_allclose(alone, crowd, atol=1e-5)


def test_mixed_lengths_in_one_request_keep_their_order(client, service_data):
    x = service_data.signals[:3, 0]
    mixed = [x[0].tolist(), x[1, :96].tolist(), x[2].tolist()]
    together = client.post("/embed", json={"signals": mixed}).json()["embeddings"]
    for signal, embedding in zip(mixed, together, strict=True):
        alone = client.post("/embed", json={"signals": [signal]}).json()["embeddings"][0]
        np.testing.assert_allclose(alone, embedding, atol=1e-5)


def test_keypoints_in_manifest_order_in_the_signals_own_samples(client, service_data):
    names = client.get("/model").json()["keypoint_names"]
    body = client.post("/keypoints", json={"signals": service_data.signals[:6, 0].tolist()}).json()
    assert len(body["keypoints"]) == 6
    for found, truth in zip(body["keypoints"], service_data.keypoints[:6], strict=True):
        assert [k["name"] for k in found] == names
        assert all(0 <= k["confidence"] <= 1 for k in found)
        errors = [abs(k["position"] - t) for k, t in zip(found, truth, strict=True)]
        assert np.median(errors) < 8  # a small model, elements it never saw


def test_a_shifted_signal_moves_its_keypoints(client, service_data):
    x = service_data.signals[0, 0]
    shifted = np.concatenate([np.full(16, x[0]), x[:-16]])
    body = client.post("/keypoints", json={"signals": [x.tolist(), shifted.tolist()]}).json()
    main = [kps[1]["position"] for kps in body["keypoints"]]  # main_peak
    assert main[1] - main[0] == pytest.approx(16, abs=3)


def test_onnx_runtime_serves_what_torchscript_computes(make_client, service_data):
    """ONNX Runtime is derived from the TorchScript export at start-up and must agree with it."""
    onnx, torchscript = make_client(), make_client(engine="torchscript")
    assert onnx.get("/ready").json()["engine"] == "onnx"
    assert torchscript.get("/ready").json()["engine"] == "torchscript"
    x = service_data.signals[:6, 0].tolist()
    for route, key in (("/embed", "embeddings"), ("/keypoints", "keypoints")):
        a, b = (
            onnx.post(route, json={"signals": x}).json(),
            torchscript.post(route, json={"signals": x}).json(),
        )
        if key == "embeddings":
            np.testing.assert_allclose(a[key], b[key], atol=1e-4)
        else:
            pa = [[k["position"] for k in s] for s in a[key]]
            pb = [[k["position"] for k in s] for s in b[key]]
            np.testing.assert_allclose(pa, pb, atol=1e-2)


def assert_onnx_agrees_at_any_length(net: HierarchicalSignalNet) -> None:
    """ONNX Runtime computes what TorchScript does at lengths other than the export's example
    (odd ones included): nothing may bake the example's length in."""
    scripted = torch.jit.script(net.eval())
    config = net.config
    manifest = {
        "model_config": config.to_dict(),
        "in_channels": config.in_channels,
        "trained_length": 128,
        "min_length": config.min_length,
    }
    session = derive_session(scripted, manifest, threads=1)
    for length in (config.min_length, 129, 333, 1000):
        x = torch.randn(3, config.in_channels, length)
        expected = [t.detach().numpy() for t in scripted.embed_and_keypoints(x)]
        for got, want in zip(session.run(None, {"x": x.numpy()}), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnx_runtime_agrees_on_a_morphology_part_at_any_length(shaped):
    """The re-centred window is gathered at positions decoded per signal, even where the anchor
    lies past the signal's end."""
    shaped.keypoint_offsets[1] = -100.0  # anchors past the end of the shorter signals
    assert_onnx_agrees_at_any_length(shaped)


def test_onnx_runtime_agrees_on_fine_keypoints_at_any_length(shaped):
    """The fine keypoint head repeats the GRU's steps and trims the conv features to match
    (an odd length leaves a step to trim)."""
    torch.manual_seed(0)
    config = ModelConfig(**{**shaped.config.to_dict(), "fine_keypoints": True})
    assert_onnx_agrees_at_any_length(HierarchicalSignalNet(config))


def test_without_a_usable_onnx_session_the_service_stays_on_torchscript(make_client, monkeypatch):
    def refuse(*_):
        raise ValueError("ONNX embeddings differ from TorchScript by up to 1e-1")

    monkeypatch.setattr("app.runtime.derive_session", refuse)
    assert make_client().get("/ready").json()["engine"] == "torchscript"
