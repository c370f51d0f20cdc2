"""Provider arguments reach a real .NET 8 EventSource exactly as given: the body goes through the
API's model and the agent's trace pipeline, and the target prints what OnEventCommand received."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest

from dnmon_agent.diagnostics.client import DiagnosticsClient
from dnmon_agent.diagnostics.ipc import EventPipeProvider, SessionConfiguration
from dnmon_agent.pipelines.runner import StopControl, run_trace
from dnmon_agent.pipelines.trace import session_configuration
from dnmon_core.models import EventProvidersConfiguration
from tests.dotnet import DotnetTarget

pytestmark = pytest.mark.dotnet

SPECS = (
    "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Start@Activity1Start:"
    "-Method=Request.Method;Path=Request.Path\r\nHttpHandlerDiagnosticListener/System.Net.Http.Request"
)


@pytest.fixture(scope="module")
def target() -> Iterator[DotnetTarget]:
    started = DotnetTarget.start("ArgsEcho.cs", "300")
    try:
        yield started
    finally:
        started.stop()


def _received(target: DotnetTarget, config: SessionConfiguration) -> dict[str, str]:
    """Run one short capture and read back the Arguments the EventSource was enabled with."""
    before = len(target.log)
    sink = io.BytesIO()
    result = run_trace(
        DiagnosticsClient(target.socket_path), config, sink, duration=0.5, control=StopControl.new()
    )
    assert result.complete and sink.getbuffer().nbytes > 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in target.log[before:] if line.startswith("args ")]
        if lines:
            break
        time.sleep(0.05)
    assert lines, target.log[before:]
    _, count, *rest = lines[0].split(" ")
    pairs = rest[0].split(",") if rest and rest[0] else []
    assert len(pairs) == int(count)

    def text(hex_units: str) -> str:
        return "" if hex_units == "-" else bytes.fromhex(hex_units).decode("utf-16-be")

    return dict((text(k), text(v)) for k, v in (pair.split(":") for pair in pairs))


@pytest.mark.parametrize(
    "arguments",
    [
        {"FilterAndPayloadSpecs": SPECS},
        {"a;b": "x=y", "plain": "value", "k": "v;w=z;"},
        {"": "empty key", "empty value": "", "unicode": "\u00e9\u4e2d\U0001f600"},
    ],
)
def test_arguments_reach_the_event_source(target: DotnetTarget, arguments: dict[str, str]) -> None:
    body = {"providers": [{"name": "Dnmon-ArgsEcho", "keywords": "-1", "arguments": arguments}]}
    config = EventProvidersConfiguration.model_validate(body)
    assert _received(target, session_configuration(config)) == arguments


def test_the_runtime_drops_double_quotes_which_is_why_the_api_refuses_them(target: DotnetTarget) -> None:
    # Sent as the .NET client sends it: the runtime's parser reads '"' as a quote toggle, no escape.
    provider = EventPipeProvider("Dnmon-ArgsEcho", arguments={"k": 'say "hi"', "j": 'a"b;c'})
    assert provider.filter_data() == 'k=say "hi";j="a"b;c"'
    # The value holding both is cut at its now-unquoted ";" and what follows it is lost.
    assert _received(target, SessionConfiguration((provider,))) == {"k": "say hi", "j": "ab"}
