"""schemathesis reads the OpenAPI document a real edge serves and sends every operation
generated requests, with an operator's key: no answer may be a 5xx, use a status the
document does not list, or have a body or content type that violates it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.api_calls import Keys
from tests.e2e.procs import Edge

#: Generated requests per operation (about 20 operations; each request is a connection).
EXAMPLES = 50

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Edge, str]]:
    """An edge (which does not refuse a source for failing: generated requests fail on
    purpose) and an operator's admin key."""
    root = tmp_path_factory.mktemp("openapi")
    config = root / "edge.yml"
    config.write_text("auth_failure_limit: 0\n")
    edge = Edge(Path(root / "edge"), extra=["--config", str(config)]).start()
    keys = Keys(edge)
    try:
        _, admin = keys.make(["admin"])
        yield edge, admin
    finally:
        keys.close()
        edge.stop()


@pytest.mark.timeout(600)
def test_no_operation_answers_5xx_or_outside_its_document(served: tuple[Edge, str]) -> None:
    edge, admin = served
    base = f"http://127.0.0.1:{edge.admin_port}"
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def answers_within_its_document(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=base, headers={"Authorization": f"Bearer {admin}"}, checks=CHECKS
            )

        answers_within_its_document()
