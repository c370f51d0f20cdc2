"""Trace profiles of ``GET /trace?profile=…``: the provider sets dotnet-monitor collects for each.

The values mirror dotnet-monitor's ``TraceUtilities.GetTraceConfiguration`` and the source
configurations of Microsoft.Diagnostics.Monitoring.EventPipe (``CpuProfileConfiguration``,
``HttpRequestSourceConfiguration``, ``LoggingSourceConfiguration``, ``MetricSourceConfiguration``,
``GcCollectConfiguration``), combined as ``AggregateSourceConfiguration`` combines them.

Profile configurations are built without the user-input validator of
:class:`~dnmon_core.models.EventPipeProviderModel`: that validator rejects ``;``, ``=`` and ``"`` in
arguments so a request body cannot smuggle extra filter data, but the Http profile's
``FilterAndPayloadSpecs`` is made of exactly those separators. The values here are our own
constants, so nothing is smuggled; the IPC encoder quotes such a value as the .NET client does.

Like :mod:`dnmon_core.models`, this module imports neither the agent nor boto3.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from .models import EventLevel, EventPipeProviderModel, EventProvidersConfiguration


class TraceProfile(enum.Flag):
    """dotnet-monitor's ``TraceProfile`` flags, with the same names and values."""

    Cpu = 0x1
    Http = 0x2
    Logs = 0x4
    Metrics = 0x8
    GcCollect = 0x10

    @classmethod
    def parse(cls, text: str) -> TraceProfile:
        """Read a ``profile`` query value as .NET's ``Enum.TryParse(ignoreCase: true)`` reads it.

        Comma-separated names in any casing, blanks around each allowed; or one decimal number
        (``"9"`` is Cpu|Metrics). Unlike .NET we refuse a number with no or undefined flags, since
        it would select nothing (or nothing more). An empty or blank value is an error here too:
        a caller that wants "absent means default" checks for absence before calling.
        """
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"The profile is empty; expected one or more of {_NAMES_TEXT}.")
        if _NUMBER.fullmatch(stripped):
            number = int(stripped)
            if not 0 < number <= _ALL_BITS:
                raise ValueError(
                    f"The profile value {stripped} is not a combination of {_NAMES_TEXT} "
                    f"(1 to {_ALL_BITS} as a number)."
                )
            return cls(number)
        profile = cls(0)
        for part in text.split(","):
            name = part.strip()
            member = _BY_LOWER_NAME.get(name.lower())
            if member is None:
                problem = f"'{name}' is not a trace profile" if name else "A profile name is empty"
                raise ValueError(
                    f"{problem} (in '{text}'); expected a comma-separated list of {_NAMES_TEXT}."
                )
            profile |= member
        return profile

    def __str__(self) -> str:
        # .NET's Enum.ToString of a flags value: "Cpu, Http" (also the OpenAPI default's form).
        return ", ".join(member.name or "" for member in self)


_MEMBERS: Final = tuple(TraceProfile)
_BY_LOWER_NAME: Final = {member.name.lower(): member for member in _MEMBERS if member.name}
_NAMES_TEXT: Final = ", ".join(member.name or "" for member in _MEMBERS)
_ALL_BITS: Final = sum(member.value for member in _MEMBERS)
_NUMBER: Final = re.compile(r"[+-]?[0-9]+", re.ASCII)

DEFAULT_PROFILE: Final = TraceProfile.Cpu | TraceProfile.Http | TraceProfile.Metrics | TraceProfile.GcCollect
"""What ``GET /trace`` collects without ``profile``: dotnet-monitor's ``DefaultTraceProfiles`` (its
API doc still says ``Cpu,Http,Metrics``, but the code and OpenAPI default include GcCollect)."""

# --- provider names, keywords and levels ---------------------------------------------------------

SAMPLE_PROFILER: Final = "Microsoft-DotNETCore-SampleProfiler"
DOTNET_RUNTIME: Final = "Microsoft-Windows-DotNETRuntime"
DOTNET_RUNTIME_PRIVATE: Final = "Microsoft-Windows-DotNETRuntimePrivate"
DIAGNOSTIC_SOURCE: Final = "Microsoft-Diagnostics-DiagnosticSource"
EXTENSIONS_LOGGING: Final = "Microsoft-Extensions-Logging"
TPL_EVENT_SOURCE: Final = "System.Threading.Tasks.TplEventSource"
DEFAULT_COUNTER_SOURCES: Final = ("System.Runtime", "Microsoft.AspNetCore.Hosting", "Grpc.AspNetCore.Server")

EVENT_SOURCE_RESERVED_KEYWORDS: Final = 0xF000_0000_0000
"""NETCore.Client's default keywords (bits 44-47, which every EventSource sets)."""

CLR_DEFAULT_KEYWORDS: Final = 0x14_C14F_CCBD
"""TraceEvent's ``ClrTraceEventParser.Keywords.Default``: GC, Type, GCHeapSurvivalAndMovement,
Binder, Loader, Jit, NGen, SupressNGen, StopEnumeration, Security, AppDomainResourceManagement,
Exception, Threading, Contention, Stack, JittedMethodILToNativeMap, ThreadTransfer,
GCHeapAndTypeNames, Codesymbols, Compilation (as in dotnet-trace's cpu-sampling profile)."""

CLR_GC_KEYWORD: Final = 0x1
DIAGNOSTIC_SOURCE_KEYWORDS: Final = 0x1 | 0x2
"""``Messages`` (diagnostics about the bridge itself) | ``Events`` (forward DiagnosticSource events)."""
LOGGING_KEYWORDS: Final = 0x4 | 0x8
"""LoggingEventSource ``FormattedMessage`` | ``JsonMessage``."""
TPL_FLOW_ACTIVITY_IDS: Final = 0x80
"""TplEventSource ``TasksFlowActivityIds``: activity correlation, so log scopes can be followed."""

DEFAULT_RUNDOWN_KEYWORD: Final = 0x8002_0139
"""NETCore.Client's ``EventPipeSession.DefaultRundownKeyword``: what ``requestRundown: true`` asks for."""

PROFILE_BUFFER_SIZE_MB: Final = 256
"""``MonitoringSourceConfiguration.BufferSizeInMB``, which the aggregate does not override."""

METRICS_INTERVAL_RANGE: Final = (1.0, 86400.0)
"""dotnet-monitor's ``GlobalCounter:IntervalSeconds`` range (one second to one day)."""

HTTP_FILTER_AND_PAYLOAD_SPECS: Final = (
    # ASP.NET Core incoming requests: start (with request line and activity ids) and stop.
    "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Start@Activity1Start:-"
    "Request.Scheme;Request.Host;Request.PathBase;Request.QueryString;Request.Path;Request.Method"
    ";ActivityStartTime=*Activity.StartTimeUtc.Ticks;ActivityParentId=*Activity.ParentId"
    ";ActivityId=*Activity.Id;ActivitySpanId=*Activity.SpanId;ActivityTraceId=*Activity.TraceId"
    ";ActivityParentSpanId=*Activity.ParentSpanId;ActivityIdFormat=*Activity.IdFormat\r\n"
    "Microsoft.AspNetCore/Microsoft.AspNetCore.Hosting.HttpRequestIn.Stop@Activity1Stop:-"
    "ActivityId=*Activity.Id;Request.Path;Response.StatusCode"
    ";ActivityDuration=*Activity.Duration.Ticks\r\n"
    # HttpClient outgoing requests: the plain event, then start and stop.
    "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut@Event:-\r\n"
    "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut.Start@Activity2Start:-"
    "Request.RequestUri;Request.Method;Request.RequestUri.Host;Request.RequestUri.Port"
    ";ActivityStartTime=*Activity.StartTimeUtc.Ticks;ActivityId=*Activity.Id"
    ";ActivitySpanId=*Activity.SpanId;ActivityTraceId=*Activity.TraceId"
    ";ActivityParentSpanId=*Activity.ParentSpanId;ActivityIdFormat=*Activity.IdFormat"
    ";ActivityId=*Activity.Id\r\n"
    "HttpHandlerDiagnosticListener/System.Net.Http.HttpRequestOut.Stop@Activity2Stop:-"
    ";ActivityDuration=*Activity.Duration.Ticks;ActivityId=*Activity.Id\r\n"
)
"""The DiagnosticSourceEventSource filter of the Http profile. The value must be byte-for-byte
dotnet-monitor's (its odd spots included: the doubled ``ActivityId`` and the leading ``;`` of the
last spec), because tools reading these traces expect exactly the payloads it selects."""


@dataclass(frozen=True, slots=True)
class _Provider:
    name: str
    keywords: int
    level: EventLevel
    arguments: tuple[tuple[str, str], ...] = ()


def _cpu() -> list[_Provider]:
    return [
        _Provider(SAMPLE_PROFILER, EVENT_SOURCE_RESERVED_KEYWORDS, EventLevel.INFORMATIONAL),
        _Provider(DOTNET_RUNTIME, CLR_DEFAULT_KEYWORDS, EventLevel.INFORMATIONAL),
    ]


def _http() -> list[_Provider]:
    return [
        _Provider(
            DIAGNOSTIC_SOURCE,
            DIAGNOSTIC_SOURCE_KEYWORDS,
            EventLevel.VERBOSE,
            (("FilterAndPayloadSpecs", HTTP_FILTER_AND_PAYLOAD_SPECS),),
        )
    ]


def _logs() -> list[_Provider]:
    # LogLevel.Trace maps to EventLevel.LogAlways (0); the app's own logging filters decide the rest.
    return [
        _Provider(
            EXTENSIONS_LOGGING, LOGGING_KEYWORDS, EventLevel.LOG_ALWAYS, (("FilterSpecs", "UseAppFilters"),)
        ),
        _Provider(TPL_EVENT_SOURCE, TPL_FLOW_ACTIVITY_IDS, EventLevel.INFORMATIONAL),
    ]


def _metrics(interval: str) -> list[_Provider]:
    # EventCounters only (no System.Diagnostics.Metrics meter session), keywords None.
    return [
        _Provider(name, 0, EventLevel.INFORMATIONAL, (("EventCounterIntervalSec", interval),))
        for name in DEFAULT_COUNTER_SOURCES
    ]


def _gc_collect() -> list[_Provider]:
    # dotnet-trace's gc-collect profile.
    return [
        _Provider(DOTNET_RUNTIME, CLR_GC_KEYWORD, EventLevel.INFORMATIONAL),
        _Provider(DOTNET_RUNTIME_PRIVATE, CLR_GC_KEYWORD, EventLevel.INFORMATIONAL),
    ]


_RUNDOWN_KEYWORDS: Final = {
    TraceProfile.Cpu: DEFAULT_RUNDOWN_KEYWORD,
    TraceProfile.Http: DEFAULT_RUNDOWN_KEYWORD,
    TraceProfile.Logs: 0,
    TraceProfile.Metrics: 0,
    TraceProfile.GcCollect: CLR_GC_KEYWORD,
}


def rundown_keyword(profile: TraceProfile) -> int:
    """The rundown keyword dotnet-monitor asks for: the OR of each selected profile's."""
    keyword = 0
    for member in profile:
        keyword |= _RUNDOWN_KEYWORDS[member]
    return keyword


def format_interval(seconds: float) -> str:
    """``seconds`` as .NET writes a ``float`` with the invariant culture: shortest round trip, no
    exponent in our range (``5`` → ``"5"``, ``2.5`` → ``"2.5"``)."""
    single = _as_single(seconds)
    # Nine significant digits always round-trip a float32; .NET prints the fewest that do.
    text = next(t for d in range(1, 10) if _as_single(float(t := f"{single:.{d}g}")) == single)
    fixed = format(Decimal(text), "f")
    return fixed.rstrip("0").rstrip(".") if "." in fixed else fixed


def _as_single(value: float) -> float:
    """``value`` rounded to a .NET ``float`` (IEEE single), as dotnet-monitor's options hold it."""
    single: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return single


def _merge(providers: Iterable[_Provider]) -> list[_Provider]:
    """One entry per provider name, in first-seen order: keywords OR-ed, the more verbose level.

    dotnet-monitor sends every profile's entries as they are (Cpu|GcCollect names the runtime
    provider twice), and the runtime then honours only the first entry of a name within a session.
    Merging gives the runtime the same effective settings in every combination of these profiles
    (Cpu's runtime keywords already include GC, at the same level) while sending each name once.
    OR and max are the runtime's own rule for one provider enabled by several sessions. The first
    value of an argument wins, as the first entry's filter data does in the runtime.
    """
    merged: dict[str, _Provider] = {}
    for provider in providers:
        seen = merged.get(provider.name)
        if seen is None:
            merged[provider.name] = provider
            continue
        arguments = dict(provider.arguments)
        arguments.update(seen.arguments)
        merged[provider.name] = _Provider(
            provider.name,
            seen.keywords | provider.keywords,
            max(seen.level, provider.level),
            tuple(arguments.items()),
        )
    return list(merged.values())


def profile_configuration(
    profile: TraceProfile, metrics_interval_seconds: float = 5
) -> EventProvidersConfiguration:
    """The ``POST /trace``-shaped configuration that collects ``profile``.

    Rundown is requested when the combined rundown keyword is NETCore.Client's default (any of Cpu
    or Http). GcCollect alone asks dotnet-monitor for a GC-only rundown keyword, which needs
    CollectTracing4 (.NET 9+); on older runtimes dotnet-monitor retries without rundown, and that
    is what we do, as we speak CollectTracing2 only. The buffer is 256 MB, as in dotnet-monitor.
    """
    if not profile:
        raise ValueError(f"No trace profile selected; expected one or more of {_NAMES_TEXT}.")
    if not math.isfinite(metrics_interval_seconds) or not (
        METRICS_INTERVAL_RANGE[0] <= metrics_interval_seconds <= METRICS_INTERVAL_RANGE[1]
    ):
        raise ValueError(
            f"The metrics interval must be between {METRICS_INTERVAL_RANGE[0]:g} and "
            f"{METRICS_INTERVAL_RANGE[1]:g} seconds, got {metrics_interval_seconds!r}."
        )
    selected: list[_Provider] = []
    # The order of dotnet-monitor's TraceUtilities, whatever order the flags were named in.
    if TraceProfile.Cpu in profile:
        selected += _cpu()
    if TraceProfile.Http in profile:
        selected += _http()
    if TraceProfile.Logs in profile:
        selected += _logs()
    if TraceProfile.Metrics in profile:
        selected += _metrics(format_interval(metrics_interval_seconds))
    if TraceProfile.GcCollect in profile:
        selected += _gc_collect()
    providers = [
        EventPipeProviderModel.model_construct(
            name=p.name,
            keywords=p.keywords,
            event_level=p.level,
            arguments=dict(p.arguments) if p.arguments else None,
        )
        for p in _merge(selected)
    ]
    return EventProvidersConfiguration.model_construct(
        providers=providers,
        request_rundown=rundown_keyword(profile) == DEFAULT_RUNDOWN_KEYWORD,
        buffer_size_in_mb=PROFILE_BUFFER_SIZE_MB,
    )
