"""End to end: ``dnmon up`` captures a .NET process that runs in its own PID and mount namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dnmon_agent.local.stack import SEED_LIVEMETRICS_BODY
from dnmon_core.models import iter_json_seq
from tests.e2e.test_up import Up, start_up, stop_up
from tests.namespaces import Container, unshare_unavailable

pytestmark = [
    pytest.mark.dotnet,
    pytest.mark.skipif(unshare_unavailable() is not None, reason=str(unshare_unavailable())),
]


@pytest.fixture
def stack() -> Iterator[Up]:
    up = start_up()
    yield up
    stop_up(up)


def test_live_metrics_of_a_namespaced_process_over_http(stack: Up) -> None:
    container = Container()
    try:
        target = container.start("DemoApp.cs", "metrics")
        stack.wait_for_process(target.pid)
        info = stack.json("GET", f"/processes/{target.pid}")
        assert info["pid"] == target.pid and info["namespacedPid"] == target.namespaced_pid
        response = stack.request(
            "POST", f"/livemetrics?pid={target.pid}&durationSeconds=6", SEED_LIVEMETRICS_BODY
        )
        assert response.status == 200, response.read()
        records = list(iter_json_seq(response.read()))
        assert {r["name"] for r in records} == {"counter1", "counter2", "myHistogram"}
        assert {r["value"] for r in records if r["name"] == "counter1"} == {3}
        location = response.getheader("Location")
        assert location is not None
        status = stack.wait_operation(location, "Succeeded")
        assert status["process"]["pid"] == target.pid
    finally:
        container.close()
