"""schemathesis against /openapi.json of a running gateway: whatever the generated requests, never a 5xx."""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gateway.web.api import create_key
from tests.integration.web.conftest import Site

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
EXAMPLES = 8  # per operation and way of generating: enough to reach the error branches, small enough to be fast


def test_no_server_error(site: Site) -> None:
    with site.gw.transaction() as s:
        key = create_key(s, "cab")[1]
    headers = {"Authorization": f"Bearer {key}"}
    # Real ids too, so generated bodies reach the code behind the lookups (posting into a real thread, ...).
    real = {
        "thread_id": site.world.thread_a,
        "patient_id": site.world.patient_a,
        "attachment_id": site.world.attachment_a,
    }
    # The schema as the running server publishes it; only the API's operations (the webhooks have their own tests).
    schema = schemathesis.openapi.from_url(site.url + "/openapi.json").include(path_regex="^/api/v1/")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: Counter[int] = Counter()

    for operation in operations:
        params = {p: real[p] for p in real if "{" + p + "}" in operation.path}
        strategies: list[Any] = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
        if params:
            strategies.append(operation.as_strategy(path_parameters=params))
        for strategy in strategies:

            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=site.url, headers=headers, checks=[not_a_server_error])
                statuses[response.status_code] += 1

            no_5xx()
    # The run reached successes and the error answers, not only one kind of refusal.
    assert {200, 201, 404, 422} <= set(statuses), statuses
