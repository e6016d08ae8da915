"""The whole HTTP API fuzzed from its own OpenAPI schema, against a real server: no 5xx, and
every response matches the schema (status codes, content types, bodies)."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.app.conftest import Server

EXAMPLES_PER_OPERATION = 30
# A data route under /collections/{collection} runs the same handler as the plain one: fewer
# examples there keep the run's length while its prefix (names, unknown collections) is fuzzed.
EXAMPLES_PER_COLLECTION_OPERATION = 8
# A file upload is "schema-valid" as any bytes: only a real NPZ can be accepted there.
BINARY_BODIES = {"POST /references/npz"}


KEY = "fuzz-admin-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}  # every operation is fuzzed with a key


IN_COLLECTION = "/collections/{collection}"
FUZZED_COLLECTION = "fuzzed"  # exists: positive cases of a collection's data routes use it


@pytest.fixture(scope="module")
def live_server(model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    server = Server(model_dir, data, HSN_API_KEY=KEY, HSN_AUTH_READS="true").start()
    made = httpx.post(
        f"{server.url}/collections", json={"name": FUZZED_COLLECTION}, headers=HEADERS
    )
    assert made.status_code == 201, made.text
    yield server
    server.stop()


def test_every_operation_conforms_to_the_schema(live_server):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures = {}
    for operation in operations:
        prefixed = operation.path.startswith(IN_COLLECTION + "/")
        # Only the plain routes' signals are limited in the document (a collection's limits are
        # its model's, which one document cannot state): the prefixed routes are held to
        # everything but accepting what the document allows.
        lenient = prefixed or operation.label in BINARY_BODIES

        @settings(
            max_examples=EXAMPLES_PER_COLLECTION_OPERATION if prefixed else EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):
            # (run within this iteration: the loop's variables are this operation's)
            if prefixed and case.meta.generation.mode.is_positive:  # noqa: B023
                # a made-up name is a 404 before the route's own checks: fuzz those too
                case.path_parameters["collection"] = FUZZED_COLLECTION
            case.call_and_validate(
                base_url=live_server.url,
                headers=HEADERS,
                timeout=30,
                excluded_checks=[positive_data_acceptance] if lenient else [],  # noqa: B023
            )

        try:
            check()
        except Exception as exc:  # collect every operation's failure, not just the first
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
