"""The public contract models: ASP.NET-style binding, validation errors by path, Metric records."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from dnmon_core.models import (
    ALL_KEYWORDS,
    MAX_IPC_MESSAGE,
    EventLevel,
    EventMetricsConfiguration,
    EventPipeProviderModel,
    EventProvidersConfiguration,
    Metric,
    ProcessIdentifier,
    ProcessInfo,
    counter_interval_errors,
    error_path,
    format_timestamp,
    iter_json_seq,
    trace_message_size,
    validation_errors,
)

# The seed pages' request bodies, verbatim.
SEED_TRACE_BODY = """
{
    "Providers": [{
        "Name": "Microsoft-DotNETCore-SampleProfiler",
        "EventLevel": "Informational"
    },{
        "Name": "Microsoft-Windows-DotNETRuntime",
        "EventLevel": "Informational",
        "Keywords": "0x14C14FCCBD"
    }],
    "BufferSizeInMB": 1024
}
"""

SEED_EVENTCOUNTER_BODY = """
{
    "includeDefaultProviders": false,
    "providers": [
        {
            "providerName": "CustomProvider",
            "counterNames": [
                "counter1",
                "counter2"
            ]
        }
    ]
}
"""

SEED_METER_BODY = """
{
    "includeDefaultProviders": false,
    "meters": [
        {
            "meterName": "CustomMeter",
            "instrumentNames": [
                "myHistogram"
            ]
        }
    ]
}
"""


def trace_errors(body: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        if isinstance(body, str):
            EventProvidersConfiguration.model_validate_json(body)
        else:
            EventProvidersConfiguration.model_validate(body)
    return validation_errors(caught.value)


def metrics_errors(body: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        EventMetricsConfiguration.model_validate(body)
    return validation_errors(caught.value)


def with_provider(**provider: Any) -> dict[str, Any]:
    return {"providers": [{"name": "P", **provider}]}


# --- binding ---------------------------------------------------------------------------------


def test_seed_trace_body_binds_case_insensitively() -> None:
    config = EventProvidersConfiguration.model_validate_json(SEED_TRACE_BODY)
    assert config.buffer_size_in_mb == 1024
    assert config.request_rundown is True
    profiler, runtime = config.providers
    assert profiler.name == "Microsoft-DotNETCore-SampleProfiler"
    assert profiler.event_level is EventLevel.INFORMATIONAL
    assert profiler.keywords == ALL_KEYWORDS
    assert profiler.arguments is None
    assert runtime.name == "Microsoft-Windows-DotNETRuntime"
    assert runtime.keywords == 0x14C14FCCBD
    assert runtime.event_level == 4


def test_seed_livemetrics_bodies_bind() -> None:
    counters = EventMetricsConfiguration.model_validate_json(SEED_EVENTCOUNTER_BODY)
    assert counters.include_default_providers is False
    assert [(p.provider_name, p.counter_names) for p in counters.providers] == [
        ("CustomProvider", ["counter1", "counter2"])
    ]
    assert counters.meters == []
    meters = EventMetricsConfiguration.model_validate_json(SEED_METER_BODY)
    assert [(m.meter_name, m.instrument_names) for m in meters.meters] == [("CustomMeter", ["myHistogram"])]
    assert meters.providers == []


def test_any_casing_binds_and_python_names_work() -> None:
    body = {
        "PROVIDERS": [{"nAmE": "P", "eventlevel": "warning"}],
        "buffersizeinmb": 8,
        "RequestRundown": False,
    }
    config = EventProvidersConfiguration.model_validate(body)
    assert (config.providers[0].event_level, config.buffer_size_in_mb, config.request_rundown) == (
        EventLevel.WARNING,
        8,
        False,
    )
    built = EventProvidersConfiguration(providers=[EventPipeProviderModel(name="P")], buffer_size_in_mb=2)
    assert built.buffer_size_in_mb == 2
    metrics = EventMetricsConfiguration.model_validate(
        {"INCLUDEDEFAULTPROVIDERS": False, "Meters": [{"MeterName": "M", "InstrumentNames": None}]}
    )
    assert metrics.meters[0].meter_name == "M"
    assert metrics.meters[0].instrument_names is None


def test_unknown_properties_are_ignored_and_the_last_duplicate_wins() -> None:
    config = EventProvidersConfiguration.model_validate_json(
        '{"providers":[{"name":"P","color":"red"}],"bufferSizeInMB":5,"BUFFERSIZEINMB":6,"extra":{"x":1}}'
    )
    assert config.buffer_size_in_mb == 6


def test_defaults() -> None:
    trace = EventProvidersConfiguration.model_validate({"providers": [{"name": "P"}]})
    provider = trace.providers[0]
    assert (provider.keywords, provider.event_level, provider.arguments) == (
        0xFFFF_FFFF_FFFF_FFFF,
        EventLevel.VERBOSE,
        None,
    )
    assert (trace.request_rundown, trace.buffer_size_in_mb) == (True, 256)
    metrics = EventMetricsConfiguration.model_validate({})
    assert (metrics.include_default_providers, metrics.providers, metrics.meters) == (True, [], [])
    nulls = EventMetricsConfiguration.model_validate({"providers": None, "meters": None})
    assert (nulls.providers, nulls.meters) == ([], [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("0x0", 0),
        ("0X14c14fccbd", 0x14C14FCCBD),
        ("0xFFFFFFFFFFFFFFFF", ALL_KEYWORDS),
        ("0x00000000000000000001", 1),
        ("-1", ALL_KEYWORDS),  # long.TryParse: signed decimal, two's complement
        ("+12", 12),
        ("-9223372036854775808", 1 << 63),
        ("9223372036854775807", (1 << 63) - 1),
        ("0xff\0", 255),  # .NET's number parsing tolerates trailing NULs
    ],
)
def test_keywords_accepted(text: Any, expected: int) -> None:
    config = EventProvidersConfiguration.model_validate(with_provider(keywords=text))
    assert config.providers[0].keywords == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LogAlways", EventLevel.LOG_ALWAYS),
        ("critical", EventLevel.CRITICAL),
        ("ERROR", EventLevel.ERROR),
        ("Warning", EventLevel.WARNING),
        ("informational", EventLevel.INFORMATIONAL),
        ("Verbose", EventLevel.VERBOSE),
        (0, EventLevel.LOG_ALWAYS),
        (4, EventLevel.INFORMATIONAL),
        ("5", EventLevel.VERBOSE),
    ],
)
def test_event_level_by_name_in_any_casing_or_number(text: Any, expected: EventLevel) -> None:
    config = EventProvidersConfiguration.model_validate(with_provider(eventLevel=text))
    assert config.providers[0].event_level is expected


def test_buffer_size_from_numeric_text_like_the_web_defaults() -> None:
    assert EventProvidersConfiguration.model_validate_json(
        '{"providers":[{"name":"P"}],"bufferSizeInMB":"64"}'
    ).buffer_size_in_mb == (64)


def test_arguments_without_delimiters_are_kept() -> None:
    args = {"EventCounterIntervalSec": "1", "FilterSpecs": "Microsoft.*:Information"}
    config = EventProvidersConfiguration.model_validate(with_provider(arguments=args))
    assert config.providers[0].arguments == args


# --- errors name the field ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1025, -1, "abc", True, 1.5, None, "1e3"])
def test_bad_buffer_size(size: Any) -> None:
    errors = trace_errors({"providers": [{"name": "P"}], "bufferSizeInMB": size})
    assert list(errors) == ["bufferSizeInMB"]


def test_buffer_size_range_message() -> None:
    errors = trace_errors({"providers": [{"name": "P"}], "bufferSizeInMB": 1025})
    assert errors == {"bufferSizeInMB": ["The field bufferSizeInMB must be between 1 and 1024."]}


def test_buffer_size_bounds_are_inclusive() -> None:
    for size in (1, 1024):
        body = {"providers": [{"name": "P"}], "bufferSizeInMB": size}
        assert EventProvidersConfiguration.model_validate(body).buffer_size_in_mb == size


@pytest.mark.parametrize("body", [{"providers": []}, {}, {"providers": None}, {"Providers": "P"}])
def test_providers_required_and_non_empty(body: dict[str, Any]) -> None:
    assert list(trace_errors(body)) == ["providers"]


def test_empty_providers_message() -> None:
    assert trace_errors({"providers": []}) == {"providers": ["At least one provider is required."]}
    assert trace_errors({}) == {"providers": ["The providers field is required."]}


@pytest.mark.parametrize(
    "keywords",
    [
        "0xZZ",
        str(2**64),
        "18446744073709551615",  # beyond long: dotnet-monitor refuses it
        "9223372036854775808",
        " 12 ",
        "0x 1",
        "0x+1",
        "0x-1",
        "0x1 ",
        "0x1" + "0" * 16,
        "",
        "0x",
        "1_000",
        "0x_1",
        "\u0663",
        "1.0",
        2**64,
        -1,
        5,  # a JSON number is not a string
        True,
        None,
    ],
)
def test_bad_keywords(keywords: Any) -> None:
    errors = trace_errors({"providers": [{"name": "A"}, {"name": "P", "keywords": keywords}]})
    assert list(errors) == ["providers[1].keywords"]


@pytest.mark.parametrize("level", ["Info", "Debug", "", 6, -1, "6", True, None, 4.0])
def test_unknown_event_level(level: Any) -> None:
    errors = trace_errors(with_provider(eventLevel=level))
    assert list(errors) == ["providers[0].eventLevel"]
    assert (
        "LogAlways, Critical, Error, Warning, Informational, Verbose" in errors["providers[0].eventLevel"][0]
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"Key": 'say "hi"'},
        {'a"b': "v"},
        {"Key": "a\0b"},
        {"Key": None},
        {"Key": 1},
        ["Key=v"],
    ],
)
def test_arguments_the_runtime_cannot_receive(arguments: Any) -> None:
    errors = trace_errors({"providers": [{"name": "A"}, {"name": "P", "arguments": arguments}]})
    assert [key.startswith("providers[1].arguments") for key in errors] == [True]


def test_separators_in_arguments_are_ordinary() -> None:
    # The encoder quotes them as the .NET client does (DiagnosticSource's FilterAndPayloadSpecs).
    args = {"a;b": "1;Other=2", "x=y": "", "": "empty key"}
    config = EventProvidersConfiguration.model_validate(with_provider(arguments=args))
    assert config.providers[0].arguments == args


def test_quote_message_names_the_argument() -> None:
    errors = trace_errors(with_provider(arguments={"Key": 'a"b'}))
    assert errors == {
        "providers[0].arguments": [
            'Argument value "a\\"b" contains \'"\', which the runtime\'s filter-data parser cannot '
            "receive (it drops '\"' and stops at NUL)."
        ]
    }


@pytest.mark.parametrize("provider", [{"name": ""}, {"name": "   "}, {"name": None}, {"keywords": "1"}])
def test_provider_name_required(provider: dict[str, Any]) -> None:
    assert trace_errors({"providers": [provider]}) == {"providers[0].name": ["The name field is required."]}


@pytest.mark.parametrize("flag", ["true", 1, None])
def test_booleans_must_be_json_booleans(flag: Any) -> None:
    assert list(trace_errors({"providers": [{"name": "P"}], "requestRundown": flag})) == ["requestRundown"]
    assert list(metrics_errors({"includeDefaultProviders": flag})) == ["includeDefaultProviders"]


def test_every_bad_field_is_reported_at_once() -> None:
    errors = trace_errors(
        {
            "providers": [{"name": "", "keywords": "0xZZ"}, {"name": "B", "eventLevel": "Loud"}],
            "bufferSizeInMB": 0,
        }
    )
    assert list(errors) == [
        "providers[0].name",
        "providers[0].keywords",
        "providers[1].eventLevel",
        "bufferSizeInMB",
    ]


def test_body_that_is_not_an_object_or_not_json() -> None:
    assert list(trace_errors("[]")) == [""]
    assert list(trace_errors("{nope")) == [""]


def test_livemetrics_names_required() -> None:
    errors = metrics_errors(
        {
            "providers": [{"providerName": ""}, {"counterNames": ["x"]}],
            "meters": [{"meterName": " "}, {"meterName": "M", "instrumentNames": ["ok", ""]}],
        }
    )
    assert errors == {
        "providers[0].providerName": ["The providerName field is required."],
        "providers[1].providerName": ["The providerName field is required."],
        "meters[0].meterName": ["The meterName field is required."],
        "meters[1].instrumentNames[1]": ["The instrumentName field is required."],
    }


@pytest.mark.parametrize("name", ["A,B", "A;B", "A\\B", 'A"B', "A\nB"])
def test_meter_and_instrument_names_cannot_split_the_metrics_spec(name: str) -> None:
    assert list(metrics_errors({"meters": [{"meterName": name}]})) == ["meters[0].meterName"]
    errors = metrics_errors({"meters": [{"meterName": "M", "instrumentNames": ["ok", name]}]})
    assert list(errors) == ["meters[0].instrumentNames[1]"]


def test_livemetrics_with_nothing_to_collect() -> None:
    assert metrics_errors({"includeDefaultProviders": False, "providers": [], "meters": None}) == {
        "": ["At least one provider or meter is required when includeDefaultProviders is false."]
    }


def test_counter_names_must_be_strings() -> None:
    errors = metrics_errors({"providers": [{"providerName": "P", "counterNames": ["a", 1]}]})
    assert list(errors) == ["providers[0].counterNames[1]"]


def test_error_path() -> None:
    assert error_path(("providers", 1, "eventLevel")) == "providers[1].eventLevel"
    assert error_path(("meters", 0, "instrumentNames", 2)) == "meters[0].instrumentNames[2]"
    assert error_path(()) == ""


# --- serialisation ---------------------------------------------------------------------------


def test_trace_configuration_serialises_camel_case_and_round_trips() -> None:
    config = EventProvidersConfiguration.model_validate_json(SEED_TRACE_BODY)
    dumped = config.model_dump_json()
    assert json.loads(dumped) == {
        "providers": [
            {
                "name": "Microsoft-DotNETCore-SampleProfiler",
                "keywords": "0xFFFFFFFFFFFFFFFF",
                "eventLevel": "Informational",
                "arguments": None,
            },
            {
                "name": "Microsoft-Windows-DotNETRuntime",
                "keywords": "0x14C14FCCBD",
                "eventLevel": "Informational",
                "arguments": None,
            },
        ],
        "requestRundown": True,
        "bufferSizeInMB": 1024,
    }
    assert EventProvidersConfiguration.model_validate_json(dumped) == config


def test_metrics_configuration_serialises_camel_case() -> None:
    config = EventMetricsConfiguration.model_validate_json(SEED_METER_BODY)
    assert config.model_dump() == {
        "includeDefaultProviders": False,
        "providers": [],
        "meters": [{"meterName": "CustomMeter", "instrumentNames": ["myHistogram"]}],
    }


def test_process_models_camel_case() -> None:
    uid = uuid.UUID("cd4da319-fa9e-4987-ac4e-e57b2aac248b")
    info = ProcessInfo(
        pid=21632,
        uid=uid,
        name="dotnet",
        command_line="dotnet App.dll",
        operating_system="linux",
        process_architecture="x64",
        managed_entry_point_assembly_name="App",
    )
    assert json.loads(info.model_dump_json()) == {
        "pid": 21632,
        "uid": "cd4da319-fa9e-4987-ac4e-e57b2aac248b",
        "name": "dotnet",
        "commandLine": "dotnet App.dll",
        "operatingSystem": "linux",
        "processArchitecture": "x64",
        "managedEntryPointAssemblyName": "App",
    }
    ident = ProcessIdentifier.model_validate({"PID": 1, "Uid": str(uid), "name": "x", "isDefault": True})
    assert ident.model_dump(mode="json") == {"pid": 1, "uid": str(uid), "name": "x", "isDefault": True}


# --- Metric records --------------------------------------------------------------------------

T0 = datetime(2021, 8, 31, 16, 58, 39, 751403, tzinfo=UTC)


def test_metric_json_seq_is_byte_exact() -> None:
    metric = Metric(
        timestamp=T0,
        provider="CustomProvider",
        name="counter1",
        display_name="Counter 1",
        unit="B",
        counter_type="Metric",
        value=3.0,
        tags="MyKey 1:MyValue 1",
        metadata={"MyKey 1": "MyValue 1"},
    )
    assert metric.to_json_seq() == (
        b'\x1e{"timestamp":"2021-08-31T16:58:39.7514030+00:00","provider":"CustomProvider",'
        b'"name":"counter1","displayName":"Counter 1","unit":"B","counterType":"Metric",'
        b'"tags":"MyKey 1:MyValue 1","value":3,"metadata":{"MyKey 1":"MyValue 1"},'
        b'"meterTags":"","instrumentTags":""}\n'
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [(math.nan, "0"), (math.inf, "0"), (-math.inf, "0"), (2.5, "2.5"), (-4.0, "-4"), (1e20, "1e+20")],
)
def test_metric_values_are_valid_json_numbers(value: float, written: str) -> None:
    metric = Metric(T0, "P", "n", "n", None, "Rate", value)
    record = metric.to_json_seq()
    assert f'"value":{written},'.encode() in record
    assert json.loads(record[1:])["unit"] is None


def test_metric_timestamps_are_written_in_utc() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert format_timestamp(plus_two) == "2021-08-31T16:58:39.7514030+00:00"
    assert format_timestamp(datetime(2021, 8, 31, 16, 58, 39)) == "2021-08-31T16:58:39.0000000+00:00"


def test_metric_non_ascii_is_escaped_and_parseable() -> None:
    record = Metric(T0, "P", "größe", "Größe", "µs", "Metric", 1.0).to_json_seq()
    assert record.isascii()
    assert json.loads(record[1:])["unit"] == "µs"


def test_metric_round_trips_through_json_seq() -> None:
    metrics = [
        Metric(T0, "M", "h", "h", None, "Metric", 60.0, tags="Percentile=50"),
        Metric(T0, "P", "c", "C", "count", "Rate", 0.25, tags="a:b", metadata={"a": "b"}, meter_tags="m=1"),
    ]
    body = b"".join(m.to_json_seq() for m in metrics)
    assert [Metric.from_dict(d) for d in iter_json_seq(body)] == metrics


def test_core_imports_neither_agent_nor_boto3() -> None:
    code = (
        "import sys, dnmon_core.models; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dnmon_agent', 'boto3', 'botocore')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what can never reach the runtime ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"providers": [{"name": "\u0000"}]}, "providers[0].name"),
        ({"providers": [{"name": "A\u0000B"}]}, "providers[0].name"),
    ],
)
def test_nul_in_a_trace_provider_name(body: dict[str, Any], field: str) -> None:
    errors = trace_errors(body)
    assert list(errors) == [field] and "NUL" in errors[field][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"providers": [{"providerName": "\u0000"}]}, "providers[0].providerName"),
        ({"meters": [{"meterName": "\u0000"}]}, "meters[0].meterName"),
        ({"meters": [{"meterName": "M", "instrumentNames": ["a\u0000"]}]}, "meters[0].instrumentNames[0]"),
    ],
)
def test_nul_in_livemetrics_names(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EventMetricsConfiguration.model_validate(body)
    assert list(validation_errors(caught.value)) == [field]


def test_trace_request_larger_than_one_ipc_message() -> None:
    many = {"providers": [{"name": f"Provider-{i:04d}-" + "x" * 40} for i in range(700)]}
    errors = trace_errors(many)
    assert list(errors) == ["providers"] and "65535" in errors["providers"][0]
    huge_name = {"providers": [{"name": "N" * 33000}]}
    assert list(trace_errors(huge_name)) == ["providers"]
    huge_argument = with_provider(arguments={"FilterAndPayloadSpecs": "s;" * 20000})
    assert list(trace_errors(huge_argument)) == ["providers"]


def test_trace_request_just_within_one_ipc_message() -> None:
    # header 20 + fixed 13 + provider (12 + name string + empty filter data string 6) = 65535
    name = "N" * ((MAX_IPC_MESSAGE - 20 - 13 - 12 - 6 - 4) // 2 - 1)
    config = EventProvidersConfiguration.model_validate({"providers": [{"name": name}]})
    assert trace_message_size(config) == MAX_IPC_MESSAGE
    with pytest.raises(ValidationError):
        EventProvidersConfiguration.model_validate({"providers": [{"name": name + "N"}]})


def test_livemetrics_request_larger_than_one_ipc_message() -> None:
    instruments = [f"instrument{i}" for i in range(10_000)]
    with pytest.raises(ValidationError) as caught:
        EventMetricsConfiguration.model_validate(
            {"meters": [{"meterName": "M", "instrumentNames": instruments}]}
        )
    assert list(validation_errors(caught.value)) == ["meters"]
    providers = [{"providerName": f"Provider.{i:05d}"} for i in range(2000)]
    with pytest.raises(ValidationError) as caught:
        EventMetricsConfiguration.model_validate({"providers": providers})
    assert list(validation_errors(caught.value)) == ["providers"]


# --- dotnet-monitor's counter-interval rule for custom traces -----------------------------------


def _interval_config(*intervals: str) -> EventProvidersConfiguration:
    return EventProvidersConfiguration.model_validate(
        {
            "providers": [
                {"name": f"P{i}", "arguments": {"EventCounterIntervalSec": v}}
                for i, v in enumerate(intervals)
            ]
        }
    )


def test_counter_interval_must_match_the_configured_one() -> None:
    assert counter_interval_errors(_interval_config("5", "5.0", " 5 ", "5e0", "not a number"), 5) == {}
    errors = counter_interval_errors(_interval_config("5", "1", "NaN"), 5)
    assert errors == {
        "providers[1].arguments.EventCounterIntervalSec": [
            "Custom trace metric provider 'P1' must use the expected counter interval '5'."
        ],
        "providers[2].arguments.EventCounterIntervalSec": [
            "Custom trace metric provider 'P2' must use the expected counter interval '5'."
        ],
    }


def test_counter_interval_compares_as_single_precision_and_per_provider() -> None:
    assert counter_interval_errors(_interval_config("0.1", "0.100000001"), 0.1) == {}
    assert counter_interval_errors(_interval_config("2"), 5, {"p0": 2}) == {}
    message = counter_interval_errors(_interval_config("1"), 0.1)[
        "providers[0].arguments.EventCounterIntervalSec"
    ]
    assert message == ["Custom trace metric provider 'P0' must use the expected counter interval '0.1'."]
    # The argument name is matched exactly (a JSON object binds to an ordinal dictionary).
    other_case = EventProvidersConfiguration.model_validate(
        {"providers": [{"name": "P", "arguments": {"eventcounterintervalsec": "1"}}]}
    )
    assert counter_interval_errors(other_case, 5) == {}
