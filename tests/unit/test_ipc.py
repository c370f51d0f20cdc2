"""The IPC codec on exact bytes (protocols.md §1), no runtime needed."""

from __future__ import annotations

import struct
import uuid

import pytest

from dnmon_agent.diagnostics import ipc
from dnmon_agent.diagnostics.errors import IpcError, IpcProtocolError, IpcServerError
from dnmon_agent.diagnostics.ipc import Command, EventPipeProvider, SessionConfiguration
from dnmon_agent.pipelines.counters import CountersPipeline
from dnmon_agent.pipelines.trace import session_configuration
from dnmon_core.models import (
    WORST_CASE_INTERVAL,
    EventMetricsConfiguration,
    EventProvidersConfiguration,
    livemetrics_message_size,
    trace_message_size,
)


def _string(text: str) -> bytes:
    return struct.pack("<I", len(text) + 1) + (text + "\0").encode("utf-16-le")


def test_string_encoding_counts_characters_including_terminator() -> None:
    assert ipc._string("ab") == bytes.fromhex("03000000 6100 6200 0000".replace(" ", ""))
    assert ipc._string(None) == b"\0\0\0\0"


def test_simple_command_header() -> None:
    assert ipc.encode_simple(Command.PROCESS_INFO2) == b"DOTNET_IPC_V1\0" + bytes([20, 0, 4, 4, 0, 0])
    with pytest.raises(ValueError):
        ipc.encode_simple(Command.STOP_TRACING)


def test_collect_tracing2_exact_bytes() -> None:
    config = SessionConfiguration(
        providers=(
            EventPipeProvider("Microsoft-DotNETCore-SampleProfiler", 0, 5),
            EventPipeProvider("CustomProvider", 0, 4, {"EventCounterIntervalSec": "1"}),
        ),
        circular_buffer_mb=256,
        request_rundown=True,
    )
    payload = (
        struct.pack("<II?I", 256, 1, True, 2)
        + struct.pack("<QI", 0, 5) + _string("Microsoft-DotNETCore-SampleProfiler") + _string("")
        + struct.pack("<QI", 0, 4) + _string("CustomProvider") + _string("EventCounterIntervalSec=1")
    )  # fmt: skip
    header = b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 20 + len(payload), 2, 3, 0)
    assert ipc.encode_collect_tracing2(config) == header + payload


def test_stop_tracing_always_sends_eight_bytes() -> None:
    message = ipc.encode_stop_tracing(0x00007F9710001280)
    assert message[14:16] == struct.pack("<H", 28)
    assert message[20:] == struct.pack("<Q", 0x00007F9710001280)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (SessionConfiguration((EventPipeProvider("P"),), circular_buffer_mb=0), "at least 1 MB"),
        (SessionConfiguration(()), "at least one provider"),
        (SessionConfiguration((EventPipeProvider(""),)), "must not be empty"),
        (SessionConfiguration((EventPipeProvider("P", level=6),)), "level 6"),
        (SessionConfiguration((EventPipeProvider("P", keywords=1 << 64),)), "64-bit"),
    ],
)
def test_requests_that_would_crash_or_confuse_the_target_never_leave(
    config: SessionConfiguration, needle: str
):
    with pytest.raises(IpcError, match=needle):
        ipc.encode_collect_tracing2(config)


def test_filter_data_quotes_separators() -> None:
    provider = EventPipeProvider(
        "System.Diagnostics.Metrics", 2, 4, {"Metrics": "A\\x;A\\y", "SessionId": "S"}
    )
    assert provider.filter_data() == 'Metrics="A\\x;A\\y";SessionId=S'


SPECS = (
    "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Start@Activity1Start:"
    "-Method=Request.Method;Path=Request.Path"
)


# What Microsoft.Diagnostics.NETCore.Client's EventPipeProvider.GetArgumentString writes: a key or
# value holding ';' or '=' is wrapped in '"', nothing else is touched (a lone '"' is not quoted).
@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (None, ""),
        ({}, ""),
        ({"a": "1", "b": "2"}, "a=1;b=2"),
        ({"k": "v;w"}, 'k="v;w"'),
        ({"k": "x=y"}, 'k="x=y"'),
        ({"a;b": "v"}, '"a;b"=v'),
        ({"a=b": "c=d"}, '"a=b"="c=d"'),
        ({"k": 'say "hi"'}, 'k=say "hi"'),
        ({"k": 'a"b;c'}, 'k="a"b;c"'),
        ({"": "v", "e": ""}, "=v;e="),
        ({"FilterAndPayloadSpecs": SPECS}, f'FilterAndPayloadSpecs="{SPECS}"'),
    ],
)
def test_filter_data_is_the_dotnet_clients(arguments: dict[str, str] | None, expected: str) -> None:
    assert EventPipeProvider("P", arguments=arguments).filter_data() == expected


def test_quoted_arguments_exact_bytes() -> None:
    config = SessionConfiguration((EventPipeProvider("Dnmon-ArgsEcho", 0xFF, 4, {"a;b": "x=y", "c": "d"}),))
    text = '"a;b"="x=y";c=d'
    payload = (
        struct.pack("<II?I", 256, 1, True, 1)
        + struct.pack("<QI", 0xFF, 4)
        + struct.pack("<I", 15) + "Dnmon-ArgsEcho\0".encode("utf-16-le")
        + struct.pack("<I", len(text) + 1) + (text + "\0").encode("utf-16-le")
    )  # fmt: skip
    assert (
        ipc.encode_collect_tracing2(config)
        == b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 20 + len(payload), 2, 3, 0) + payload
    )


def test_lone_surrogates_are_written_as_the_replacement_character() -> None:
    # Encoding.Unicode (the .NET client's) substitutes U+FFFD; the unit count stays the same.
    assert ipc._string("a\ud800") == struct.pack("<I", 3) + bytes.fromhex("6100 fdff 0000".replace(" ", ""))
    assert ipc._string("\U0001f600") == struct.pack("<I", 3) + bytes.fromhex(
        "3dd8 00de 0000".replace(" ", "")
    )


def test_oversized_request_is_refused() -> None:
    big = EventPipeProvider("P", arguments={"k": "v" * 40000})
    with pytest.raises(IpcError, match="exceeds"):
        ipc.encode_collect_tracing2(SessionConfiguration((big,)))


def _reply_header(ok: bool, payload_len: int) -> bytes:
    return b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 20 + payload_len, 0xFF, 0 if ok else 0xFF, 0)


def test_reply_header_ok_and_error() -> None:
    assert ipc.parse_reply_header(_reply_header(True, 8), Command.STOP_TRACING) == ipc.ReplyHeader(True, 8)
    header = ipc.parse_reply_header(_reply_header(False, 4), Command.PROCESS_INFO)
    assert not header.ok
    with pytest.raises(IpcServerError) as info:
        ipc.raise_error_reply(struct.pack("<I", 0x80131385), Command.PROCESS_INFO)
    assert info.value.hresult == 0x80131385
    assert info.value.unknown_command
    assert "UNKNOWN_COMMAND" in str(info.value) and "ProcessInfo" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"DOTNET_IPC_V2\0" + struct.pack("<HBBH", 20, 0xFF, 0, 0),
        b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 19, 0xFF, 0, 0),
        b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 20, 0x02, 0, 0),
        b"DOTNET_IPC_V1\0" + struct.pack("<HBBH", 20, 0xFF, 7, 0),
        b"short",
    ],
)
def test_bad_reply_headers(data: bytes) -> None:
    with pytest.raises(IpcProtocolError):
        ipc.parse_reply_header(data, Command.PROCESS_INFO)


def test_error_reply_without_hresult() -> None:
    with pytest.raises(IpcProtocolError):
        ipc.raise_error_reply(b"\x01", Command.PROCESS_INFO)


COOKIE = uuid.UUID("d0cf1b42-aabb-4678-80ac-f55c81617983")


def _process_info2_payload() -> bytes:
    return (
        struct.pack("<Q", 16995) + COOKIE.bytes_le + _string("dotnet App.dll") + _string("Linux")
        + _string("x64") + _string("App") + _string("8.0.4")
    )  # fmt: skip


def test_process_info2_wire_order_is_pid_cookie_strings() -> None:
    info = ipc.parse_process_info(_process_info2_payload(), Command.PROCESS_INFO2)
    assert info == ipc.RuntimeProcessInfo(16995, COOKIE, "dotnet App.dll", "Linux", "x64", "App", "8.0.4")


def test_process_info3_has_version_prefix_and_rid() -> None:
    payload = struct.pack("<I", 1) + _process_info2_payload() + _string("linux-x64")
    info = ipc.parse_process_info(payload, Command.PROCESS_INFO3)
    assert info.runtime_identifier == "linux-x64" and info.pid == 16995


def test_truncated_process_info_names_the_offset() -> None:
    payload = _process_info2_payload()[:30]
    with pytest.raises(IpcProtocolError, match="needed"):
        ipc.parse_process_info(payload, Command.PROCESS_INFO2)


def test_environment_continuation() -> None:
    body = struct.pack("<I", 3) + _string("A=1") + _string("PATH=/bin:/usr/bin") + _string("EMPTY=")
    assert ipc.parse_environment(body) == {"A": "1", "PATH": "/bin:/usr/bin", "EMPTY": ""}
    assert ipc.parse_environment_size(struct.pack("<IH", 1234, 0)) == 1234
    with pytest.raises(IpcProtocolError):
        ipc.parse_environment(struct.pack("<I", 2) + _string("A=1"))


# --- dnmon_core's size estimate (the API's 400) is the encoder's real length -------------------

TRACE_BODIES: list[dict[str, object]] = [
    {"providers": [{"name": "Microsoft-Windows-DotNETRuntime"}]},
    {"providers": [{"name": "P", "arguments": {"a;b": "x=y", "": "", "é": "\U0001f600"}}]},
    {"providers": [{"name": f"Provider{i}", "arguments": {"k": "v" * i}} for i in range(50)]},
    {"providers": [{"name": "Lone\ud800", "arguments": {"FilterAndPayloadSpecs": "A/B@C:-x=y;z\r\nD"}}]},
]


@pytest.mark.parametrize("body", TRACE_BODIES)
def test_trace_size_estimate_is_the_encoded_length(body: dict[str, object]) -> None:
    config = EventProvidersConfiguration.model_validate(body)
    encoded = ipc.encode_collect_tracing2(session_configuration(config))
    assert trace_message_size(config) == len(encoded)


LIVEMETRICS_BODIES: list[dict[str, object]] = [
    {},
    {"includeDefaultProviders": False, "providers": [{"providerName": "CustomProvider"}]},
    {"providers": [{"providerName": "System.Runtime"}, {"providerName": "A", "counterNames": ["x"]}]},
    {"meters": [{"meterName": "M"}, {"meterName": "M", "instrumentNames": ["a"]}, {"meterName": "N"}]},
    {
        "meters": [
            {"meterName": "M", "instrumentNames": ["a", "b", "a"]},
            {"meterName": "M", "instrumentNames": ["c"]},
        ]
    },
    {"meters": [{"meterName": "Mé", "instrumentNames": [f"i{n}" for n in range(500)]}]},
]


@pytest.mark.parametrize("body", LIVEMETRICS_BODIES)
@pytest.mark.parametrize("interval", [5, 0.5, 1 / 3])
@pytest.mark.parametrize("session_id", [None, "3f1e1f5c-6e86-4d4b-9a57-1c1b6d9d2f10"])
def test_livemetrics_size_estimate_is_the_encoded_length(
    body: dict[str, object], interval: float, session_id: str | None
) -> None:
    config = EventMetricsConfiguration.model_validate(body)
    pipeline = CountersPipeline(config, interval, session_id=session_id)
    encoded = ipc.encode_collect_tracing2(SessionConfiguration(pipeline.providers()))
    estimate = livemetrics_message_size(
        config, interval, session_id=pipeline.session_id, client_id=pipeline.client_id
    )
    assert estimate == len(encoded)
    # The API's check budgets for the longest session id and interval text the agent may use.
    assert livemetrics_message_size(config, WORST_CASE_INTERVAL) >= len(encoded)
