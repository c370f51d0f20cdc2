"""Live metrics, sans-IO: which providers to enable, which events to decode, Metric records out.

Two sources feed ``/livemetrics`` (protocols.md §3, §4):

* EventCounters — one ``EventCounters`` event per counter per interval, payload
  ``{"": {"Payload": {...}}}``. Mean counters become ``Metric`` records with the mean; Sum counters
  ``Rate`` records with the increment over the interval (not per second), as dotnet-monitor does.
* System.Diagnostics.Metrics — MetricsEventSource's ``*ValuePublished`` events, whose fields are
  invariant-culture text. One session may carry other clients' data (a SHARED session, or a second
  session the runtime refused), so every event is checked against our session id and our filter.

The runtime matches provider and meter names case-sensitively, so they are enabled as the user
spelled them; received events are then filtered case-insensitively by provider/meter and
case-sensitively by counter/instrument name (dotnet-monitor's rule).

Nothing here touches a socket or a clock: the runner feeds events in and takes records out.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from dnmon_core.models import (
    DEFAULT_COUNTER_PROVIDERS,
    CounterType,
    EventMetricsConfiguration,
    Metric,
)

from ..diagnostics.events import Event, EventMetadata
from ..diagnostics.ipc import EventLevel, EventPipeProvider

METRICS_PROVIDER: Final = "System.Diagnostics.Metrics"
EVENT_COUNTERS_EVENT: Final = "EventCounters"
SHARED_SESSION: Final = "SHARED"
"""MetricsEventSource's shared session (.NET 8+): several clients, told apart by ClientId."""
MAX_HISTOGRAMS: Final = 20
MAX_TIME_SERIES: Final = 1000
TIME_SERIES_VALUES_KEYWORD: Final = 0x2
MAX_NOTICES: Final = 256

# --- MetricsEventSource events: ids are stable (manifest EventSource), names identify them first.

_RATE = 4
_GAUGE = 5
_HISTOGRAM = 6
_BEGIN_INSTRUMENT = 7
_ERROR = 9
_TIME_SERIES_LIMIT = 12
_HISTOGRAM_LIMIT = 13
_CALLBACK_ERROR = 14
_MULTIPLE_SESSIONS = 15
_UP_DOWN = 16
_SESSION_MISMATCH = 17

_METRICS_EVENT_IDS: Final = {
    "CounterRateValuePublished": _RATE,
    "GaugeValuePublished": _GAUGE,
    "HistogramValuePublished": _HISTOGRAM,
    "BeginInstrumentReporting": _BEGIN_INSTRUMENT,
    "Error": _ERROR,
    "TimeSeriesLimitReached": _TIME_SERIES_LIMIT,
    "HistogramLimitReached": _HISTOGRAM_LIMIT,
    "ObservableInstrumentCallbackError": _CALLBACK_ERROR,
    "MultipleSessionsNotSupportedError": _MULTIPLE_SESSIONS,
    "UpDownCounterRateValuePublished": _UP_DOWN,
    "MultipleSessionsConfiguredIncorrectlyError": _SESSION_MISMATCH,
}
_HANDLED_IDS: Final = frozenset(_METRICS_EVENT_IDS.values())

_VALUE_HEAD = ("sessionId", "meterName", "meterVersion", "instrumentName", "unit", "tags")
_INSTRUMENT_HEAD = ("sessionId", "meterName", "meterVersion", "instrumentName", "instrumentType", "unit")

# Field names per event and payload version (index = metadata.version; later versions only append).
_LAYOUTS: Final[dict[int, tuple[tuple[str, ...], ...]]] = {
    _RATE: (
        (*_VALUE_HEAD, "rate"),
        (*_VALUE_HEAD, "rate", "value"),
        (*_VALUE_HEAD, "rate", "value", "instrumentId"),
    ),
    _UP_DOWN: (
        (*_VALUE_HEAD, "rate"),
        (*_VALUE_HEAD, "rate", "value"),
        (*_VALUE_HEAD, "rate", "value", "instrumentId"),
    ),
    _GAUGE: (
        (*_VALUE_HEAD, "lastValue"),
        (*_VALUE_HEAD, "lastValue"),  # v1 was never shipped; .NET 9 went from v0 to v2
        (*_VALUE_HEAD, "lastValue", "instrumentId"),
    ),
    _HISTOGRAM: (
        (*_VALUE_HEAD, "quantiles"),
        (*_VALUE_HEAD, "quantiles", "count", "sum"),
        (*_VALUE_HEAD, "quantiles", "count", "sum", "instrumentId"),
    ),
    _BEGIN_INSTRUMENT: (
        (*_INSTRUMENT_HEAD, "description"),
        (*_INSTRUMENT_HEAD, "description", "instrumentTags", "meterTags", "meterScopeHash"),
        (*_INSTRUMENT_HEAD, "description", "instrumentTags", "meterTags", "meterScopeHash", "instrumentId"),
    ),
    _ERROR: (("sessionId", "errorMessage"),),
    _TIME_SERIES_LIMIT: (("sessionId",),),
    _HISTOGRAM_LIMIT: (("sessionId",),),
    _CALLBACK_ERROR: (("sessionId", "errorMessage"),),
    _MULTIPLE_SESSIONS: (("runningSessionId",),),
    _SESSION_MISMATCH: (
        (
            "clientId",
            "expectedMaxHistograms",
            "actualMaxHistograms",
            "expectedMaxTimeSeries",
            "actualMaxTimeSeries",
            "expectedRefreshInterval",
            "actualRefreshInterval",
        ),
    ),
}

PERCENTILE_TAG: Final = "Percentile"


def _metrics_event_id(metadata: EventMetadata) -> int | None:
    if metadata.event_name:
        return _METRICS_EVENT_IDS.get(metadata.event_name)
    # A metadata record without a name: fall back to the manifest's fixed ids.
    return metadata.event_id if metadata.event_id in _HANDLED_IDS else None


# --- notices ---------------------------------------------------------------------------------


PARTIAL_INTERVAL_FRACTION = 0.25
"""Samples whose IntervalSec is below this share of the requested interval are dropped."""


class NoticeKind(StrEnum):
    TARGET_ERROR = "TargetError"
    TIME_SERIES_LIMIT = "TimeSeriesLimitReached"
    HISTOGRAM_LIMIT = "HistogramLimitReached"
    CALLBACK_ERROR = "ObservableInstrumentCallbackError"
    MULTIPLE_SESSIONS = "MultipleSessionsNotSupported"
    SHARED_SESSION_MISMATCH = "SharedSessionConfiguredIncorrectly"
    UNSUPPORTED = "Unsupported"
    MALFORMED = "MalformedEvent"


_FATAL_KINDS: Final = frozenset({NoticeKind.MULTIPLE_SESSIONS, NoticeKind.SHARED_SESSION_MISMATCH})


@dataclass(frozen=True, slots=True)
class PipelineNotice:
    """Something the target reported about the session that records alone would hide.

    ``fatal`` notices mean this session will never receive its own System.Diagnostics.Metrics data
    (another session owns MetricsEventSource, or the shared one runs with other settings).
    """

    kind: NoticeKind
    message: str
    time: datetime

    @property
    def fatal(self) -> bool:
        return self.kind in _FATAL_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


# --- the pipeline --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InstrumentTags:
    meter_tags: str
    instrument_tags: str


_NO_TAGS: Final = _InstrumentTags("", "")
NameFilter = dict[str, frozenset[str] | None]
"""Provider or meter name (lower-cased) → the counter/instrument names wanted; None = all of them."""


def invariant_number(value: float) -> str:
    """Invariant-culture text of a number, as the runtime parses filter arguments (``5``, ``0.5``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _merge(into: dict[str, list[str] | None], key: str, names: list[str] | None) -> None:
    # Empty or absent names mean "all", and "all" absorbs any list given for the same key.
    if not names:
        into[key] = None
        return
    if key in into and into[key] is None:
        return
    current = into.setdefault(key, [])
    assert current is not None
    current.extend(n for n in names if n not in current)


class CountersPipeline:
    """EventCounters and System.Diagnostics.Metrics events in, Metric records out.

    ``session_id`` is the MetricsEventSource session: ``SHARED`` (the default) for .NET 8+ targets;
    give a GUID for older ones, where SHARED is not understood. ``client_id`` identifies us within a
    shared session so the runtime can stop our part when we leave.
    """

    def __init__(
        self,
        config: EventMetricsConfiguration,
        interval_seconds: float = 5,
        session_id: str | None = None,
        client_id: str | None = None,
    ) -> None:
        if not (math.isfinite(interval_seconds) and interval_seconds > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval_seconds!r}")
        self.config = config
        self.interval_seconds = float(interval_seconds)
        self.session_id = session_id or SHARED_SESSION
        self.client_id = client_id or str(uuid.uuid4())
        # The runtime writes Series as "Interval=" + the interval in whole milliseconds.
        self._series_ms = int(self.interval_seconds * 1000)
        self._notices: list[PipelineNotice] = []
        self._notice_keys: set[tuple[NoticeKind, str]] = set()
        self._taken = 0
        self._tags_by_id: dict[int, _InstrumentTags] = {}
        self._tags_by_name: dict[tuple[str, str, str], _InstrumentTags] = {}

        counters: dict[str, list[str] | None] = {}  # exact spelling → names
        if config.include_default_providers:
            for name in DEFAULT_COUNTER_PROVIDERS:
                _merge(counters, name, None)
        for provider in config.providers:
            _merge(counters, provider.provider_name, provider.counter_names)
        meters: dict[str, list[str] | None] = {}
        for meter in config.meters:
            _merge(meters, meter.meter_name, meter.instrument_names)

        self._counter_filter = _fold(counters)
        self._meter_filter = _fold(meters)
        self._providers = self._build_providers(counters, meters)

    # -- session ---------------------------------------------------------------------------

    def _build_providers(
        self, counters: dict[str, list[str] | None], meters: dict[str, list[str] | None]
    ) -> tuple[EventPipeProvider, ...]:
        interval = invariant_number(self.interval_seconds)
        providers = [
            EventPipeProvider(name, 0, EventLevel.INFORMATIONAL, {"EventCounterIntervalSec": interval})
            for name in counters
        ]
        if meters:
            specs: list[str] = []
            for meter, instruments in meters.items():
                specs.extend([meter] if instruments is None else [f"{meter}\\{i}" for i in instruments])
            arguments = {
                "SessionId": self.session_id,
                "Metrics": ",".join(specs),
                "RefreshInterval": interval,
                "MaxTimeSeries": str(MAX_TIME_SERIES),
                "MaxHistograms": str(MAX_HISTOGRAMS),
                "ClientId": self.client_id,
            }
            providers.append(
                EventPipeProvider(
                    METRICS_PROVIDER, TIME_SERIES_VALUES_KEYWORD, EventLevel.INFORMATIONAL, arguments
                )
            )
        return tuple(providers)

    def providers(self) -> tuple[EventPipeProvider, ...]:
        """The session's providers: one per EventCounter source, plus MetricsEventSource if meters."""
        return self._providers

    def wants(self, metadata: EventMetadata) -> bool:
        """Whether events of this metadata are worth decoding (everything else is skipped raw)."""
        if metadata.event_name == EVENT_COUNTERS_EVENT:
            return metadata.provider_name.lower() in self._counter_filter
        if self._meter_filter and metadata.provider_name == METRICS_PROVIDER:
            return _metrics_event_id(metadata) is not None
        return False

    # -- events -----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Metric]:
        """The Metric records one event yields (often none); reports go to ``warnings``."""
        metadata = event.metadata
        if metadata.event_name == EVENT_COUNTERS_EVENT:
            return self._event_counter(event)
        if not self._meter_filter or metadata.provider_name != METRICS_PROVIDER:
            return []
        event_id = _metrics_event_id(metadata)
        if event_id is None:
            return []
        fields = _fields_by_layout(event, event_id)
        if event_id in (_RATE, _UP_DOWN, _GAUGE, _HISTOGRAM):
            return self._value_published(event, event_id, fields)
        if event_id == _BEGIN_INSTRUMENT:
            self._begin_instrument(event, fields)
        else:
            self._report(event, event_id, fields)
        return []

    def _event_counter(self, event: Event) -> list[Metric]:
        provider = event.metadata.provider_name
        wanted = self._counter_filter.get(provider.lower(), frozenset())
        if wanted is not None and not wanted:
            return []
        payload = _counter_payload(event.fields)
        name = payload.get("Name") if payload is not None else None
        if payload is None or not isinstance(name, str):
            self._notice(NoticeKind.MALFORMED, f"{provider}: an EventCounters event without a Payload", event)
            return []
        if wanted is not None and name not in wanted:
            return []
        if not self._our_series(payload.get("Series")):
            return []  # another session's interval (the source serves the smallest to everybody)
        if self._partial_interval(payload.get("IntervalSec")):
            return []
        shape = payload.get("CounterType")
        counter_type: CounterType
        if shape == "Mean":
            counter_type, raw = "Metric", payload.get("Mean")
        elif shape == "Sum":
            counter_type, raw = "Rate", payload.get("Increment")
        else:
            self._notice(NoticeKind.UNSUPPORTED, f"{provider}/{name}: counter type {shape!r}", event)
            return []
        value = _number(raw)
        if value is None:
            self._notice(NoticeKind.MALFORMED, f"{provider}/{name}: value {raw!r} is not a number", event)
            return []
        units = _text(payload.get("DisplayUnits"))
        metadata_text = _text(payload.get("Metadata"))
        return [
            Metric(
                timestamp=event.time,
                provider=provider,
                name=name,
                display_name=_text(payload.get("DisplayName")) or name,
                # dotnet-monitor shows unit-less Sum counters as "count"; a unit-less mean has none.
                unit=units or ("count" if counter_type == "Rate" else None),
                counter_type=counter_type,
                value=value,
                tags=metadata_text,
                metadata=parse_counter_metadata(metadata_text),
            )
        ]

    def _partial_interval(self, interval_sec: Any) -> bool:
        """A sample covering a sliver of the interval is a runtime artefact, not a measurement.

        .NET Core 3.1 flushes every counter at enable time and, after each real sample, sends an
        empty one a few milliseconds later (Count 0, Mean 0, Min +inf) — both with IntervalSec
        of a few ms. Reporting them would show every counter dropping to 0 once per interval.
        """
        seconds = _number(interval_sec)
        return seconds is not None and seconds < self.interval_seconds * PARTIAL_INTERVAL_FRACTION

    def _our_series(self, series: Any) -> bool:
        if not isinstance(series, str) or series[:9].lower() != "interval=":
            return True  # no Series to go by: nothing says it is someone else's
        try:
            interval_ms = int(series[9:])
        except ValueError:
            return True
        # The runtime truncates interval * 1000 in float32; allow that one millisecond.
        return abs(interval_ms - self._series_ms) <= 1

    def _value_published(self, event: Event, event_id: int, fields: Mapping[str, Any]) -> list[Metric]:
        if fields.get("sessionId") != self.session_id:
            return []
        meter = _text(fields.get("meterName"))
        instrument = _text(fields.get("instrumentName"))
        if not self._meter_included(meter, instrument):
            return []
        version = event.metadata.version
        if event_id == _RATE:
            counter_type: CounterType = "Rate"
            # An observable counter's first interval has no rate yet (only its absolute value).
            raw = fields.get("rate")
        elif event_id == _UP_DOWN:
            counter_type = "Metric"
            if version < 1:
                self._notice(
                    NoticeKind.UNSUPPORTED,
                    f"{meter}/{instrument}: UpDownCounter values need a .NET 8 or newer target",
                    event,
                )
                return []
            raw = fields.get("value")
        elif event_id == _GAUGE:
            counter_type, raw = "Metric", fields.get("lastValue")
        else:
            return self._histogram(event, meter, instrument, fields)
        value = _number(raw)
        if value is None:
            return []  # "" = no measurement this interval
        return [self._meter_metric(event, meter, instrument, fields, counter_type, value, fields.get("tags"))]

    def _histogram(
        self, event: Event, meter: str, instrument: str, fields: Mapping[str, Any]
    ) -> list[Metric]:
        tags = _text(fields.get("tags"))
        return [
            self._meter_metric(event, meter, instrument, fields, "Metric", value, _with_percentile(tags, q))
            for q, value in parse_quantiles(_text(fields.get("quantiles")))
        ]

    def _meter_metric(
        self,
        event: Event,
        meter: str,
        instrument: str,
        fields: Mapping[str, Any],
        counter_type: CounterType,
        value: float,
        tags: Any,
    ) -> Metric:
        known = self._instrument_tags(meter, _text(fields.get("meterVersion")), instrument, fields)
        return Metric(
            timestamp=event.time,
            provider=meter,
            name=instrument,
            display_name=instrument,
            unit=_text(fields.get("unit")) or None,
            counter_type=counter_type,
            value=value,
            tags=_text(tags),
            meter_tags=known.meter_tags,
            instrument_tags=known.instrument_tags,
        )

    def _meter_included(self, meter: str, instrument: str) -> bool:
        wanted = self._meter_filter.get(meter.lower(), frozenset())
        return wanted is None or instrument in wanted

    def _begin_instrument(self, event: Event, fields: Mapping[str, Any]) -> None:
        # v1+ tells the instrument's and meter's own tags, which value events do not repeat.
        if event.metadata.version < 1 or fields.get("sessionId") != self.session_id:
            return
        meter = _text(fields.get("meterName"))
        instrument = _text(fields.get("instrumentName"))
        if not self._meter_included(meter, instrument):
            return
        tags = _InstrumentTags(_text(fields.get("meterTags")), _text(fields.get("instrumentTags")))
        self._tags_by_name[(meter, _text(fields.get("meterVersion")), instrument)] = tags
        instrument_id = fields.get("instrumentId")
        if isinstance(instrument_id, int) and instrument_id != 0:  # 0 = "not listened to", shared
            self._tags_by_id[instrument_id] = tags

    def _instrument_tags(
        self, meter: str, meter_version: str, instrument: str, fields: Mapping[str, Any]
    ) -> _InstrumentTags:
        instrument_id = fields.get("instrumentId")
        if isinstance(instrument_id, int) and instrument_id in self._tags_by_id:
            return self._tags_by_id[instrument_id]
        return self._tags_by_name.get((meter, meter_version, instrument), _NO_TAGS)

    def _report(self, event: Event, event_id: int, fields: Mapping[str, Any]) -> None:
        if event_id == _MULTIPLE_SESSIONS:
            running = _text(fields.get("runningSessionId"))
            if running != self.session_id:  # when it is ours, a later session was the one refused
                self._notice(
                    NoticeKind.MULTIPLE_SESSIONS,
                    f"another metrics session ({running}) is already running in the target process; "
                    "concurrent sessions are not supported, so no System.Diagnostics.Metrics data "
                    "will arrive for this one",
                    event,
                )
            return
        if event_id == _SESSION_MISMATCH:
            if _text(fields.get("clientId")) == self.client_id:
                self._notice(NoticeKind.SHARED_SESSION_MISMATCH, _mismatch_message(fields), event)
            return
        if fields.get("sessionId") != self.session_id:
            return
        if event_id == _ERROR:
            kind, message = NoticeKind.TARGET_ERROR, _text(fields.get("errorMessage"))
        elif event_id == _CALLBACK_ERROR:
            kind, message = NoticeKind.CALLBACK_ERROR, _text(fields.get("errorMessage"))
        elif event_id == _TIME_SERIES_LIMIT:
            kind = NoticeKind.TIME_SERIES_LIMIT
            message = f"time series limit ({MAX_TIME_SERIES}) reached: further time series are not reported"
        else:
            kind = NoticeKind.HISTOGRAM_LIMIT
            message = f"histogram limit ({MAX_HISTOGRAMS}) reached: further histograms are not reported"
        self._notice(kind, message, event)

    # -- notices ------------------------------------------------------------------------------

    def _notice(self, kind: NoticeKind, message: str, event: Event) -> None:
        # Callback errors repeat every interval: keep each distinct report once, and only so many.
        key = (kind, message)
        if key in self._notice_keys or len(self._notices) >= MAX_NOTICES:
            return
        self._notice_keys.add(key)
        self._notices.append(PipelineNotice(kind, message, event.time))

    @property
    def warnings(self) -> tuple[PipelineNotice, ...]:
        """Every distinct notice so far, oldest first."""
        return tuple(self._notices)

    def take_warnings(self) -> list[PipelineNotice]:
        """The notices raised since the previous call (for a runner that logs as it goes)."""
        new = self._notices[self._taken :]
        self._taken = len(self._notices)
        return new


# --- field helpers ----------------------------------------------------------------------------


def _fold(names: dict[str, list[str] | None]) -> NameFilter:
    """Case-insensitive provider/meter key → case-sensitive names (None = all)."""
    folded: dict[str, list[str] | None] = {}
    for key, wanted in names.items():
        _merge(folded, key.lower(), wanted)
    return {key: (None if wanted is None else frozenset(wanted)) for key, wanted in folded.items()}


def _fields_by_layout(event: Event, event_id: int) -> Mapping[str, Any]:
    """The event's fields by name; by position when the decoder named them otherwise."""
    fields = event.fields
    layouts = _LAYOUTS[event_id]
    layout = layouts[min(event.metadata.version, len(layouts) - 1)]
    if all(name in fields for name in layout):
        return fields
    return dict(zip(layout, fields.values(), strict=False))


def _counter_payload(fields: Mapping[str, Any]) -> Mapping[str, Any] | None:
    outer = fields.get("")
    payload = outer.get("Payload") if isinstance(outer, Mapping) else fields.get("Payload")
    return payload if isinstance(payload, Mapping) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    """A value field: a number, or invariant number text; None for ``""`` or anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_counter_metadata(text: str) -> dict[str, str]:
    """EventCounter metadata ``k1:v1,k2:v2`` (from AddMetadata); a value may itself hold ``:``."""
    metadata: dict[str, str] = {}
    for entry in text.split(","):
        if entry:
            key, _, value = entry.partition(":")
            metadata[key] = value
    return metadata


def parse_quantiles(text: str) -> list[tuple[float, float]]:
    """``0.5=60;0.95=100;0.99=100`` → [(0.5, 60.0), ...]; empty or broken entries are skipped."""
    quantiles: list[tuple[float, float]] = []
    for entry in text.split(";"):
        quantile_text, sep, value_text = entry.partition("=")
        if not sep:
            continue
        quantile, value = _number(quantile_text), _number(value_text)
        if quantile is not None and value is not None:
            quantiles.append((quantile, value))
    return quantiles


def percentile_label(quantile: float) -> str:
    """0.5 → ``50``, 0.95 → ``95``, 0.999 → ``99.9`` (no float noise such as 94.99999)."""
    percent = round(quantile * 100, 9)
    return str(int(percent)) if percent.is_integer() else repr(percent)


def _with_percentile(tags: str, quantile: float) -> str:
    label = f"{PERCENTILE_TAG}={percentile_label(quantile)}"
    return f"{tags},{label}" if tags else label


def _mismatch_message(fields: Mapping[str, Any]) -> str:
    differences = [
        f"{setting} {_text(fields.get('actual' + setting))} (this session asked for "
        f"{_text(fields.get('expected' + setting))})"
        for setting in ("MaxHistograms", "MaxTimeSeries", "RefreshInterval")
        if _text(fields.get("actual" + setting)) != _text(fields.get("expected" + setting))
    ]
    return (
        "the target's shared metrics session runs with other settings, so this session gets no "
        "System.Diagnostics.Metrics data: " + ("; ".join(differences) or "settings differ")
    )


# --- sinks ---------------------------------------------------------------------------------------


class CounterSink(Protocol):
    """Where Metric records go (the HTTP response, an egress upload, a list in tests)."""

    def write(self, metric: Metric) -> None: ...

    def close(self) -> None: ...


@dataclass
class MemoryCounterSink:
    """Keeps every record; for tests."""

    metrics: list[Metric] = field(default_factory=list)
    closed: bool = False

    def write(self, metric: Metric) -> None:
        if self.closed:
            raise ValueError("write to a closed sink")
        self.metrics.append(metric)

    def close(self) -> None:
        self.closed = True

    def json_seq(self) -> bytes:
        return encode_json_seq(self.metrics)


class JsonSeqCounterSink:
    """Frames each record as json-seq and hands the bytes on (to an egress writer, a response)."""

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None] | None = None) -> None:
        self._write = write
        self._close = close
        self.records = 0

    def write(self, metric: Metric) -> None:
        self._write(metric.to_json_seq())
        self.records += 1

    def close(self) -> None:
        if self._close is not None:
            self._close()


def encode_json_seq(metrics: Iterable[Metric]) -> bytes:
    """The ``application/json-seq`` body of these records."""
    return b"".join(metric.to_json_seq() for metric in metrics)
