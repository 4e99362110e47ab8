"""schemathesis against the app's own OpenAPI: generated requests (valid and invalid JSON bodies,
form fields, uploads and path ids) for every operation must never get a 500; every response
must be one the OpenAPI documents, with the documented content type and body shape; requests
the schema calls invalid must be refused with a 4xx.

Driven through hypothesis directly (``operation.as_strategy``): schemathesis' pytest plugin does
not run under this project's pytest."""
from __future__ import annotations

import warnings

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

MAX_EXAMPLES = 50  # per operation and mode: 15 operations x 2 modes in about 15 s on 2 busy cores

CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance,
          schemathesis.checks.negative_data_rejection]


def operations(app) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_is_documented_and_fuzzable(serve_app) -> None:
    labels = {op.label for op in operations(serve_app)}
    for label in ("POST /v1/search", "POST /v1/search/image", "POST /v1/similar", "POST /v1/predict/image",
                  "POST /v1/embed", "GET /v1/schema", "POST /v1/browse", "GET /v1/items/{item_id}",
                  "GET /v1/images/{item_id}", "GET /readyz", "GET /metrics"):
        assert label in labels, (label, sorted(labels))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_operation_answers_500_or_off_schema(serve_app, mode: GenerationMode) -> None:
    failures = []
    for operation in operations(serve_app):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS)

        try:
            run()
        except Unsatisfiable:  # nothing invalid to send: no parameters, or a path id that takes any string
            assert mode == GenerationMode.NEGATIVE, operation.label
        except BaseException as exc:  # noqa: BLE001 - gather every operation's failures (exception groups too)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
