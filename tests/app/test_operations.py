"""Health, readiness, metrics, the manifest, OpenAPI docs and API keys."""

from fastapi.routing import APIRoute, iter_route_contexts

from tests.app.helpers import references


def test_health_ready_and_model(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True and ready["references"] == 0
    assert ready["index"] == "flat" and ready["inference_workers"] >= 1  # auto: exact when small
    manifest = client.get("/model").json()
    assert manifest["format_version"] == 1 and manifest["model_version"] == ready["model_version"]


def test_metrics_count_requests_batches_and_index_size(client, service_data):
    client.post("/embed", json={"signals": service_data.signals[:3, 0].tolist()})
    client.post("/references", json={"references": references(service_data, range(4))})
    text = client.get("/metrics").text
    assert 'hsn_requests_total{method="POST",route="/embed",status="200"} 1.0' in text
    assert 'hsn_request_signals_sum{route="/embed"} 3.0' in text
    assert "hsn_model_batch_signals_count" in text and "hsn_inference_seconds_bucket" in text
    assert 'hsn_index_references{collection="default"} 4.0' in text
    assert 'hsn_model_memory_bytes{collection="default"}' in text
    # the 4 are in the mutable segment; the large one (built at start) is empty
    assert 'hsn_index_mutable_references{collection="default"} 4.0' in text
    assert 'hsn_index_tombstones{collection="default"} 0.0' in text
    assert 'hsn_index_building{collection="default"} 0.0' in text
    assert 'hsn_index_disk_bytes{collection="default"}' in text
    segments = client.get("/ready").json()["collections"][0]["segments"]
    assert segments["large_references"] == 0 and segments["mutable_references"] == 4
    assert segments["memory_bytes"] > 0 and segments["disk_bytes"] > 0


def test_request_ids_are_echoed_or_made(client):
    assert client.get("/health", headers={"x-request-id": "abc"}).headers["x-request-id"] == "abc"
    assert len(client.get("/health").headers["x-request-id"]) == 32


def test_openapi_documents_every_route_with_examples(client):
    """Every route the app serves (read from its own routes, not a list) is in the document,
    with its methods; every route with a JSON body has an example of it."""
    spec = client.get("/openapi.json").json()
    served = {
        (route.path_format, method.lower())
        for route in iter_route_contexts(client.app.routes)
        if isinstance(route.original_route, APIRoute) and route.original_route.include_in_schema
        for method in route.methods
    }
    assert len(served) >= 17
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served <= documented, served - documented
    for path, method in served:
        content = spec["paths"][path][method].get("requestBody", {}).get("content", {})
        if "application/json" in content:
            schema = content["application/json"]["schema"]
            if "$ref" in schema:  # a model in the components
                schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            assert "examples" in schema, (path, method)
    npy_routes = {
        p
        for p, ops in spec["paths"].items()
        for o in ops.values()
        if "application/x-npy" in o.get("requestBody", {}).get("content", {})
    }
    plain = {"/embed", "/keypoints", "/search", "/align", "/verify", "/drift"}
    assert npy_routes == plain | {f"/collections/{{collection}}{p}" for p in plain}
    assert client.get("/docs").status_code == 200


def test_api_key_guards_writes(make_client, service_data):
    client = make_client(api_key="s3cret")
    body = {"references": references(service_data, [0])}
    assert client.post("/references", json=body).status_code == 401
    wrong = client.post("/references", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/references", json=body, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 201
    assert client.delete("/references/ref-0").status_code == 401
    # Reads stay open unless auth_reads is set.
    assert client.get("/references/ref-0").status_code == 200
    assert client.post("/embed", json={"signals": [body["references"][0]["signal"]]}).is_success


def test_api_key_can_guard_reads_too(make_client, service_data):
    client = make_client(api_key="s3cret", auth_reads=True)
    signal = {"signals": [service_data.signals[0, 0].tolist()]}
    assert client.post("/embed", json=signal).status_code == 401
    assert (
        client.post("/embed", json=signal, headers={"authorization": "Bearer s3cret"}).status_code
        == 200
    )
    assert client.get("/health").status_code == 200  # probes stay open


def test_cors_is_off_by_default_and_configurable(make_client):
    preflight = {"origin": "https://example.org", "access-control-request-method": "POST"}
    assert (
        "access-control-allow-origin"
        not in make_client().options("/embed", headers=preflight).headers
    )
    allowed = make_client(cors_origins=["https://example.org"]).options("/embed", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://example.org"
