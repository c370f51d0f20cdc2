"""Trace profiles: parsing the ``profile`` flags and the provider sets they stand for.

Expected values come from dotnet/dotnet-monitor (``TraceUtilities.GetTraceConfiguration``,
``DiagController.DefaultTraceProfiles``) and dotnet/diagnostics (the source configurations in
Microsoft.Diagnostics.Monitoring.EventPipe), written out here rather than derived from the module.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from functools import reduce
from operator import or_

import pytest

from dnmon_agent.diagnostics.ipc import (
    MAX_MESSAGE,
    EventPipeProvider,
    SessionConfiguration,
    encode_collect_tracing2,
)
from dnmon_core.models import EventLevel, EventProvidersConfiguration
from dnmon_core.profiles import (
    DEFAULT_PROFILE,
    HTTP_FILTER_AND_PAYLOAD_SPECS,
    TraceProfile,
    format_interval,
    profile_configuration,
    rundown_keyword,
)

INFO = EventLevel.INFORMATIONAL
ALL_PROFILES = [
    reduce(or_, combo) for size in range(1, 6) for combo in itertools.combinations(list(TraceProfile), size)
]


def _summary(config: EventProvidersConfiguration) -> list[tuple[str, int, EventLevel, dict[str, str] | None]]:
    return [(p.name, p.keywords, p.event_level, p.arguments) for p in config.providers]


def _session(config: EventProvidersConfiguration) -> SessionConfiguration:
    return SessionConfiguration(
        providers=tuple(
            EventPipeProvider(p.name, p.keywords, int(p.event_level), p.arguments) for p in config.providers
        ),
        circular_buffer_mb=config.buffer_size_in_mb,
        request_rundown=config.request_rundown,
    )


def _utf16(text: str) -> bytes:
    return struct.pack("<I", len(text) + 1) + (text + "\0").encode("utf-16-le")


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Cpu", TraceProfile.Cpu),
        ("cpu,http", TraceProfile.Cpu | TraceProfile.Http),
        ("CPU,METRICS", TraceProfile.Cpu | TraceProfile.Metrics),
        ("logs,gccollect", TraceProfile.Logs | TraceProfile.GcCollect),
        ("GcCollect", TraceProfile.GcCollect),
        (" Http , Logs ", TraceProfile.Http | TraceProfile.Logs),
        ("Metrics,Cpu", TraceProfile.Cpu | TraceProfile.Metrics),
        ("Cpu,cpu,CPU", TraceProfile.Cpu),
        ("Cpu,Http,Logs,Metrics,GcCollect", reduce(or_, TraceProfile)),
        ("Cpu, Http, Metrics, GcCollect", DEFAULT_PROFILE),  # dotnet-monitor's own ToString form
        # Enum.TryParse also takes one number.
        ("9", TraceProfile.Cpu | TraceProfile.Metrics),
        (" +31 ", reduce(or_, TraceProfile)),
    ],
)
def test_parse_accepts_what_dotnet_monitor_binds(text: str, expected: TraceProfile) -> None:
    assert TraceProfile.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Gc", "'Gc' is not a trace profile"),
        ("Cpu,Heap", "'Heap' is not a trace profile (in 'Cpu,Heap')"),
        ("Cpu;Http", "'Cpu;Http' is not a trace profile"),
        ("Cpu,", "A profile name is empty (in 'Cpu,')"),
        (",Cpu", "A profile name is empty"),
        ("Cpu,,Http", "A profile name is empty"),
        ("Cpu,8", "'8' is not a trace profile"),  # numbers only on their own, as in .NET
        ("0", "value 0 is not a combination"),
        ("32", "value 32"),
        ("-1", "value -1"),
    ],
)
def test_parse_rejects_and_names_the_bad_part(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as caught:
        TraceProfile.parse(text)
    assert needle in str(caught.value)
    assert "Cpu, Http, Logs, Metrics, GcCollect" in str(caught.value)


def test_flag_values_and_text_match_dotnet_monitor() -> None:
    assert [(p.name, p.value) for p in TraceProfile] == [
        ("Cpu", 1),
        ("Http", 2),
        ("Logs", 4),
        ("Metrics", 8),
        ("GcCollect", 16),
    ]
    assert str(DEFAULT_PROFILE) == "Cpu, Http, Metrics, GcCollect"
    assert (
        TraceProfile.parse(str(TraceProfile.Logs | TraceProfile.Http))
        == TraceProfile.Logs | TraceProfile.Http
    )


def test_default_profile_is_the_code_default_not_the_stale_doc() -> None:
    # DiagController.DefaultTraceProfiles and the OpenAPI default; trace-get.md omits GcCollect.
    assert list(DEFAULT_PROFILE) == [
        TraceProfile.Cpu,
        TraceProfile.Http,
        TraceProfile.Metrics,
        TraceProfile.GcCollect,
    ]


# --- provider sets ---------------------------------------------------------------------------


def test_cpu_profile() -> None:
    config = profile_configuration(TraceProfile.Cpu)
    assert _summary(config) == [
        ("Microsoft-DotNETCore-SampleProfiler", 0xF00000000000, INFO, None),
        ("Microsoft-Windows-DotNETRuntime", 0x14C14FCCBD, INFO, None),
    ]
    assert config.request_rundown is True
    assert config.buffer_size_in_mb == 256


def test_http_profile() -> None:
    config = profile_configuration(TraceProfile.Http)
    assert _summary(config) == [
        (
            "Microsoft-Diagnostics-DiagnosticSource",
            0x3,
            EventLevel.VERBOSE,
            {"FilterAndPayloadSpecs": HTTP_FILTER_AND_PAYLOAD_SPECS},
        )
    ]
    assert config.request_rundown is True
    assert config.buffer_size_in_mb == 256


def test_http_filter_is_dotnet_monitors_value_exactly() -> None:
    specs = HTTP_FILTER_AND_PAYLOAD_SPECS
    # SHA-256 of HttpRequestSourceConfiguration.DiagnosticFilterString (dotnet/diagnostics main).
    assert hashlib.sha256(specs.encode()).hexdigest() == (
        "db72ee39ee831a8f259526b521ae4e5e5a8dd46e94ac5e7fc70f2dfb02f60139"
    )
    lines = specs.split("\r\n")
    assert lines[-1] == ""  # every spec ends with CRLF, the last one too
    assert [line.split(":-")[0] for line in lines[:-1]] == [
        "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Start@Activity1Start",
        "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Stop@Activity1Stop",
        "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut@Event",
        "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut.Start@Activity2Start",
        "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut.Stop@Activity2Stop",
    ]
    assert "ActivityDuration=*Activity.Duration.Ticks" in lines[1]
    assert lines[4].endswith(":-;ActivityDuration=*Activity.Duration.Ticks;ActivityId=*Activity.Id")
    assert '"' not in specs  # a double quote cannot be carried by filter data at all


def test_logs_profile() -> None:
    config = profile_configuration(TraceProfile.Logs)
    assert _summary(config) == [
        ("Microsoft-Extensions-Logging", 0xC, EventLevel.LOG_ALWAYS, {"FilterSpecs": "UseAppFilters"}),
        ("System.Threading.Tasks.TplEventSource", 0x80, INFO, None),
    ]
    assert config.request_rundown is False
    assert config.buffer_size_in_mb == 256


def test_metrics_profile() -> None:
    config = profile_configuration(TraceProfile.Metrics)
    assert _summary(config) == [
        (name, 0, INFO, {"EventCounterIntervalSec": "5"})
        for name in ("System.Runtime", "Microsoft.AspNetCore.Hosting", "Grpc.AspNetCore.Server")
    ]
    assert config.request_rundown is False


def test_gc_collect_profile() -> None:
    config = profile_configuration(TraceProfile.GcCollect)
    assert _summary(config) == [
        ("Microsoft-Windows-DotNETRuntime", 0x1, INFO, None),
        ("Microsoft-Windows-DotNETRuntimePrivate", 0x1, INFO, None),
    ]
    # dotnet-monitor asks for a GC-only rundown (CollectTracing4) and, where that command is
    # unknown, retries without rundown; with CollectTracing2 only, we send no rundown.
    assert rundown_keyword(TraceProfile.GcCollect) == 0x1
    assert config.request_rundown is False


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5"),
        (5.0, "5"),
        (1, "1"),
        (2.5, "2.5"),
        (1.1, "1.1"),
        (60, "60"),
        (86400, "86400"),
        (7.25, "7.25"),
    ],
)
def test_metrics_interval_is_written_as_dotnet_writes_a_float(seconds: float, text: str) -> None:
    assert format_interval(seconds) == text
    config = profile_configuration(TraceProfile.Metrics, seconds)
    assert {p.arguments["EventCounterIntervalSec"] for p in config.providers if p.arguments} == {text}


@pytest.mark.parametrize("seconds", [0, 0.5, 86401, float("nan"), float("inf"), -5])
def test_metrics_interval_outside_dotnet_monitors_range_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="between 1 and 86400 seconds"):
        profile_configuration(TraceProfile.Metrics, seconds)


def test_empty_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="No trace profile selected"):
        profile_configuration(TraceProfile(0))


# --- combining profiles ----------------------------------------------------------------------


def test_default_profile_merges_the_runtime_provider() -> None:
    config = profile_configuration(DEFAULT_PROFILE)
    interval = {"EventCounterIntervalSec": "5"}
    assert _summary(config) == [
        ("Microsoft-DotNETCore-SampleProfiler", 0xF00000000000, INFO, None),
        # Cpu's Default keywords | GcCollect's GC keyword, which Default already holds.
        ("Microsoft-Windows-DotNETRuntime", 0x14C14FCCBD, INFO, None),
        (
            "Microsoft-Diagnostics-DiagnosticSource",
            0x3,
            EventLevel.VERBOSE,
            {"FilterAndPayloadSpecs": HTTP_FILTER_AND_PAYLOAD_SPECS},
        ),
        ("System.Runtime", 0, INFO, interval),
        ("Microsoft.AspNetCore.Hosting", 0, INFO, interval),
        ("Grpc.AspNetCore.Server", 0, INFO, interval),
        ("Microsoft-Windows-DotNETRuntimePrivate", 0x1, INFO, None),
    ]
    assert config.request_rundown is True
    assert config.buffer_size_in_mb == 256


@pytest.mark.parametrize("profile", ALL_PROFILES, ids=str)
def test_every_combination_is_the_union_of_its_parts(profile: TraceProfile) -> None:
    config = profile_configuration(profile)
    names = [p.name for p in config.providers]
    assert len(names) == len(set(names))  # each provider once
    parts = [profile_configuration(member) for member in profile]
    expected: dict[str, tuple[int, EventLevel]] = {}
    for part in parts:
        for p in part.providers:
            keywords, level = expected.get(p.name, (0, EventLevel.LOG_ALWAYS))
            expected[p.name] = (keywords | p.keywords, max(level, p.event_level))
    assert {p.name: (p.keywords, p.event_level) for p in config.providers} == expected
    # Same effect as dotnet-monitor's concatenation, where the runtime honours the first entry of a
    # name: the first entry already holds every keyword of the later ones, at the same level.
    first: dict[str, tuple[int, EventLevel]] = {}
    for part in parts:
        for p in part.providers:
            first.setdefault(p.name, (p.keywords, p.event_level))
    assert first == expected
    assert config.request_rundown is bool(profile & (TraceProfile.Cpu | TraceProfile.Http))
    assert config.buffer_size_in_mb == 256


def test_flag_order_in_the_query_does_not_change_the_request() -> None:
    assert profile_configuration(TraceProfile.parse("GcCollect,Metrics,Cpu")) == profile_configuration(
        TraceProfile.parse("cpu,metrics,gccollect")
    )


def test_rundown_keyword_is_the_or_of_the_profiles() -> None:
    assert rundown_keyword(DEFAULT_PROFILE) == 0x80020139
    assert rundown_keyword(TraceProfile.Logs | TraceProfile.Metrics) == 0
    assert rundown_keyword(TraceProfile.Logs | TraceProfile.GcCollect) == 0x1
    assert rundown_keyword(TraceProfile.Http | TraceProfile.GcCollect) == 0x80020139


# --- the wire and the contract ----------------------------------------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES, ids=str)
def test_every_combination_encodes_into_collect_tracing2(profile: TraceProfile) -> None:
    message = encode_collect_tracing2(_session(profile_configuration(profile, 86400)))
    assert len(message) <= MAX_MESSAGE


def test_filter_and_payload_specs_travel_quoted_like_the_dotnet_client() -> None:
    # NETCore.Client wraps a value holding ';' or '=' in double quotes; the runtime drops the quotes
    # and keeps the separators inside them, CR LF included.
    message = encode_collect_tracing2(_session(profile_configuration(TraceProfile.Http)))
    assert _utf16(f'FilterAndPayloadSpecs="{HTTP_FILTER_AND_PAYLOAD_SPECS}"') in message
    logs = encode_collect_tracing2(_session(profile_configuration(TraceProfile.Logs)))
    assert _utf16("FilterSpecs=UseAppFilters") in logs


def test_default_profile_request_bytes() -> None:
    message = encode_collect_tracing2(_session(profile_configuration(DEFAULT_PROFILE)))
    assert message[20:33] == struct.pack("<II?I", 256, 1, True, 7)
    assert len(message) < MAX_MESSAGE // 10


def test_json_form_is_the_post_trace_contract_shape() -> None:
    body = profile_configuration(TraceProfile.Cpu | TraceProfile.Logs).model_dump(mode="json", by_alias=True)
    assert body == {
        "providers": [
            {
                "name": "Microsoft-DotNETCore-SampleProfiler",
                "keywords": "0xF00000000000",
                "eventLevel": "Informational",
                "arguments": None,
            },
            {
                "name": "Microsoft-Windows-DotNETRuntime",
                "keywords": "0x14C14FCCBD",
                "eventLevel": "Informational",
                "arguments": None,
            },
            {
                "name": "Microsoft-Extensions-Logging",
                "keywords": "0xC",
                "eventLevel": "LogAlways",
                "arguments": {"FilterSpecs": "UseAppFilters"},
            },
            {
                "name": "System.Threading.Tasks.TplEventSource",
                "keywords": "0x80",
                "eventLevel": "Informational",
                "arguments": None,
            },
        ],
        "requestRundown": True,
        "bufferSizeInMB": 256,
    }


@pytest.mark.parametrize(
    "profile",
    [p for p in ALL_PROFILES if not p & TraceProfile.Http],
    ids=str,
)
def test_construction_matches_what_validation_would_build(profile: TraceProfile) -> None:
    # Where no argument holds a filter-data separator, the user-input validator accepts the
    # configuration and rebuilds it identically: bypassing it changes nothing else.
    config = profile_configuration(profile)
    assert EventProvidersConfiguration.model_validate(config.model_dump(mode="json", by_alias=True)) == config


def test_the_http_filter_passes_the_user_input_validator() -> None:
    # Its FilterAndPayloadSpecs hold ';' and '=', which the encoder quotes as the .NET client does:
    # a user may send the same configuration as a POST /trace body.
    config = profile_configuration(TraceProfile.Http)
    body = config.model_dump(mode="json", by_alias=True)
    assert EventProvidersConfiguration.model_validate(body) == config


def test_each_call_returns_a_fresh_configuration() -> None:
    first = profile_configuration(TraceProfile.Metrics)
    assert first.providers[0].arguments is not None
    first.providers[0].arguments["EventCounterIntervalSec"] = "1"
    assert profile_configuration(TraceProfile.Metrics).providers[0].arguments == {
        "EventCounterIntervalSec": "5"
    }
