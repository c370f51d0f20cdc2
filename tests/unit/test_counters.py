"""The live-metrics pipeline on hand-built events (protocols.md §3, §4): no runtime, no decoder."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from dnmon_agent.diagnostics.events import Event, EventMetadata, TraceInfo
from dnmon_agent.diagnostics.ipc import EventPipeProvider
from dnmon_agent.pipelines.counters import (
    CountersPipeline,
    JsonSeqCounterSink,
    MemoryCounterSink,
    NoticeKind,
    encode_json_seq,
    parse_counter_metadata,
    parse_quantiles,
    percentile_label,
)
from dnmon_core.models import EventMetricsConfiguration, Metric

TRACE = TraceInfo(
    sync_time_utc=datetime(2021, 8, 31, 16, 58, 39, tzinfo=UTC),
    sync_time_qpc=0,
    qpc_frequency=10_000_000,
    pointer_size=8,
    process_id=21632,
    number_of_processors=2,
    expected_cpu_sampling_rate=1_000_000,
)
T0 = datetime(2021, 8, 31, 16, 58, 39, 751403, tzinfo=UTC)
TICKS_T0 = 7_514_030  # 0.751403 s after the sync time, in 100 ns ticks

METRICS = "System.Diagnostics.Metrics"
METRICS_IDS = {
    "CounterRateValuePublished": 4,
    "GaugeValuePublished": 5,
    "HistogramValuePublished": 6,
    "BeginInstrumentReporting": 7,
    "Error": 9,
    "TimeSeriesLimitReached": 12,
    "HistogramLimitReached": 13,
    "ObservableInstrumentCallbackError": 14,
    "MultipleSessionsNotSupportedError": 15,
    "UpDownCounterRateValuePublished": 16,
    "MultipleSessionsConfiguredIncorrectlyError": 17,
    "CollectionStart": 2,
    "Message": 1,
}


def metadata(provider: str, name: str, *, version: int = 0, event_id: int | None = None) -> EventMetadata:
    if event_id is None:
        event_id = METRICS_IDS.get(name, 19) if provider == METRICS else 19
    return EventMetadata(
        metadata_id=1,
        provider_name=provider,
        event_id=event_id,
        event_name=name,
        keywords=0,
        version=version,
        level=0,
    )


def event(meta: EventMetadata, fields: dict[str, Any], ticks: int = TICKS_T0) -> Event:
    return Event(
        metadata=meta,
        sequence_number=1,
        capture_thread_id=1,
        thread_id=1,
        processor_number=0,
        stack_id=0,
        timestamp=ticks,
        activity_id=b"\0" * 16,
        related_activity_id=b"\0" * 16,
        payload=b"",
        trace=TRACE,
        _fields=fields,
    )


def counter_event(provider: str = "CustomProvider", **payload: Any) -> Event:
    """An EventCounters event wrapped as the runtime sends it: {"": {"Payload": {...}}}."""
    return event(metadata(provider, "EventCounters"), {"": {"Payload": payload}})


def mean(name: str = "counter1", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "Name": name,
        "DisplayName": "Counter 1",
        "Mean": 3.0,
        "StandardDeviation": 0.0,
        "Count": 1,
        "Min": 3.0,
        "Max": 3.0,
        "IntervalSec": 5.0012,
        "Series": "Interval=5000",
        "CounterType": "Mean",
        "Metadata": "",
        "DisplayUnits": "B",
    }
    fields.update(overrides)
    return fields


def total(name: str = "requests-rate", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "Name": name,
        "DisplayName": "Request Rate",
        "DisplayRateTimeScale": "00:00:01",
        "Increment": 50.0,
        "IntervalSec": 4.99,
        "Metadata": "",
        "Series": "Interval=5000",
        "CounterType": "Sum",
        "DisplayUnits": "",
    }
    fields.update(overrides)
    return fields


def pipeline(body: dict[str, Any], **kwargs: Any) -> CountersPipeline:
    kwargs.setdefault("client_id", "client-1")
    return CountersPipeline(EventMetricsConfiguration.model_validate(body), **kwargs)


def custom(counter_names: list[str] | None = None, provider: str = "CustomProvider") -> CountersPipeline:
    return pipeline(
        {
            "includeDefaultProviders": False,
            "providers": [{"providerName": provider, "counterNames": counter_names}],
        }
    )


def meters(*specs: dict[str, Any], **kwargs: Any) -> CountersPipeline:
    return pipeline({"includeDefaultProviders": False, "meters": list(specs)}, **kwargs)


def metrics_event(name: str, version: int = 0, **fields: Any) -> Event:
    return event(metadata(METRICS, name, version=version), fields)


def value_fields(
    session: str = "SHARED", meter: str = "CustomMeter", instrument: str = "requests"
) -> dict[str, Any]:
    return {
        "sessionId": session,
        "meterName": meter,
        "meterVersion": "1.0",
        "instrumentName": instrument,
        "unit": "",
        "tags": "",
    }


def rate(version: int = 1, rate_text: str = "30", **overrides: Any) -> Event:
    fields = value_fields() | {"rate": rate_text}
    if version >= 1:
        fields["value"] = "60"
    if version >= 2:
        fields["instrumentId"] = 3
    fields.update(overrides)
    return metrics_event("CounterRateValuePublished", version, **fields)


# --- providers() -------------------------------------------------------------------------------


def test_default_providers() -> None:
    providers = pipeline({}).providers()
    assert providers == tuple(
        EventPipeProvider(name, 0, 4, {"EventCounterIntervalSec": "5"})
        for name in ("System.Runtime", "Microsoft.AspNetCore.Hosting", "Grpc.AspNetCore.Server")
    )
    assert [p.filter_data() for p in providers] == ["EventCounterIntervalSec=5"] * 3


def test_custom_counter_provider_keeps_the_users_spelling() -> None:
    providers = custom(["counter1"], provider="customProvider").providers()
    assert providers == (EventPipeProvider("customProvider", 0, 4, {"EventCounterIntervalSec": "5"}),)


@pytest.mark.parametrize(("interval", "text"), [(1, "1"), (0.5, "0.5"), (2.25, "2.25"), (10.0, "10")])
def test_interval_is_invariant_text(interval: float, text: str) -> None:
    pipe = pipeline({}, interval_seconds=interval)
    assert pipe.providers()[0].filter_data() == f"EventCounterIntervalSec={text}"


@pytest.mark.parametrize("interval", [0, -1, math.nan, math.inf])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError):
        pipeline({}, interval_seconds=interval)


def test_a_default_provider_named_again_is_enabled_once_with_all_counters() -> None:
    pipe = pipeline({"providers": [{"providerName": "System.Runtime", "counterNames": ["cpu-usage"]}]})
    assert [p.name for p in pipe.providers()] == [
        "System.Runtime",
        "Microsoft.AspNetCore.Hosting",
        "Grpc.AspNetCore.Server",
    ]
    assert pipe.handle(counter_event("System.Runtime", **mean("working-set")))  # defaults: all counters


def test_metrics_provider_filter_data_is_exact() -> None:
    pipe = meters(
        {"meterName": "CustomMeter", "instrumentNames": ["myHistogram", "requests"]},
        {"meterName": "Other"},
        interval_seconds=5,
    )
    (provider,) = pipe.providers()
    assert (provider.name, provider.keywords, provider.level) == (METRICS, 0x2, 4)
    assert provider.filter_data() == (
        "SessionId=SHARED;Metrics=CustomMeter\\myHistogram,CustomMeter\\requests,Other;RefreshInterval=5;"
        "MaxTimeSeries=1000;MaxHistograms=20;ClientId=client-1"
    )


def test_metrics_session_id_and_client_id() -> None:
    session = "3f1b8a9e-0c55-4d6e-9a57-2f8f4c1d2e3a"
    pipe = meters({"meterName": "M"}, session_id=session, client_id=None)
    arguments = pipe.providers()[0].arguments
    assert arguments is not None
    assert arguments["SessionId"] == session
    assert len(arguments["ClientId"]) == 36  # a generated GUID


def test_a_meter_asked_for_whole_absorbs_its_instrument_lists() -> None:
    pipe = meters({"meterName": "M", "instrumentNames": ["a"]}, {"meterName": "M"}, {"meterName": "N"})
    arguments = pipe.providers()[0].arguments
    assert arguments is not None and arguments["Metrics"] == "M,N"


def test_counters_and_meters_together() -> None:
    pipe = pipeline(
        {
            "includeDefaultProviders": False,
            "providers": [{"providerName": "P"}],
            "meters": [{"meterName": "M"}],
        }
    )
    assert [p.name for p in pipe.providers()] == ["P", METRICS]


# --- wants() -----------------------------------------------------------------------------------


def test_wants_only_what_it_decodes() -> None:
    pipe = custom(provider="CustomProvider")
    assert pipe.wants(metadata("CustomProvider", "EventCounters"))
    assert pipe.wants(metadata("customprovider", "EventCounters"))
    assert not pipe.wants(metadata("System.Runtime", "EventCounters"))
    assert not pipe.wants(metadata("CustomProvider", "SomethingElse"))
    assert not pipe.wants(metadata(METRICS, "CounterRateValuePublished"))  # no meters asked


def test_wants_metrics_events_it_handles() -> None:
    pipe = meters({"meterName": "M"})
    for name in METRICS_IDS:
        assert pipe.wants(metadata(METRICS, name)) == (name not in ("CollectionStart", "Message")), name
    assert pipe.wants(metadata(METRICS, "", event_id=6))  # a nameless record, known by its fixed id
    assert not pipe.wants(metadata(METRICS, "", event_id=2))
    assert not pipe.wants(metadata("system.diagnostics.metrics", "GaugeValuePublished"))
    assert not pipe.wants(metadata("Microsoft-Windows-DotNETRuntime", "GCStart"))


# --- EventCounters -----------------------------------------------------------------------------


def test_mean_counter_becomes_a_metric_record() -> None:
    (metric,) = custom().handle(counter_event(**mean(Metadata="MyKey 1:MyValue 1,MyKey 2:MyValue 2")))
    assert metric == Metric(
        timestamp=T0,
        provider="CustomProvider",
        name="counter1",
        display_name="Counter 1",
        unit="B",
        counter_type="Metric",
        value=3.0,
        tags="MyKey 1:MyValue 1,MyKey 2:MyValue 2",
        metadata={"MyKey 1": "MyValue 1", "MyKey 2": "MyValue 2"},
    )


def test_mean_without_units_has_no_unit_and_falls_back_to_its_name() -> None:
    (metric,) = custom().handle(counter_event(**mean(DisplayUnits="", DisplayName="")))
    assert (metric.unit, metric.display_name) == (None, "counter1")


def test_sum_counter_becomes_a_rate_of_the_increment() -> None:
    (metric,) = custom().handle(counter_event(**total()))
    assert (metric.counter_type, metric.value, metric.unit, metric.display_name) == (
        "Rate",
        50.0,
        "count",
        "Request Rate",
    )
    (with_unit,) = custom().handle(counter_event(**total(DisplayUnits="B")))
    assert with_unit.unit == "B"


def test_counter_names_are_case_sensitive_provider_names_are_not() -> None:
    pipe = custom(["counter1"])
    assert pipe.handle(counter_event("customprovider", **mean("counter1")))
    assert not pipe.handle(counter_event(**mean("Counter1")))
    assert not pipe.handle(counter_event(**mean("counter2")))
    assert not pipe.handle(counter_event("OtherProvider", **mean("counter1")))


def test_empty_counter_names_mean_all() -> None:
    every: tuple[list[str] | None, ...] = (None, [])
    for names in every:
        assert custom(names).handle(counter_event(**mean("anything")))


@pytest.mark.parametrize(
    ("series", "kept"),
    [("Interval=5000", True), ("Interval=4999", True), ("Interval=1000", False), ("interval=1000", False)],
)
def test_samples_of_another_interval_are_dropped(series: str, kept: bool) -> None:
    assert bool(custom().handle(counter_event(**mean(Series=series)))) is kept


def test_series_follows_the_requested_interval() -> None:
    pipe = pipeline(
        {"includeDefaultProviders": False, "providers": [{"providerName": "P"}]}, interval_seconds=0.5
    )
    assert pipe.handle(counter_event("P", **mean(Series="Interval=500")))
    assert not pipe.handle(counter_event("P", **mean(Series="Interval=5000")))


def test_missing_series_is_not_held_against_the_sample() -> None:
    fields = mean()
    del fields["Series"]
    assert custom().handle(counter_event(**fields))


def test_nan_mean_is_written_as_zero() -> None:
    (metric,) = custom().handle(counter_event(**mean(Mean=math.nan)))
    assert math.isnan(metric.value)
    assert json.loads(metric.to_json_seq()[1:])["value"] == 0


def test_malformed_counter_events_are_reported_not_raised() -> None:
    pipe = custom()
    assert pipe.handle(event(metadata("CustomProvider", "EventCounters"), {"x": 1})) == []
    assert pipe.handle(counter_event(**mean(CounterType="Median"))) == []
    assert pipe.handle(counter_event(**mean(Mean="lots"))) == []
    assert [w.kind for w in pipe.warnings] == [
        NoticeKind.MALFORMED,
        NoticeKind.UNSUPPORTED,
        NoticeKind.MALFORMED,
    ]


def test_counter_json_seq_framing_is_byte_exact() -> None:
    (metric,) = custom().handle(counter_event(**mean(Metadata="MyKey 1:MyValue 1")))
    assert metric.to_json_seq() == (
        b'\x1e{"timestamp":"2021-08-31T16:58:39.7514030+00:00","provider":"CustomProvider","name":"counter1",'
        b'"displayName":"Counter 1","unit":"B","counterType":"Metric","tags":"MyKey 1:MyValue 1","value":3,'
        b'"metadata":{"MyKey 1":"MyValue 1"},"meterTags":"","instrumentTags":""}\n'
    )


def test_parse_counter_metadata() -> None:
    assert parse_counter_metadata("") == {}
    assert parse_counter_metadata("a:1,b:http://x:8080,c") == {"a": "1", "b": "http://x:8080", "c": ""}


# --- System.Diagnostics.Metrics ----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
def test_counter_rate_every_version(version: int) -> None:
    (metric,) = meters({"meterName": "CustomMeter"}).handle(rate(version, unit="{request}", tags="route=/a"))
    assert metric == Metric(
        timestamp=T0,
        provider="CustomMeter",
        name="requests",
        display_name="requests",
        unit="{request}",
        counter_type="Rate",
        value=30.0,
        tags="route=/a",
    )


def test_observable_counter_first_interval_has_no_rate() -> None:
    assert meters({"meterName": "CustomMeter"}).handle(rate(1, rate_text="")) == []


def test_other_sessions_values_are_ignored() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    assert pipe.handle(rate(1, sessionId="0d3c8f3e-aaaa-bbbb-cccc-000000000000")) == []
    mine = meters({"meterName": "CustomMeter"}, session_id="mine")
    assert mine.handle(rate(1, sessionId="SHARED")) == []
    assert mine.handle(rate(1, sessionId="mine"))


def test_meter_names_case_insensitive_instrument_names_case_sensitive() -> None:
    pipe = meters({"meterName": "custommeter", "instrumentNames": ["requests"]})
    assert pipe.handle(rate(1))
    assert pipe.handle(rate(1, meterName="CUSTOMMETER"))
    assert not pipe.handle(rate(1, instrumentName="Requests"))
    assert not pipe.handle(rate(1, meterName="OtherMeter"))  # a SHARED session carries others' meters


def test_up_down_counter_reports_its_current_value() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    fields = value_fields() | {"rate": "-2", "value": "7"}
    (metric,) = pipe.handle(metrics_event("UpDownCounterRateValuePublished", 1, **fields))
    assert (metric.counter_type, metric.value) == ("Metric", 7.0)
    first = value_fields() | {"rate": "", "value": "5", "instrumentId": 9}
    (observable,) = pipe.handle(metrics_event("UpDownCounterRateValuePublished", 2, **first))
    assert observable.value == 5.0


def test_up_down_counter_v0_has_no_value_and_says_so() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    fields = value_fields() | {"rate": "-2"}
    assert pipe.handle(metrics_event("UpDownCounterRateValuePublished", 0, **fields)) == []
    assert pipe.handle(metrics_event("UpDownCounterRateValuePublished", 0, **fields)) == []
    assert [(w.kind, w.fatal) for w in pipe.warnings] == [(NoticeKind.UNSUPPORTED, False)]


@pytest.mark.parametrize(("version", "extra"), [(0, {}), (2, {"instrumentId": 4})])
def test_gauge_reports_its_last_value(version: int, extra: dict[str, Any]) -> None:
    pipe = meters({"meterName": "CustomMeter"})
    fields = value_fields(instrument="temperature") | {"unit": "Cel", "lastValue": "21.5"} | extra
    (metric,) = pipe.handle(metrics_event("GaugeValuePublished", version, **fields))
    assert (metric.counter_type, metric.value, metric.unit, metric.name) == (
        "Metric",
        21.5,
        "Cel",
        "temperature",
    )
    silent = fields | {"lastValue": ""}
    assert pipe.handle(metrics_event("GaugeValuePublished", version, **silent)) == []


def histogram(version: int, quantiles: str, tags: str = "") -> Event:
    fields = value_fields(instrument="myHistogram") | {"tags": tags, "quantiles": quantiles}
    if version >= 1:
        fields |= {"count": 10, "sum": 600.0}
    if version >= 2:
        fields["instrumentId"] = 5
    return metrics_event("HistogramValuePublished", version, **fields)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_histogram_gives_one_record_per_percentile(version: int) -> None:
    pipe = meters({"meterName": "CustomMeter", "instrumentNames": ["myHistogram"]})
    records = pipe.handle(histogram(version, "0.5=2292;0.95=4616;0.99=4960"))
    assert [(m.tags, m.value, m.counter_type, m.unit, m.display_name) for m in records] == [
        ("Percentile=50", 2292.0, "Metric", None, "myHistogram"),
        ("Percentile=95", 4616.0, "Metric", None, "myHistogram"),
        ("Percentile=99", 4960.0, "Metric", None, "myHistogram"),
    ]


def test_histogram_percentile_follows_instrument_tags() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    records = pipe.handle(histogram(1, "0.5=60;0.95=100;0.99=100", tags="host=a,zone=b"))
    assert [m.tags for m in records] == [
        "host=a,zone=b,Percentile=50",
        "host=a,zone=b,Percentile=95",
        "host=a,zone=b,Percentile=99",
    ]


def test_histogram_seed_sample_is_byte_exact() -> None:
    pipe = meters({"meterName": "CustomMeter", "instrumentNames": ["myHistogram"]})
    body = encode_json_seq(pipe.handle(histogram(1, "0.5=2292;0.95=4616;0.99=4960")))
    common = (
        b'{"timestamp":"2021-08-31T16:58:39.7514030+00:00","provider":"CustomMeter","name":"myHistogram",'
        b'"displayName":"myHistogram","unit":null,"counterType":"Metric",'
    )
    assert body == b"".join(
        b"\x1e" + common + f'"tags":"Percentile={p}","value":{v},'.encode() + b'"metadata":{},'
        b'"meterTags":"","instrumentTags":""}\n'
        for p, v in ((50, 2292), (95, 4616), (99, 4960))
    )


def test_histogram_with_empty_quantiles_gives_nothing() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    assert pipe.handle(histogram(1, "")) == []
    assert [m.tags for m in pipe.handle(histogram(1, "0.5=;0.95=4;junk;0.99"))] == ["Percentile=95"]


def test_parse_quantiles_and_percentile_labels() -> None:
    assert parse_quantiles("0.5=60;0.95=100;0.99=100") == [(0.5, 60.0), (0.95, 100.0), (0.99, 100.0)]
    assert [percentile_label(q) for q in (0.5, 0.95, 0.99, 0.999, 0.29, 1.0)] == [
        "50",
        "95",
        "99",
        "99.9",
        "29",
        "100",
    ]


def begin(version: int, instrument_id: int | None = None, **overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "sessionId": "SHARED",
        "meterName": "CustomMeter",
        "meterVersion": "1.0",
        "instrumentName": "requests",
        "instrumentType": "Counter`1",
        "unit": "",
        "description": "Requests served",
    }
    if version >= 1:
        fields |= {"instrumentTags": "kind=http", "meterTags": "team=web", "meterScopeHash": ""}
    if instrument_id is not None:
        fields["instrumentId"] = instrument_id
    fields.update(overrides)
    return metrics_event("BeginInstrumentReporting", version, **fields)


def test_begin_instrument_reporting_supplies_meter_and_instrument_tags() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    assert pipe.handle(begin(1)) == []
    (metric,) = pipe.handle(rate(1))
    assert (metric.meter_tags, metric.instrument_tags) == ("team=web", "kind=http")


def test_begin_instrument_reporting_by_id_tells_same_named_instruments_apart() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    pipe.handle(begin(2, instrument_id=3))
    pipe.handle(begin(2, instrument_id=8, instrumentTags="kind=grpc"))
    (by_id,) = pipe.handle(rate(2))  # instrumentId 3
    assert by_id.instrument_tags == "kind=http"
    (other,) = pipe.handle(rate(2, instrumentId=8))
    assert other.instrument_tags == "kind=grpc"


def test_begin_instrument_reporting_of_other_sessions_or_v0_is_ignored() -> None:
    pipe = meters({"meterName": "CustomMeter"})
    pipe.handle(begin(1, sessionId="other"))
    pipe.handle(begin(0))
    (metric,) = pipe.handle(rate(1))
    assert (metric.meter_tags, metric.instrument_tags) == ("", "")


def test_fields_are_read_by_position_when_the_decoder_names_them_otherwise() -> None:
    values = ["SHARED", "CustomMeter", "1.0", "requests", "", "", "30", "60"]
    positional = event(
        metadata(METRICS, "CounterRateValuePublished", version=1),
        {f"arg{i}": v for i, v in enumerate(values)},
    )
    (metric,) = meters({"meterName": "CustomMeter"}).handle(positional)
    assert (metric.name, metric.value) == ("requests", 30.0)


# --- errors and limits -----------------------------------------------------------------------


def test_errors_and_limits_are_reported() -> None:
    pipe = meters({"meterName": "M"})
    assert pipe.handle(metrics_event("Error", sessionId="SHARED", errorMessage="bad filter")) == []
    pipe.handle(metrics_event("TimeSeriesLimitReached", sessionId="SHARED"))
    pipe.handle(metrics_event("HistogramLimitReached", sessionId="SHARED"))
    for _ in range(3):  # every interval while the callback throws: reported once
        pipe.handle(
            metrics_event("ObservableInstrumentCallbackError", sessionId="SHARED", errorMessage="boom")
        )
    warnings = pipe.warnings
    assert [(w.kind, w.message) for w in warnings] == [
        (NoticeKind.TARGET_ERROR, "bad filter"),
        (
            NoticeKind.TIME_SERIES_LIMIT,
            "time series limit (1000) reached: further time series are not reported",
        ),
        (NoticeKind.HISTOGRAM_LIMIT, "histogram limit (20) reached: further histograms are not reported"),
        (NoticeKind.CALLBACK_ERROR, "boom"),
    ]
    assert not any(w.fatal for w in warnings)
    assert warnings[0].time == datetime(2021, 8, 31, 16, 58, 39, 751403, tzinfo=UTC)
    assert str(warnings[0]) == "TargetError: bad filter"


def test_other_sessions_errors_are_not_ours() -> None:
    pipe = meters({"meterName": "M"})
    pipe.handle(metrics_event("Error", sessionId="other", errorMessage="x"))
    pipe.handle(metrics_event("TimeSeriesLimitReached", sessionId="other"))
    assert pipe.warnings == ()


def test_multiple_sessions_error_concerns_the_refused_session() -> None:
    mine = meters({"meterName": "M"}, session_id="mine")
    mine.handle(metrics_event("MultipleSessionsNotSupportedError", runningSessionId="mine"))
    assert mine.take_warnings() == []  # we are the running one; a later session was refused
    mine.handle(metrics_event("MultipleSessionsNotSupportedError", runningSessionId="first"))
    (warning,) = mine.take_warnings()
    assert (warning.kind, warning.fatal) == (NoticeKind.MULTIPLE_SESSIONS, True)
    assert "first" in warning.message


def test_shared_session_configured_differently() -> None:
    pipe = meters({"meterName": "M"})
    mismatch: dict[str, Any] = {
        "expectedMaxHistograms": "20",
        "actualMaxHistograms": "20",
        "expectedMaxTimeSeries": "1000",
        "actualMaxTimeSeries": "1000",
        "expectedRefreshInterval": "5",
        "actualRefreshInterval": "1",
    }
    pipe.handle(
        metrics_event("MultipleSessionsConfiguredIncorrectlyError", clientId="someone-else", **mismatch)
    )
    assert pipe.warnings == ()
    pipe.handle(metrics_event("MultipleSessionsConfiguredIncorrectlyError", clientId="client-1", **mismatch))
    (warning,) = pipe.take_warnings()
    assert warning.fatal
    assert "RefreshInterval 1 (this session asked for 5)" in warning.message
    assert pipe.take_warnings() == []


# --- sinks ---------------------------------------------------------------------------------------


def test_sinks() -> None:
    records = custom().handle(counter_event(**mean())) + custom().handle(counter_event(**total()))
    memory = MemoryCounterSink()
    chunks: list[bytes] = []
    closed: list[bool] = []
    framed = JsonSeqCounterSink(chunks.append, lambda: closed.append(True))
    for record in records:
        memory.write(record)
        framed.write(record)
    memory.close()
    framed.close()
    assert memory.metrics == records and memory.closed
    assert b"".join(chunks) == memory.json_seq() == encode_json_seq(records)
    assert (framed.records, closed) == (2, [True])
    assert all(chunk.startswith(b"\x1e") and chunk.endswith(b"}\n") for chunk in chunks)
    with pytest.raises(ValueError):
        memory.write(records[0])


def test_samples_covering_a_sliver_of_the_interval_are_dropped() -> None:
    # .NET Core 3.1: a flush at enable time and an empty echo after each sample, IntervalSec ~ms.
    counters = pipeline({"includeDefaultProviders": False, "providers": [{"providerName": "CustomProvider"}]})
    echo = mean(Mean=0.0, Count=0, Min=float("inf"), Max=float("-inf"), IntervalSec=0.004)
    assert counters.handle(counter_event(**echo)) == []
    assert counters.handle(counter_event(**total(Increment=0.0, IntervalSec=0.02))) == []
    kept = counters.handle(counter_event(**mean(IntervalSec=4.2)))
    assert [m.value for m in kept] == [3.0]
