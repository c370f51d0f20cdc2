"""Query strings and request bodies as ASP.NET binds them, one pydantic model per route.

dotnet-monitor's routes are minimal APIs: query names bind case-insensitively, a repeated name
yields its values joined by commas (``StringValues``), an empty value means "not given", and each
value parses with the type's own .NET parser under the invariant culture:

- ``int``  — ``int.TryParse(s, NumberStyles.Integer)``: ASCII digits, one leading ``+``/``-``,
  blanks (space, ``\\t \\n \\v \\f \\r``) around, trailing NULs; no ``_``, no other digits.
- ``Guid`` — ``Guid.TryParse``: the D, N, B, P and X forms, blanks trimmed.
- ``bool`` — ``bool.TryParse``: ``true``/``false`` in any case, Unicode blanks and NULs trimmed.

tests/unit/test_queries.py checks these parsers against a real .NET 8 runtime. ``parse_query``
raises ``QueryError`` carrying the ``errors`` map of a ValidationProblemDetails; ``read_json_body``
applies ASP.NET's content-type and encoding rules to a body before the body model sees it.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from .operations import parse_tags
from .profiles import DEFAULT_PROFILE, TraceProfile

INT_MAX: Final = 2147483647

# --- .NET's parsers ------------------------------------------------------------------------------

_INTEGER = re.compile(r"[\t\n\v\f\r ]*([+-]?[0-9]+)[\t\n\v\f\r ]*\x00*", re.ASCII)
_HEX = "[0-9a-fA-F]"
_GUID_D = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_GUID_FORMS = re.compile(
    rf"(?P<n>{_HEX}{{32}})|(?P<d>{_GUID_D})|\{{(?P<b>{_GUID_D})\}}|\((?P<p>{_GUID_D})\)", re.ASCII
)
_GUID_X = re.compile(
    rf"\{{0[xX]({_HEX}{{1,8}}),0[xX]({_HEX}{{1,4}}),0[xX]({_HEX}{{1,4}}),"
    rf"\{{((?:0[xX]{_HEX}{{1,2}},){{7}}0[xX]{_HEX}{{1,2}})\}}\}}",
    re.ASCII,
)


def is_net_whitespace(char: str) -> bool:
    """``char.IsWhiteSpace``: the Latin-1 blanks plus Unicode space, line and paragraph separators."""
    return char in "\t\n\v\f\r \x85\xa0" or unicodedata.category(char) in ("Zs", "Zl", "Zp")


def parse_net_int(text: str) -> int | None:
    """``int.TryParse(text, NumberStyles.Integer, InvariantCulture)``; None when it fails."""
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    number = int(match.group(1))
    return number if -(2**31) <= number < 2**31 else None


def parse_net_bool(text: str) -> bool | None:
    """``bool.TryParse``: ``true``/``false`` ignoring case, blanks and NULs around."""
    start, end = 0, len(text)
    while start < end and (is_net_whitespace(text[start]) or text[start] == "\x00"):
        start += 1
    while end > start and (is_net_whitespace(text[end - 1]) or text[end - 1] == "\x00"):
        end -= 1
    word = text[start:end].lower()
    return True if word == "true" else False if word == "false" else None


def parse_net_guid(text: str) -> uuid.UUID | None:
    """``Guid.TryParse``: D, N, B, P or X form, surrounding blanks trimmed (not NULs)."""
    start, end = 0, len(text)
    while start < end and is_net_whitespace(text[start]):
        start += 1
    while end > start and is_net_whitespace(text[end - 1]):
        end -= 1
    trimmed = text[start:end]
    match = _GUID_FORMS.fullmatch(trimmed)
    if match is not None:
        return uuid.UUID(next(g for g in match.groups() if g))
    # The X form also allows blanks anywhere inside.
    match = _GUID_X.fullmatch("".join(c for c in trimmed if not is_net_whitespace(c)))
    if match is None:
        return None
    a, b, c, rest = match.groups()
    tail = "".join(f"{int(byte, 16):02x}" for byte in rest.replace("0x", "").replace("0X", "").split(","))
    return uuid.UUID(f"{int(a, 16):08x}{int(b, 16):04x}{int(c, 16):04x}{tail}")


# --- binding -------------------------------------------------------------------------------------


def _invalid(value: Any) -> PydanticCustomError:
    # ctx carries the text so the message can name the field as ASP.NET does.
    return PydanticCustomError("query_value", "The value '{value}' is not valid.", {"value": str(value)})


def _bind_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = parse_net_int(value) if isinstance(value, str) else None
    if number is None:
        raise _invalid(value)
    return number


def _bind_guid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    parsed = parse_net_guid(value) if isinstance(value, str) else None
    if parsed is None:
        raise _invalid(value)
    return parsed


def _bind_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    parsed = parse_net_bool(value) if isinstance(value, str) else None
    if parsed is None:
        raise _invalid(value)
    return parsed


def _bind_profile(value: Any) -> Any:
    if isinstance(value, TraceProfile):
        return value
    try:
        if isinstance(value, str):
            return TraceProfile.parse(value)
    except ValueError:
        pass
    raise _invalid(value)


NetInt = Annotated[int, BeforeValidator(_bind_int)]
NetGuid = Annotated[uuid.UUID, BeforeValidator(_bind_guid)]
NetBool = Annotated[bool, BeforeValidator(_bind_bool)]
Profile = Annotated[
    TraceProfile,
    BeforeValidator(_bind_profile),
    WithJsonSchema(
        {
            "type": "string",
            "description": "Comma-separated flags: Cpu, Http, Logs, Metrics, GcCollect (any casing), "
            "or their sum as a number.",
            "example": "Cpu,Http,Metrics,GcCollect",
        }
    ),
]


class QueryError(Exception):
    """A query string ASP.NET would refuse: ``errors`` is ValidationProblemDetails' map."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors = {k: list(v) for k, v in errors.items()}
        first = next(iter(self.errors.items()))
        super().__init__(f"{first[0]}: {first[1][0]}")


class QueryModel(BaseModel):
    """Base of the query models: camelCase names, unknown parameters ignored (as ASP.NET does)."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", validate_by_alias=True, validate_by_name=True, serialize_by_alias=True
    )


class ProcessQuery(QueryModel):
    """``pid`` / ``uid`` / ``name`` pick the process (none: the default process); ``host`` is dnmon's
    choice of agent when several are registered."""

    pid: NetInt | None = Field(None, description="The ID of the process.")
    uid: NetGuid | None = Field(
        None, description="A value that uniquely identifies a runtime instance within a process."
    )
    name: str | None = Field(None, description="The name of the process.")
    host: str | None = Field(None, description="dnmon: the host (agent) to ask, when several are registered.")


class ProcessListQuery(QueryModel):
    """``GET /processes``: one host's processes, or one page of the fleet's (``next``)."""

    host: str | None = Field(None, description="dnmon: only this host's processes.")
    next: str | None = Field(None, description="dnmon: the continuation token of the previous page.")
    limit: NetInt = Field(100, ge=1, le=1000, description="dnmon: at most this many agents per page.")


class InfoQuery(QueryModel):
    """``GET /info``: one page of the live agents."""

    next: str | None = Field(None, description="dnmon: the continuation token of the previous page.")
    limit: NetInt = Field(100, ge=1, le=1000, description="dnmon: at most this many agents per page.")


class HostQuery(QueryModel):
    """``GET /processes/{pid}``: the pid is in the path; ``host`` picks the agent."""

    host: str | None = Field(None, description="dnmon: the host (agent) to ask, when several are registered.")


class CaptureQuery(ProcessQuery):
    """``POST /trace``, ``POST``/``GET /livemetrics``."""

    duration_seconds: NetInt = Field(
        30,
        alias="durationSeconds",
        ge=-1,
        le=INT_MAX,
        description="The duration of the capture in seconds; -1 is indefinite.",
    )
    egress_provider: str | None = Field(
        None,
        alias="egressProvider",
        description="The named egress provider; absent, the artifact is the HTTP response.",
    )
    tags: str | None = Field(None, description="A comma-separated list of identifiers for the operation.")

    @property
    def tag_set(self) -> list[str]:
        """The tags as dotnet-monitor keeps them: empty entries dropped, duplicates once."""
        return parse_tags(self.tags)


class TraceQuery(CaptureQuery):
    """``GET /trace``: a capture query plus the profiles to collect."""

    profile: Profile = Field(
        DEFAULT_PROFILE,
        description="The profiles enabled for the trace session.",
        json_schema_extra={"default": "Cpu,Http,Metrics,GcCollect"},
    )


class OperationsQuery(QueryModel):
    """``GET /operations``: filters, plus dnmon's pagination (``next`` from the previous page)."""

    pid: NetInt | None = Field(None, description="The ID of the process.")
    uid: NetGuid | None = Field(
        None, description="A value that uniquely identifies a runtime instance within a process."
    )
    name: str | None = Field(None, description="The name of the process.")
    tags: str | None = Field(None, description="Operations carrying all of these comma-separated tags.")
    host: str | None = Field(None, description="dnmon: only operations on this host.")
    next: str | None = Field(None, description="dnmon: the continuation token of the previous page.")
    limit: NetInt = Field(100, ge=1, le=1000, description="dnmon: at most this many operations per page.")

    @property
    def tag_set(self) -> list[str]:
        return parse_tags(self.tags)


class StopQuery(QueryModel):
    """``DELETE /operations/{operationId}``: ``stop=true`` asks for a graceful stop."""

    stop: NetBool = Field(
        False, description="Stop gracefully (the artifact stays valid) instead of cancelling."
    )


ModelT = TypeVar("ModelT", bound=QueryModel)


def _aliases(model_cls: type[QueryModel]) -> dict[str, str]:
    return {(info.alias or name).lower(): info.alias or name for name, info in model_cls.model_fields.items()}


def _bounds(model_cls: type[QueryModel], alias: str) -> tuple[Any, Any]:
    for name, info in model_cls.model_fields.items():
        if (info.alias or name) == alias:
            low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
            high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
            return low, high
    return None, None


def parse_query(model_cls: type[ModelT], params: Mapping[str, str | None] | None) -> ModelT:
    """Bind a query string to ``model_cls`` as ASP.NET would, or raise ``QueryError``.

    ``params`` is API Gateway's ``queryStringParameters`` (or any name → value map; a value of
    None, like an empty one, means the parameter was not given)."""
    aliases = _aliases(model_cls)
    collected: dict[str, list[str]] = {}
    for key, value in (params or {}).items():
        alias = aliases.get(key.lower())
        if alias is not None and value:
            collected.setdefault(alias, []).append(value)
    data = {alias: ",".join(values) for alias, values in collected.items()}
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise QueryError(_query_errors(model_cls, exc)) from None


def _query_errors(model_cls: type[QueryModel], exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for detail in exc.errors(include_url=False):
        field = ".".join(str(part) for part in detail["loc"]) or "query"
        if detail["type"] in ("greater_than_equal", "less_than_equal"):
            low, high = _bounds(model_cls, field)
            message = f"The field {field} must be between {low} and {high}."
        elif detail["type"] == "query_value":
            message = f"The value '{(detail.get('ctx') or {}).get('value')}' is not valid for {field}."
        else:
            message = f"The value '{detail.get('input')}' is not valid for {field}."
        errors.setdefault(field, []).append(message)
    return errors


# --- request bodies --------------------------------------------------------------------------

JSON_MEDIA_TYPES: Final = ("application/json", "text/json", "application/*+json")
"""What dotnet-monitor's body routes accept (``.Accepts(ApplicationJson, TextJson, ApplicationAnyJson)``)."""


class BodyError(Exception):
    """A body refused before it is parsed: 415 for a media type the route does not take, 400
    for bytes that are not UTF-8 text."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = content_type.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json``, ``text/json`` or any ``application/*+json``, parameters aside."""
    if not content_type:
        return False
    kind, _ = _media_type(content_type)
    return kind in ("application/json", "text/json") or (
        kind.startswith("application/") and kind.endswith("+json") and len(kind) > len("application/+json")
    )


def read_json_body(content_type: str | None, body: bytes | None) -> str:
    """The text of a JSON request body, checked as ASP.NET checks it before deserialising.

    The media type comes first (415 when it is absent or not JSON, even for an empty body, as
    minimal APIs answer); a ``charset`` other than UTF-8 is 415 too; bytes that are not UTF-8 are a
    400. A UTF-8 byte-order mark is dropped (System.Text.Json skips it). An empty body is returned
    as ``""``: whether that is allowed is the body model's call."""
    if not is_json_media_type(content_type):
        raise BodyError(
            415, f"Unsupported media type {content_type or '(none)'}: send {', '.join(JSON_MEDIA_TYPES)}."
        )
    assert content_type is not None
    charset = _media_type(content_type)[1].get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise BodyError(415, f"Unsupported charset {charset}: the body must be UTF-8 JSON.")
    raw = body or b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    return text.removeprefix("\ufeff")


QUERY_MODELS: Final[dict[tuple[str, str], type[QueryModel]]] = {
    ("POST", "/livemetrics"): CaptureQuery,
    ("GET", "/livemetrics"): CaptureQuery,
    ("POST", "/trace"): CaptureQuery,
    ("GET", "/trace"): TraceQuery,
    ("GET", "/processes"): ProcessListQuery,
    ("GET", "/processes/{pid}"): HostQuery,
    ("GET", "/processes/env"): ProcessQuery,
    ("GET", "/env"): ProcessQuery,
    ("GET", "/process"): ProcessQuery,
    ("GET", "/operations"): OperationsQuery,
    ("DELETE", "/operations/{operationId}"): StopQuery,
    ("GET", "/info"): InfoQuery,
}
"""The query model of each route (routes not listed take no query parameters)."""
