"""The public contract: request bodies, Metric records and process descriptions, as dotnet-monitor has them.

Request bodies bind the way ASP.NET binds them with System.Text.Json's web defaults: property names
case-insensitively (the seed examples use ``Providers``/``BufferSizeInMB`` as well as
``providerName``/``includeDefaultProviders``), unknown properties ignored, integers also from numeric
strings, enums by name in any casing or by number. Output is camelCase. ``validation_errors`` turns
a pydantic error into the ``errors`` map of a ValidationProblemDetails, keyed by camelCase paths.

This module is shared by the agent and the Lambda functions: it imports neither, nor boto3.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# --- binding like ASP.NET --------------------------------------------------------------------


class ContractModel(BaseModel):
    """Base of every public-API shape: case-insensitive property binding, camelCase output."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    @model_validator(mode="before")
    @classmethod
    def _bind_case_insensitively(cls, data: Any) -> Any:
        # System.Text.Json (PropertyNameCaseInsensitive) matches names ignoring case and lets the
        # last duplicate win; anything that names no property is dropped, as ASP.NET ignores it.
        if not isinstance(data, Mapping):
            return data
        by_alias, by_name = _binding(cls)
        bound: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                continue
            alias = by_name.get(key) or by_alias.get(key.lower())
            if alias is not None:
                bound[alias] = value
        return bound


@functools.cache
def _binding(model: type[BaseModel]) -> tuple[dict[str, str], dict[str, str]]:
    """(lower-cased alias → alias, Python field name → alias) of one model class."""
    by_alias: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        by_alias[alias.lower()] = alias
        by_name[name] = alias
    return by_alias, by_name


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _reject_blank(field_name: str) -> Any:
    """ASP.NET's [Required] on a string: null, empty and whitespace-only are all missing."""

    def check(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise _error("required", f"The {field_name} field is required.")
        return value

    return BeforeValidator(check)


def _no_nul(field_name: str) -> Any:
    """The runtime reads names as C strings: a NUL ends them, so ``"\\u0000"`` names no provider."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise _error(
                "nul_character",
                f"The {field_name} field contains NUL, which ends the name the runtime reads.",
            )
        return value

    return BeforeValidator(check)


def _none_as_empty(value: Any) -> Any:
    # A JSON null for a collection means "none given", as dotnet-monitor treats it.
    return [] if value is None else value


def _json_int(value: Any) -> Any:
    # The web defaults read numbers from strings too (AllowReadingFromString), but never from
    # booleans or non-integral numbers.
    if isinstance(value, bool | float):
        raise _error("int_type", "The value must be an integer.")
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value, re.ASCII):
        return int(value)
    if not isinstance(value, int):
        raise _error("int_type", "The value must be an integer.")
    return value


def _strict_bool(value: Any) -> Any:
    # System.Text.Json reads a bool only from true/false, not from "true" or 1.
    if not isinstance(value, bool):
        raise _error("bool_type", "The value must be true or false.")
    return value


JsonBool = Annotated[bool, BeforeValidator(_strict_bool)]


# --- POST /livemetrics --------------------------------------------------------------------------

DEFAULT_COUNTER_PROVIDERS: Final = (
    "System.Runtime",
    "Microsoft.AspNetCore.Hosting",
    "Grpc.AspNetCore.Server",
)
"""EventCounter providers that ``includeDefaultProviders`` adds."""

METRICS_SPEC_FORBIDDEN: Final = frozenset(',;\\"\r\n')
"""Characters a meter or instrument name cannot carry: they delimit the ``Metrics`` filter argument
(the runtime splits it on ``\\r \\n , ;`` and reads ``Meter\\Instrument``); ``"`` cannot be quoted."""


_CHARACTER_NAMES: Final = {"\r": "a carriage return", "\n": "a line feed", "\x00": "NUL"}


def _describe(characters: set[str]) -> str:
    return " and ".join(_CHARACTER_NAMES.get(c, f"'{c}'") for c in sorted(characters))


def _metrics_spec_name(field_name: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise _error("required", f"The {field_name} field is required.")
            bad = set(value) & METRICS_SPEC_FORBIDDEN
            if bad:
                raise _error(
                    "metrics_spec_character",
                    f"{field_name} {json.dumps(value)} contains {_describe(bad)}, which the runtime's "
                    "Metrics filter treats as a separator.",
                )
        return value

    return BeforeValidator(check)


class EventMetricsProvider(ContractModel):
    """An EventCounter provider; ``counterNames`` empty or absent means all of its counters."""

    provider_name: Annotated[str, _reject_blank("providerName"), _no_nul("providerName")]
    counter_names: list[str] | None = None


class EventMetricsMeter(ContractModel):
    """A System.Diagnostics.Metrics meter; ``instrumentNames`` empty or absent means all instruments."""

    meter_name: Annotated[
        str, _reject_blank("meterName"), _metrics_spec_name("meterName"), _no_nul("meterName")
    ]
    instrument_names: (
        list[Annotated[str, _metrics_spec_name("instrumentName"), _no_nul("instrumentName")]] | None
    ) = None


class EventMetricsConfiguration(ContractModel):
    """Body of ``POST /livemetrics``.

    Names are passed to the runtime exactly as given: the runtime matches provider and meter names
    case-sensitively, while received events are filtered case-insensitively (dotnet-monitor's rule).
    """

    include_default_providers: JsonBool = True
    providers: Annotated[list[EventMetricsProvider], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list
    )
    meters: Annotated[list[EventMetricsMeter], BeforeValidator(_none_as_empty)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something_to_collect(self) -> EventMetricsConfiguration:
        # An EventPipe session without providers is refused by the runtime; say so up front.
        if not (self.include_default_providers or self.providers or self.meters):
            raise _error(
                "nothing_to_collect",
                "At least one provider or meter is required when includeDefaultProviders is false.",
            )
        # The counter interval is configuration, not body: budget for the longest interval text.
        size = livemetrics_message_size(self, WORST_CASE_INTERVAL)
        if size > MAX_IPC_MESSAGE:
            meters = _metrics_provider_size(self, WORST_CASE_INTERVAL)
            raise _oversized("meters" if meters * 2 > size else "providers", size)
        return self


# --- POST /trace ----------------------------------------------------------------------------


class EventLevel(IntEnum):
    """System.Diagnostics.Tracing.EventLevel, named in the contract as ``label``."""

    LOG_ALWAYS = 0
    CRITICAL = 1
    ERROR = 2
    WARNING = 3
    INFORMATIONAL = 4
    VERBOSE = 5

    @property
    def label(self) -> str:
        return _LEVEL_LABELS[self]


_LEVEL_LABELS: Final = {
    EventLevel.LOG_ALWAYS: "LogAlways",
    EventLevel.CRITICAL: "Critical",
    EventLevel.ERROR: "Error",
    EventLevel.WARNING: "Warning",
    EventLevel.INFORMATIONAL: "Informational",
    EventLevel.VERBOSE: "Verbose",
}
_LEVELS_BY_LABEL: Final = {label.lower(): level for level, label in _LEVEL_LABELS.items()}


def _parse_event_level(value: Any) -> EventLevel:
    # ASP.NET's string-enum converter: names in any casing, and (allowIntegerValues) numbers,
    # which [EnumDataType] then restricts to defined members.
    if isinstance(value, EventLevel):
        return value
    level: EventLevel | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        level = EventLevel(value) if 0 <= value <= 5 else None
    elif isinstance(value, str):
        text = value.strip()
        level = _LEVELS_BY_LABEL.get(text.lower())
        if level is None and re.fullmatch(r"[0-5]", text):
            level = EventLevel(int(text))
    if level is None:
        raise _error(
            "event_level",
            f"The value {json.dumps(value, default=str)} is not a valid event level; expected one of "
            f"{', '.join(_LEVEL_LABELS.values())}.",
        )
    return level


ALL_KEYWORDS: Final = 0xFFFF_FFFF_FFFF_FFFF

_SIGNED_DECIMAL = re.compile(r"[+-]?[0-9]+\x00*", re.ASCII)
_HEX_DIGITS = re.compile(r"0*([0-9a-fA-F]{1,16})\x00*", re.ASCII)


def _parse_keywords(value: Any) -> int:
    """dotnet-monitor's ``IntegerOrHexString``: a JSON string, ``0x`` + up to 16 hex digits or a
    signed 64-bit decimal (``"-1"`` is every bit), held here as the unsigned 64-bit mask.

    .NET's ``long.TryParse`` is followed exactly (no whitespace, no underscores, ASCII digits only,
    trailing NULs tolerated); a JSON number is not a string, so it is refused as dotnet-monitor does.
    """
    if not isinstance(value, str):
        raise _error("keywords_type", "Value must be of type string.")
    if not value.strip():
        raise _error("keywords_empty", "Value cannot be null, empty, or whitespace.")
    if value[:2].lower() == "0x":
        digits = _HEX_DIGITS.fullmatch(value[2:])
        if digits is None:
            raise _error("keywords_hex", f"The value '{value}' is not a valid hexadecimal number.")
        return int(digits.group(1), 16)
    number = int(value.rstrip("\x00")) if _SIGNED_DECIMAL.fullmatch(value) else None
    if number is None or not -(2**63) <= number < 2**63:
        raise _error("keywords_integer", f"The value '{value}' is not a valid integer.")
    return number & ALL_KEYWORDS


UNQUOTABLE_ARGUMENT_CHARACTERS: Final = frozenset('"\x00')
"""What an argument key or value cannot carry to the runtime. Its filter-data parser (verified on
.NET 8.0.4) drops every ``"`` as a quote toggle and has no escape, and it reads C strings, so a NUL
ends the text. ``;`` and ``=`` are fine: the encoder quotes them, as the .NET client does."""


def _parse_buffer_size(value: Any) -> Any:
    number = _json_int(value)
    if not 1 <= number <= 1024:
        raise _error("range", "The field bufferSizeInMB must be between 1 and 1024.")
    return number


# The wire shapes of the two converted fields, for the OpenAPI document (the validators above
# are the authority; these describe their input).
_KEYWORDS_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "description": "0x-prefixed hexadecimal (up to 16 digits) or a signed 64-bit decimal; -1 is all.",
    "pattern": "^(0[xX]0*[0-9a-fA-F]{1,16}|[+-]?[0-9]+)\\u0000*$",
}
_EVENT_LEVEL_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [
        {"type": "string", "enum": list(_LEVEL_LABELS.values())},
        {"type": "integer", "minimum": 0, "maximum": 5},
    ],
    "description": "An EventLevel name (any casing) or its number.",
}


def _keywords_default(schema: dict[str, Any]) -> None:
    schema["properties"]["keywords"]["default"] = "0xFFFFFFFFFFFFFFFF"  # as written, not the int held


class EventPipeProviderModel(ContractModel):
    """One provider of ``POST /trace``; ``keywords`` is held as an int and written back as hex."""

    model_config = ConfigDict(**ContractModel.model_config, json_schema_extra=_keywords_default)

    name: Annotated[str, _reject_blank("name"), _no_nul("name")]
    keywords: Annotated[int, BeforeValidator(_parse_keywords), WithJsonSchema(_KEYWORDS_SCHEMA)] = (
        ALL_KEYWORDS
    )
    event_level: Annotated[
        EventLevel,
        BeforeValidator(_parse_event_level),
        WithJsonSchema(_EVENT_LEVEL_SCHEMA),
        Field(json_schema_extra={"default": "Verbose"}),
    ] = EventLevel.VERBOSE
    arguments: dict[str, str] | None = None

    @field_validator("arguments")
    @classmethod
    def _arguments_the_runtime_can_receive(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            for kind, part in (("name", key), ("value", text)):
                bad = set(part) & UNQUOTABLE_ARGUMENT_CHARACTERS
                if bad:
                    raise _error(
                        "argument_character",
                        f"Argument {kind} {json.dumps(part)} contains {_describe(bad)}, which the "
                        "runtime's filter-data parser cannot receive (it drops '\"' and stops at NUL).",
                    )
        return value

    @field_serializer("keywords")
    def _keywords_as_hex(self, value: int) -> str:
        return f"0x{value:X}"

    @field_serializer("event_level")
    def _level_by_name(self, value: EventLevel) -> str:
        return value.label


class EventProvidersConfiguration(ContractModel):
    """Body of ``POST /trace``."""

    providers: Annotated[list[EventPipeProviderModel], Field(min_length=1)]
    request_rundown: JsonBool = True
    buffer_size_in_mb: Annotated[
        int,
        BeforeValidator(_parse_buffer_size),
        Field(alias="bufferSizeInMB", json_schema_extra={"minimum": 1, "maximum": 1024}),
    ] = 256

    @model_validator(mode="after")
    def _fits_one_ipc_message(self) -> EventProvidersConfiguration:
        size = trace_message_size(self)
        if size > MAX_IPC_MESSAGE:
            raise _oversized("providers", size)
        return self


# --- what the agent will send: the size of the IPC request, and the counter interval ----------

MAX_IPC_MESSAGE: Final = 0xFFFF
"""A diagnostics IPC message carries its total length in a uint16 (protocols.md §1.2)."""

_IPC_HEADER: Final = 20
_COLLECT_TRACING2_FIXED: Final = 4 + 4 + 1 + 4  # buffer MB, format, rundown, provider count
_PROVIDER_FIXED: Final = 8 + 4  # keywords, level
_GUID_TEXT: Final = 36
SHARED_SESSION_ID: Final = "SHARED"
WORST_CASE_INTERVAL: Final = 1 / 3
"""An interval whose invariant text is as long as any (``0.3333333333333333``)."""
MAX_TIME_SERIES: Final = 1000
MAX_HISTOGRAMS: Final = 20
METRICS_PROVIDER: Final = "System.Diagnostics.Metrics"


def _oversized(field_name: str, size: int) -> PydanticCustomError:
    # Raised for the whole body; ``field`` tells validation_errors which property to name.
    return PydanticCustomError(
        "ipc_message_size",
        f"The EventPipe session request would be {size} bytes; the runtime's diagnostics IPC takes at "
        f"most {MAX_IPC_MESSAGE} bytes per message. Use fewer or shorter {field_name}.",
        {"field": field_name},
    )


def quote_filter_argument(text: str) -> str:
    """The .NET client's quoting (EventPipeProvider.GetArgumentString): a key or value holding
    ``;`` or ``=`` is wrapped in double quotes, anything else is written as is."""
    return f'"{text}"' if (";" in text or "=" in text) else text


def filter_data(arguments: Mapping[str, str] | None) -> str:
    """``key=value;key=value`` as the .NET client builds it; no arguments is the empty string."""
    if not arguments:
        return ""
    return ";".join(f"{quote_filter_argument(k)}={quote_filter_argument(v)}" for k, v in arguments.items())


def _ipc_string_size(text: str) -> int:
    # uint32 character count, then UTF-16 code units including the NUL.
    return 4 + len(text.encode("utf-16-le", "surrogatepass")) + 2


def _provider_size(name: str, arguments: Mapping[str, str] | None) -> int:
    return _PROVIDER_FIXED + _ipc_string_size(name) + _ipc_string_size(filter_data(arguments))


def collect_tracing2_size(providers: Iterable[tuple[str, Mapping[str, str] | None]]) -> int:
    """Bytes of the CollectTracing2 message (header included) for (name, arguments) providers."""
    return _IPC_HEADER + _COLLECT_TRACING2_FIXED + sum(_provider_size(n, a) for n, a in providers)


def trace_message_size(config: EventProvidersConfiguration) -> int:
    """The agent's CollectTracing2 request for this ``POST /trace`` body, in bytes."""
    return collect_tracing2_size((p.name, p.arguments) for p in config.providers)


def invariant_number(value: float) -> str:
    """Invariant-culture text of a number, as the runtime parses filter arguments (``5``, ``0.5``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _counter_sources(config: EventMetricsConfiguration) -> list[str]:
    names = dict.fromkeys(DEFAULT_COUNTER_PROVIDERS if config.include_default_providers else ())
    names.update(dict.fromkeys(p.provider_name for p in config.providers))
    return list(names)


def metrics_spec(config: EventMetricsConfiguration) -> str:
    """The ``Metrics`` argument: ``Meter`` or ``Meter\\Instrument`` entries joined by commas.

    Merged as the agent merges them: a meter without instrument names means all of its
    instruments and absorbs any list given for it; instruments keep their first-seen order."""
    meters: dict[str, list[str] | None] = {}
    for meter in config.meters:
        names = meter.instrument_names
        if not names:
            meters[meter.meter_name] = None
        elif meters.get(meter.meter_name, []) is not None:
            current = meters.setdefault(meter.meter_name, [])
            assert current is not None
            current.extend(n for n in names if n not in current)
    specs: list[str] = []
    for meter_name, instruments in meters.items():
        specs.extend([meter_name] if instruments is None else [f"{meter_name}\\{i}" for i in instruments])
    return ",".join(specs)


def metrics_arguments(
    config: EventMetricsConfiguration, interval_seconds: float, session_id: str, client_id: str
) -> dict[str, str] | None:
    """The MetricsEventSource arguments of a live-metrics session; None without meters."""
    if not config.meters:
        return None
    interval = invariant_number(interval_seconds)
    return {
        "SessionId": session_id,
        "Metrics": metrics_spec(config),
        "RefreshInterval": interval,
        "MaxTimeSeries": str(MAX_TIME_SERIES),
        "MaxHistograms": str(MAX_HISTOGRAMS),
        "ClientId": client_id,
    }


def _metrics_provider_size(
    config: EventMetricsConfiguration,
    interval_seconds: float,
    session_id: str = "0" * _GUID_TEXT,
    client_id: str = "0" * _GUID_TEXT,
) -> int:
    arguments = metrics_arguments(config, interval_seconds, session_id, client_id)
    return 0 if arguments is None else _provider_size(METRICS_PROVIDER, arguments)


def livemetrics_message_size(
    config: EventMetricsConfiguration,
    interval_seconds: float,
    *,
    session_id: str = "0" * _GUID_TEXT,
    client_id: str = "0" * _GUID_TEXT,
) -> int:
    """The agent's CollectTracing2 request for this ``POST /livemetrics`` body, in bytes.

    ``session_id`` defaults to a GUID's length, the longest the agent uses (``SHARED`` on .NET 8+)."""
    counter_arguments = {"EventCounterIntervalSec": invariant_number(interval_seconds)}
    size = collect_tracing2_size((name, counter_arguments) for name in _counter_sources(config))
    return size + _metrics_provider_size(config, interval_seconds, session_id, client_id)


COUNTER_INTERVAL_ARGUMENT: Final = "EventCounterIntervalSec"

_NET_FLOAT = re.compile(
    r"[\t\n\v\f\r ]*([+-]?)(?:(infinity)|(nan)|((?:[0-9][0-9,]*)?(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?))"
    r"[\t\n\v\f\r ]*\x00*",
    re.ASCII | re.IGNORECASE,
)


def parse_net_float(text: str) -> float | None:
    """``float.TryParse`` with the invariant culture (Float | AllowThousands), as a single; None
    when .NET would not parse it. Verified against .NET 8 in tests/unit/test_queries.py."""
    match = _NET_FLOAT.fullmatch(text)
    if match is None:
        return None
    sign, infinity, nan, number = match.groups()
    if nan:
        return math.nan
    if infinity:
        return -math.inf if sign == "-" else math.inf
    mantissa = number.split("e")[0].split("E")[0].replace(",", "")
    if not any(c.isdigit() for c in mantissa) or (number.startswith(",")):
        return None
    value = float(sign + number.replace(",", ""))
    return _single(value)


def _single(value: float) -> float:
    """Round to IEEE single precision (.NET ``float``); beyond its range is infinity, as .NET gives."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def _single_text(value: float) -> str:
    # .NET Core 3.0+ writes a float as the shortest text that reads back to the same single.
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if _single(float(text)) == value:
            return text.replace("e+", "E+").replace("e-", "E-")
    return repr(value)


def counter_interval_errors(
    config: EventProvidersConfiguration,
    interval_seconds: float,
    provider_intervals: Mapping[str, float] | None = None,
) -> dict[str, list[str]]:
    """dotnet-monitor's CounterValidator for ``POST /trace``: a provider whose
    ``EventCounterIntervalSec`` argument parses as a number other than the configured counter
    interval (per provider if configured, names case-insensitive) would publish samples the
    monitor drops, so it is a 400. Unparsable text is left to the provider, as dotnet-monitor does.
    Returns the ``errors`` map (empty when all is well)."""
    per_provider = {k.lower(): v for k, v in (provider_intervals or {}).items()}
    errors: dict[str, list[str]] = {}
    for index, provider in enumerate(config.providers):
        text = (provider.arguments or {}).get(COUNTER_INTERVAL_ARGUMENT)
        if text is None:
            continue
        given = parse_net_float(text)
        expected = _single(per_provider.get(provider.name.lower(), interval_seconds))
        if given is not None and given != expected:
            errors[f"providers[{index}].arguments.{COUNTER_INTERVAL_ARGUMENT}"] = [
                f"Custom trace metric provider '{provider.name}' must use the expected counter "
                f"interval '{_single_text(expected)}'."
            ]
    return errors


# --- validation errors -----------------------------------------------------------------------


def error_path(loc: tuple[int | str, ...]) -> str:
    """``("providers", 0, "keywords")`` → ``providers[0].keywords``; the whole body → ``""``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts)


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    """The ``errors`` map of an ASP.NET ValidationProblemDetails: camelCase path → messages."""
    errors: dict[str, list[str]] = {}
    for detail in exc.errors(include_url=False):
        loc = tuple(detail["loc"])
        named = (detail.get("ctx") or {}).get("field")
        if not loc and isinstance(named, str):
            loc = (named,)
        if detail["type"] == "missing" and loc and isinstance(loc[-1], str):
            message = f"The {loc[-1]} field is required."
        elif detail["type"] == "too_short" and loc == ("providers",):
            message = "At least one provider is required."
        else:
            message = detail["msg"]
        errors.setdefault(error_path(loc), []).append(message)
    return errors


# --- Metric records (the live-metrics artifact) -----------------------------------------------

CounterType = Literal["Rate", "Metric"]

_RS: Final = b"\x1e"
_LF: Final = b"\n"
_MAX_EXACT_INT: Final = 2**53
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=True)


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with seven fractional digits and ``+00:00``, like .NET's round-trip "o"."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
        f"{moment.second:02d}.{moment.microsecond:06d}0+00:00"
    )


def json_number(value: float) -> float | int:
    """NaN and ±inf are not JSON: written as 0 (as dotnet-monitor does); whole numbers without ``.0``."""
    if not math.isfinite(value):
        return 0
    if value.is_integer() and abs(value) < _MAX_EXACT_INT:
        return int(value)
    return value


@dataclass(frozen=True, slots=True)
class Metric:
    """One record of the ``/livemetrics`` json-seq artifact.

    A plain dataclass, not a pydantic model: records are produced on the agent's hot path (dozens
    per interval per provider) from values the pipeline has already checked, so per-record
    validation would cost time and buy nothing; ``to_json_seq`` writes the contract shape directly.
    """

    timestamp: datetime
    provider: str
    name: str
    display_name: str
    unit: str | None
    counter_type: CounterType
    value: float
    tags: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    meter_tags: str = ""
    instrument_tags: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in dotnet-monitor's property order (``metadata`` as in the seed)."""
        return {
            "timestamp": format_timestamp(self.timestamp),
            "provider": self.provider,
            "name": self.name,
            "displayName": self.display_name,
            "unit": self.unit,
            "counterType": self.counter_type,
            "tags": self.tags,
            "value": json_number(self.value),
            "metadata": dict(self.metadata),
            "meterTags": self.meter_tags,
            "instrumentTags": self.instrument_tags,
        }

    def to_json_seq(self) -> bytes:
        """One RFC 7464 record: 0x1E, compact JSON, 0x0A."""
        return _RS + _dumps(self.to_dict()).encode("ascii") + _LF

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        """Read a record back (CLI, tests); accepts what ``to_dict`` writes."""
        counter_type = data["counterType"]
        if counter_type not in ("Rate", "Metric"):
            raise ValueError(f"unknown counterType {counter_type!r}")
        return cls(
            timestamp=datetime.fromisoformat(data["timestamp"]),
            provider=data["provider"],
            name=data["name"],
            display_name=data.get("displayName") or data["name"],
            unit=data.get("unit"),
            counter_type=counter_type,
            value=float(data["value"]),
            tags=data.get("tags") or "",
            metadata=dict(data.get("metadata") or {}),
            meter_tags=data.get("meterTags") or "",
            instrument_tags=data.get("instrumentTags") or "",
        )


def iter_json_seq(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of an ``application/json-seq`` body (RFC 7464; empty records skipped)."""
    for chunk in data.split(_RS):
        text = chunk.strip()
        if text:
            yield json.loads(text)


# --- processes ----------------------------------------------------------------------------------


class ProcessIdentifier(ContractModel):
    """An entry of ``GET /processes``."""

    pid: int
    uid: uuid.UUID
    name: str
    is_default: bool = False


SHORT_CONTAINER_ID = 12  # docker's short form: shorter prefixes would match too much


def name_matches(wanted: str, name: str, pod_name: str | None, container_id: str | None) -> bool:
    """The ``name`` selector: the process name, its pod's name, or its container id (full, or a
    prefix of at least 12 characters), ignoring case."""
    folded = wanted.casefold()
    if folded in (name.casefold(), (pod_name or "").casefold()):
        return True
    cid = (container_id or "").casefold()
    return bool(cid) and len(folded) >= SHORT_CONTAINER_ID and cid.startswith(folded)


class ProcessInfo(ContractModel):
    """``GET /processes/{pid}``; ``uid`` is all-zero for .NET Core 3.1 targets.

    dnmon adds optional fields after dotnet-monitor's: where a containerised process runs (its pid
    in its own PID namespace, container, pod or ECS task) and, in ``unavailable``, why the agent
    cannot talk to it. Agents leave them out when unset, so a plain host's shape is unchanged.
    """

    pid: int
    uid: uuid.UUID
    name: str
    command_line: str
    operating_system: str
    process_architecture: str
    managed_entry_point_assembly_name: str | None = None
    namespaced_pid: int | None = None
    container_id: str | None = None
    container_runtime: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    ecs_task_id: str | None = None
    unavailable: str | None = None

    def matches_name(self, name: str) -> bool:
        return name_matches(name, self.name, self.pod_name, self.container_id)

    def name_keys(self) -> set[str]:
        """What a ``name`` selector may say to mean this process (the registry indexes each)."""
        keys = {self.name.casefold()}
        if self.pod_name:
            keys.add(self.pod_name.casefold())
        if self.container_id:
            keys.add(self.container_id[:SHORT_CONTAINER_ID].casefold())
        return keys

    @model_serializer(mode="wrap")
    def _leave_out_unset_extras(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _PROCESS_EXTRAS:
            for key in (name, to_camel(name)):
                if key in data and data[key] is None:
                    del data[key]
        return data


_PROCESS_EXTRAS: Final = (
    "namespaced_pid",
    "container_id",
    "container_runtime",
    "pod_name",
    "pod_namespace",
    "ecs_task_id",
    "unavailable",
)
