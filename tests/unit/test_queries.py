"""Query binding as ASP.NET does it, with .NET's own parsers as the oracle (a real .NET 8 process
answers int/long/bool/Guid/float TryParse for every input), and the body media-type rules."""

from __future__ import annotations

import math
import struct
import subprocess
import uuid
from functools import cache

import pytest
from pydantic import ValidationError

from dnmon_agent.local import dotnet
from dnmon_core.models import EventProvidersConfiguration, parse_net_float
from dnmon_core.profiles import DEFAULT_PROFILE, TraceProfile
from dnmon_core.queries import (
    BodyError,
    CaptureQuery,
    HostQuery,
    OperationsQuery,
    ProcessQuery,
    QueryError,
    StopQuery,
    TraceQuery,
    parse_net_bool,
    parse_net_guid,
    parse_net_int,
    parse_query,
    read_json_body,
)
from tests.dotnet import build_app

GUID = "cd4da319-fa9e-4987-ac4e-e57b2aac248b"
INPUTS = [
    "42", " 42 ", "+5", "-0", "4_2", "\u0661\u0662\u0663", "42\0", "42\0\0", "42 \0", "\t42\n",
    "\u00a042", "42\u00a0", "\v42\f", "", " ", "-", "+", "2147483647", "2147483648", "-2147483648",
    "-2147483649", "0x10", "1e3", "1.0", "1,000", "(5)", "5-", "\u22125", "\uff10", "0042",
    "true", "TRUE", " true ", "true\0", "tRuE", "1", "yes", "\u00a0true", "\u2003false\u2003",
    "false \0 ", "\u200btrue", "\x1ctrue",
    "ffffffffffffffff", "FFFFFFFFFFFFFFFF", "0000000000000000001", "1ffffffffffffffff", "+ff", " ff",
    "ff ", "ff\0", "-1", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "+1",
    GUID, GUID.replace("-", ""), "{" + GUID + "}", "(" + GUID + ")", " " + GUID + " ", GUID.upper(),
    GUID + "\0", "urn:uuid:" + GUID, "cd4da319-fa9e4987-ac4e-e57b2aac248b", "{" + GUID.replace("-", "") + "}",
    "{0xcd4da319,0xfa9e,0x4987,{0xac,0x4e,0xe5,0x7b,0x2a,0xac,0x24,0x8b}}",
    "{0xcd4da319, 0xfa9e,0x4987,{0xac,0x4e,0xe5,0x7b,0x2a,0xac,0x24, 0x8b}}",
    "{0x1,0x2,0x3,{0x4,0x5,0x6,0x7,0x8,0x9,0xa,0xb}}", "0x" + GUID, "12-34" + GUID[5:],
    "5", "5.0", " 5 ", "5e0", "1,000.5", "Infinity", "nan", "-infinity", "5f", "0.1", "1e39", ".5",
    "5.", "\u221e", "1e", "e5", ".", "0.100000001",
]  # fmt: skip


@cache
def dotnet_answers() -> dict[str, list[str]]:
    """Each input's TryParse results from .NET 8: int, long (sign), long (hex), bool, Guid, float."""
    try:
        command, env = dotnet.launch(build_app("ArgsEcho.cs"), "parse")
    except dotnet.DotnetUnavailable as exc:  # pragma: no cover - the test machine has .NET
        pytest.skip(str(exc))
    lines = "".join((s.encode("utf-16-be").hex() if s else "-") + "\n" for s in INPUTS)
    out = subprocess.run(command, env=env, input=lines.encode(), capture_output=True, timeout=120, check=True)
    answers = out.stdout.decode().splitlines()
    assert len(answers) == len(INPUTS), out
    return {text: answer.split(" ") for text, answer in zip(INPUTS, answers, strict=True)}


@pytest.mark.dotnet
@pytest.mark.parametrize("text", INPUTS)
def test_int_bool_guid_parse_like_dotnet(text: str) -> None:
    as_int, _, _, as_bool, as_guid, _ = dotnet_answers()[text]
    assert parse_net_int(text) == (None if as_int == "x" else int(as_int))
    assert parse_net_bool(text) == (None if as_bool == "x" else as_bool == "true")
    if "+" not in text:  # Guid's compatibility parse of '+' inside groups is not mirrored (see below)
        assert parse_net_guid(text) == (None if as_guid == "x" else uuid.UUID(as_guid))


def _keywords(text: str) -> int | None:
    try:
        body = {"providers": [{"name": "P", "keywords": text}]}
        return EventProvidersConfiguration.model_validate(body).providers[0].keywords
    except ValidationError:
        return None


@pytest.mark.dotnet
@pytest.mark.parametrize("text", INPUTS)
def test_keywords_parse_like_dotnet_monitor(text: str) -> None:
    # IntegerOrHexString: "0x"-prefixed → long hex parse of the rest; else long signed decimal.
    _, as_long, _, _, _, _ = dotnet_answers()[text]
    if text[:2].lower() == "0x":
        return  # the hex branch is checked below on the bare digits
    expected = None if as_long == "x" or not text.strip() else int(as_long) & 0xFFFF_FFFF_FFFF_FFFF
    assert _keywords(text) == expected
    _, _, as_hex, _, _, _ = dotnet_answers()[text]
    expected_hex = None if as_hex == "x" else int(as_hex) & 0xFFFF_FFFF_FFFF_FFFF
    assert _keywords("0x" + text) == expected_hex


@pytest.mark.dotnet
@pytest.mark.parametrize("text", INPUTS)
def test_counter_interval_text_parses_like_dotnet_float(text: str) -> None:
    as_float = dotnet_answers()[text][5]
    parsed = parse_net_float(text)
    if as_float == "x":
        assert parsed is None
    else:
        assert parsed is not None
        if math.isnan(parsed):  # NaN's sign bit differs and does not matter
            assert int(as_float) & 0x7FC00000 == 0x7FC00000
            return
        assert struct.pack("<f", parsed) == struct.pack("<i", int(as_float))


# --- the query models --------------------------------------------------------------------------


def test_capture_query_defaults_and_case_insensitive_names() -> None:
    assert parse_query(CaptureQuery, {}) == CaptureQuery(durationSeconds=30)
    query = parse_query(
        CaptureQuery,
        {
            "PID": " 42 ",
            "Uid": "{" + GUID + "}",
            "NAME": "App",
            "DurationSeconds": "0",
            "egressprovider": "s3",
            "TAGS": "a,,b,a",
            "Host": "web-1",
            "unknown": "ignored",
        },
    )
    assert (query.pid, query.uid, query.name, query.duration_seconds) == (42, uuid.UUID(GUID), "App", 0)
    assert (query.egress_provider, query.tag_set, query.host) == ("s3", ["a", "b"], "web-1")


@pytest.mark.parametrize("value", ["-1", "0", "1", "2147483647", "+7", " 9 "])
def test_duration_range_includes_zero_and_minus_one(value: str) -> None:
    assert parse_query(CaptureQuery, {"durationSeconds": value}).duration_seconds == int(value)


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        (
            {"durationSeconds": "-2"},
            {"durationSeconds": ["The field durationSeconds must be between -1 and 2147483647."]},
        ),
        (
            {"durationSeconds": "2147483648"},
            {"durationSeconds": ["The value '2147483648' is not valid for durationSeconds."]},
        ),
        (
            {"durationSeconds": "1.5"},
            {"durationSeconds": ["The value '1.5' is not valid for durationSeconds."]},
        ),
        ({"pid": "\u0661\u0662\u0663"}, {"pid": ["The value '\u0661\u0662\u0663' is not valid for pid."]}),
        (
            {"pid": "4_2", "uid": "nope"},
            {
                "pid": ["The value '4_2' is not valid for pid."],
                "uid": ["The value 'nope' is not valid for uid."],
            },
        ),
        ({"pid": "1", "PID": "2"}, {"pid": ["The value '1,2' is not valid for pid."]}),
    ],
)
def test_capture_query_errors_name_each_field(params: dict[str, str], errors: dict[str, list[str]]) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(CaptureQuery, params)
    assert caught.value.errors == errors


def test_empty_or_null_values_mean_not_given() -> None:
    query = parse_query(CaptureQuery, {"pid": "", "durationSeconds": None, "name": ""})
    assert (query.pid, query.duration_seconds, query.name) == (None, 30, None)


def test_trace_profile() -> None:
    assert parse_query(TraceQuery, {}).profile == DEFAULT_PROFILE
    assert parse_query(TraceQuery, {"PROFILE": "cpu, Logs"}).profile == TraceProfile.Cpu | TraceProfile.Logs
    with pytest.raises(QueryError) as caught:
        parse_query(TraceQuery, {"profile": "Cpu,Bogus"})
    assert list(caught.value.errors) == ["profile"]


def test_process_and_host_queries() -> None:
    assert parse_query(ProcessQuery, {"name": "dotnet", "durationSeconds": "x"}).name == "dotnet"
    assert parse_query(HostQuery, {"HOST": "h", "pid": "x"}).host == "h"


def test_operations_query_pagination() -> None:
    query = parse_query(OperationsQuery, {"next": "token", "LIMIT": "50", "tags": "x"})
    assert (query.next, query.limit, query.tag_set) == ("token", 50, ["x"])
    for limit in ("0", "1001", "ten"):
        with pytest.raises(QueryError) as caught:
            parse_query(OperationsQuery, {"limit": limit})
        assert list(caught.value.errors) == ["limit"]


@pytest.mark.parametrize(
    ("text", "stop"), [("true", True), ("FALSE", False), (" True ", True), ("tRUE\0", True)]
)
def test_stop_binds_like_bool_tryparse(text: str, stop: bool) -> None:
    assert parse_query(StopQuery, {"Stop": text}).stop is stop
    assert parse_query(StopQuery, {}).stop is False


@pytest.mark.parametrize("text", ["1", "yes", "on", "truee", "0"])
def test_stop_that_is_not_a_boolean_is_an_error(text: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(StopQuery, {"stop": text})
    assert caught.value.errors == {"stop": [f"The value '{text}' is not valid for stop."]}


# --- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=utf-8", "text/json", "application/problem+json",
     'application/json; charset="UTF-8"'],
)  # fmt: skip
def test_json_media_types_are_taken(content_type: str) -> None:
    assert read_json_body(content_type, b'\xef\xbb\xbf{"a": "\xc3\xa9"}') == '{"a": "\u00e9"}'


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/+json",
     "application/json; charset=utf-16"],
)  # fmt: skip
def test_other_media_types_are_415(content_type: str | None) -> None:
    with pytest.raises(BodyError) as caught:
        read_json_body(content_type, b"{}")
    assert caught.value.status == 415


@pytest.mark.parametrize("raw", [b"\xff{}", b'{"a": "\xc3"}', b'{"a": "\xed\xa0\x80"}'])
def test_bodies_that_are_not_utf8_are_400(raw: bytes) -> None:
    with pytest.raises(BodyError) as caught:
        read_json_body("application/json", raw)
    assert caught.value.status == 400 and "UTF-8" in caught.value.detail


def test_empty_body_is_left_to_the_model() -> None:
    assert read_json_body("application/json", None) == ""
    assert read_json_body("application/json", b"") == ""
