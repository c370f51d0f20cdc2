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
import uuid
from collections.abc import Iterator, Mapping
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


_CHARACTER_NAMES: Final = {"\r": "a carriage return", "\n": "a line feed"}


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

    provider_name: Annotated[str, _reject_blank("providerName")]
    counter_names: list[str] | None = None


class EventMetricsMeter(ContractModel):
    """A System.Diagnostics.Metrics meter; ``instrumentNames`` empty or absent means all instruments."""

    meter_name: Annotated[str, _reject_blank("meterName"), _metrics_spec_name("meterName")]
    instrument_names: list[Annotated[str, _metrics_spec_name("instrumentName")]] | None = None


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

_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_HEX = re.compile(r"0[xX]([0-9a-fA-F]+)", re.ASCII)


def _parse_keywords(value: Any) -> int:
    """Keywords as text: decimal or ``0x`` hex, unsigned, at most 64 bits (JSON integers too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number: int | None = value
    elif isinstance(value, str):
        text = value.strip()
        number = None
        if _DECIMAL.fullmatch(text):
            number = int(text)
        elif hex_digits := _HEX.fullmatch(text):
            number = int(hex_digits.group(1), 16)
    else:
        number = None
    if number is None:
        raise _error(
            "keywords_format",
            f"The value {json.dumps(value, default=str)} is not valid keywords: "
            "expected a decimal or 0x-prefixed hexadecimal number.",
        )
    if not 0 <= number <= ALL_KEYWORDS:
        raise _error("keywords_range", "Keywords must fit in 64 bits (0 to 0xFFFFFFFFFFFFFFFF).")
    return number


FILTER_DATA_FORBIDDEN: Final = frozenset(';="')
"""Characters an argument key or value may not hold: ``;`` and ``=`` delimit the provider's filter
data (``key=value;key=value``) and ``"`` is the quote the encoder would need."""


def _parse_buffer_size(value: Any) -> Any:
    number = _json_int(value)
    if not 1 <= number <= 1024:
        raise _error("range", "The field bufferSizeInMB must be between 1 and 1024.")
    return number


class EventPipeProviderModel(ContractModel):
    """One provider of ``POST /trace``; ``keywords`` is held as an int and written back as hex."""

    name: Annotated[str, _reject_blank("name")]
    keywords: Annotated[int, BeforeValidator(_parse_keywords)] = ALL_KEYWORDS
    event_level: Annotated[EventLevel, BeforeValidator(_parse_event_level)] = EventLevel.VERBOSE
    arguments: dict[str, str] | None = None

    @field_validator("arguments")
    @classmethod
    def _no_smuggled_filter_data(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if not key:
                raise _error("argument_key", "An argument name must not be empty.")
            for kind, part in (("name", key), ("value", text)):
                bad = set(part) & FILTER_DATA_FORBIDDEN
                if bad:
                    raise _error(
                        "argument_character",
                        f"Argument {kind} {json.dumps(part)} contains {_describe(bad)}, which would "
                        "alter the provider's filter data.",
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
    buffer_size_in_mb: Annotated[int, BeforeValidator(_parse_buffer_size), Field(alias="bufferSizeInMB")] = (
        256
    )


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
