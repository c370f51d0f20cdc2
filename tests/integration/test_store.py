"""The DynamoDB store on moto in server mode: state machine, per-host slots, claims, leases, the
keyed registry, paginated listings, and the one error edge for every AWS fault."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config

from dnmon_core.models import ProcessInfo
from dnmon_core.operations import ArtifactKind, OperationError, OperationProcess, OperationState
from dnmon_core.store import (
    AgentRegistry,
    InvalidToken,
    OperationRecord,
    OperationStore,
    SlotStore,
    StoreUnavailable,
    TransitionRejected,
    filter_of,
    slots_of,
)


class FakeClock:
    """Time we move by hand, so lease expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def _record(
    pid: int = 42,
    tags: list[str] | None = None,
    name: str = "dotnet",
    agent: str = "agent-1",
    created: datetime | None = None,
) -> OperationRecord:
    return OperationRecord(
        operation_id=uuid.uuid4(),
        kind=ArtifactKind.TRACE,
        status=OperationState.STARTING,
        created=created or datetime.now(UTC),
        process=OperationProcess(pid=pid, uid=uuid.uuid4(), name=name),
        tags=tags or [],
        egress_provider_name="s3",
        agent_id=agent,
    )


def process(pid: int, name: str = "dotnet", uid: uuid.UUID | None = None) -> ProcessInfo:
    return ProcessInfo(
        pid=pid,
        uid=uid or uuid.uuid4(),
        name=name,
        command_line="dotnet App.dll",
        operating_system="Linux",
        process_architecture="x64",
    )


def test_lifecycle_and_terminal_states_never_change(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    record = _record(tags=["a", "b"])
    store.create(record, lease_seconds=60)
    got = store.get(record.operation_id)
    assert got.status == OperationState.STARTING and got.tags == ["a", "b"]
    assert got.to_status().is_stoppable
    assert store.claim(record.operation_id, "agent-1", 60) is not None
    running = store.transition(record.operation_id, OperationState.RUNNING, claimed_by="agent-1")
    assert running.to_status().is_stoppable
    stopping = store.transition(record.operation_id, OperationState.STOPPING)
    assert stopping.stop_requested and not stopping.to_status().is_stoppable
    done = store.transition(record.operation_id, OperationState.SUCCEEDED, resource_location="s3://b/k")
    assert done.resource_location == "s3://b/k"
    for late in (OperationState.FAILED, OperationState.CANCELLED, OperationState.RUNNING):
        with pytest.raises(TransitionRejected) as rejected:
            store.transition(record.operation_id, late, error=OperationError(code="X", message="late"))
        assert rejected.value.current == "Succeeded"
    final = store.get(record.operation_id)
    assert final.status == OperationState.SUCCEEDED and final.error is None
    assert not final.to_status().is_stoppable


def test_claim_only_by_the_assigned_agent_and_only_once(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    record = _record(agent="agent-1")
    store.create(record, lease_seconds=60)
    assert store.claim(record.operation_id, "agent-2", 30) is None  # a job for another host
    results: list[OperationRecord | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.claim(record.operation_id, "agent-1", 30)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1
    assert store.get(record.operation_id).claimed_by == "agent-1"


def test_expired_lease_reports_agent_lost(dynamo_table: Any) -> None:
    clock = FakeClock()
    store = OperationStore(dynamo_table, clock=clock)
    record = _record()
    store.create(record, lease_seconds=60)
    assert store.claim(record.operation_id, "agent-1", 30) is not None
    clock.now += 20
    assert store.renew_lease(record.operation_id, "agent-1", 30) is not None
    assert store.renew_lease(record.operation_id, "agent-2", 30) is None  # not its operation
    clock.now += 31
    lost = store.get(record.operation_id)
    assert lost.status == OperationState.FAILED
    assert lost.error is not None and lost.error.code == "AgentLost"
    assert store.renew_lease(record.operation_id, "agent-1", 30) is None  # the agent learns it lost it
    with pytest.raises(TransitionRejected):
        store.transition(record.operation_id, OperationState.SUCCEEDED, claimed_by="agent-1")


def test_cancel_ends_the_lease_for_the_agent(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    record = _record()
    store.create(record, lease_seconds=60)
    store.claim(record.operation_id, "agent-1", 30)
    cancelled = store.transition(record.operation_id, OperationState.CANCELLED)
    assert cancelled.error is None  # dotnet-monitor: a cancelled operation carries no error
    assert store.renew_lease(record.operation_id, "agent-1", 30) is None


def test_listing_per_host_and_fleet_paginates(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    start = datetime.now(UTC) - timedelta(days=1)
    mine = [_record(pid=i, agent="a", created=start + timedelta(hours=i), tags=["x"]) for i in range(7)]
    theirs = [_record(pid=100 + i, agent="b", created=start + timedelta(hours=i)) for i in range(5)]
    for record in mine + theirs:
        store.create(record, lease_seconds=600)

    def walk(**kwargs: Any) -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        token = None
        while True:
            page = store.page(limit=3, token=token, **kwargs)
            assert len(page.records) <= 3
            seen.extend(r.operation_id for r in page.records)
            token = page.next_token
            if token is None:
                return seen

    assert walk(agent_id="a") == [r.operation_id for r in mine]
    assert walk(agent_id="b") == [r.operation_id for r in theirs]
    everything = walk()
    assert sorted(map(str, everything)) == sorted(str(r.operation_id) for r in mine + theirs)
    assert walk(where=filter_of(tags=["x"])) == [r.operation_id for r in mine]
    assert walk(where=filter_of(pid=102)) == [theirs[2].operation_id]
    first_page = store.page(agent_id="a", limit=2)
    assert first_page.next_token is not None
    with pytest.raises(InvalidToken):
        store.page(agent_id="b", token=first_page.next_token)  # a token of another host's listing
    with pytest.raises(InvalidToken):
        store.page(token="not-a-token")


def test_a_fleet_page_that_fills_as_a_day_ends_goes_on_from_the_next_day(dynamo_table: Any) -> None:
    """Three operations yesterday, two today, pages of three: the first page ends with yesterday and
    the second begins today (the page once took one record too many from the next day)."""
    store = OperationStore(dynamo_table)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    created = [today - timedelta(hours=3 - i) for i in range(3)] + [
        today + timedelta(minutes=i) for i in (1, 2)
    ]
    records = [_record(pid=i, agent=f"day-{i}", created=when) for i, when in enumerate(created)]
    for record in records:
        store.create(record, lease_seconds=600)
    first = store.page(limit=3)
    assert [r.operation_id for r in first.records] == [r.operation_id for r in records[:3]]
    assert first.next_token is not None
    second = store.page(limit=3, token=first.next_token)
    assert [r.operation_id for r in second.records] == [r.operation_id for r in records[3:]]
    assert second.next_token is None


def test_twenty_parallel_requests_per_host_take_three_slots_each(dynamo_table: Any) -> None:
    slots = SlotStore(dynamo_table)
    taken: dict[str, list[int]] = {"host-a": [], "host-b": []}
    lock = threading.Lock()

    def grab(agent: str) -> None:
        held = slots.reserve(ArtifactKind.TRACE, agent, uuid.uuid4(), 60)
        if held is not None:
            with lock:
                taken[agent].append(held[0].index())

    threads = [threading.Thread(target=grab, args=(agent,)) for agent in taken for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken["host-a"]) == [0, 1, 2] and sorted(taken["host-b"]) == [0, 1, 2]
    assert slots.reserve(ArtifactKind.TRACE, "host-a", uuid.uuid4(), 60) is None
    assert slots.reserve(ArtifactKind.LIVEMETRICS, "host-a", uuid.uuid4(), 60) is not None
    assert slots.reserve(ArtifactKind.TRACE, "host-c", uuid.uuid4(), 60) is not None


def test_fleet_cap_on_top_of_host_limits(dynamo_table: Any) -> None:
    slots = SlotStore(dynamo_table, fleet_limits={ArtifactKind.TRACE: 2})
    first = slots.reserve(ArtifactKind.TRACE, "h1", uuid.uuid4(), 60)
    second = slots.reserve(ArtifactKind.TRACE, "h2", uuid.uuid4(), 60)
    assert first is not None and len(first) == 2 and second is not None
    blocked = uuid.uuid4()
    assert slots.reserve(ArtifactKind.TRACE, "h3", blocked, 60) is None
    # the refused request gave its host slot back
    assert slots.reserve(ArtifactKind.TRACE, "h3", uuid.uuid4(), 60) is None
    assert SlotStore(dynamo_table).reserve(ArtifactKind.TRACE, "h3", uuid.uuid4(), 60) is not None


def test_slots_return_on_release_and_heal_on_expiry(dynamo_table: Any) -> None:
    clock = FakeClock()
    slots = SlotStore(dynamo_table, clock=clock, limits={ArtifactKind.TRACE: 1})
    holder = uuid.uuid4()
    held = slots.reserve(ArtifactKind.TRACE, "h", holder, 30)
    assert held is not None and held[0].index() == 0
    assert slots.reserve(ArtifactKind.TRACE, "h", uuid.uuid4(), 30) is None
    slots.release(held, uuid.uuid4())  # not the holder: no effect
    assert slots.reserve(ArtifactKind.TRACE, "h", uuid.uuid4(), 30) is None
    slots.release(slots_of([held[0].key]), holder)
    second = uuid.uuid4()
    again = slots.reserve(ArtifactKind.TRACE, "h", second, 30)
    assert again is not None
    clock.now += 10
    assert slots.renew(again, second, 30)
    clock.now += 31  # the holder died: its lease ran out
    assert slots.reserve(ArtifactKind.TRACE, "h", uuid.uuid4(), 30) is not None
    assert not slots.renew(again, second, 30)


def test_registry_is_keyed_and_tracks_changes(dynamo_table: Any) -> None:
    clock = FakeClock()
    registry = AgentRegistry(dynamo_table, clock=clock, max_silence=60)
    shared_uid = uuid.uuid4()
    registry.register("a1", "web", "https://q/a1", "1")
    registry.register("a2", "web", "https://q/a2", "1")  # two agents, one host name
    registry.register("a3", "db", "https://q/a3", "1")
    first = [process(10, uid=shared_uid), process(11, "worker")]
    registry.publish_processes("a1", "web", first)
    registry.publish_processes("a3", "db", [process(10, "db")])
    assert {c.agent_id for c in registry.candidates(pid=10)} == {"a1", "a3"}
    assert [c.agent_id for c in registry.candidates(uid=str(shared_uid))] == ["a1"]
    assert [c.pid for c in registry.candidates(name="WORKER")] == [11]
    assert sorted(a.agent_id for a in registry.by_host("web")) == ["a1", "a2"]
    assert [a.agent_id for a in registry.by_host("a3")] == ["a3"]  # an agent id names its host
    # 11 exits, 12 starts; 10's pid is reused by a new process (new uid)
    reused = process(10, "dotnet")
    registry.publish_processes("a1", "web", [reused, process(12)], previous=first)
    assert registry.candidates(pid=11) == []
    assert registry.candidates(uid=str(shared_uid)) == []
    assert [c.uid for c in registry.candidates(pid=10) if c.agent_id == "a1"] == [str(reused.uid)]
    agent = registry.get("a1")
    assert agent is not None and sorted(p.pid for p in agent.processes) == [10, 12]
    clock.now += 61
    assert registry.get("a1") is None and registry.alive_ids(["a1", "a3"]) == set()
    registry.touch("a3")
    assert registry.alive_ids(["a1", "a3"]) == {"a3"}
    registry.deregister("a1")
    assert registry.get("a1", alive_only=False) is None
    assert [c.agent_id for c in registry.candidates(pid=10)] == ["a3"]


def test_a_name_may_be_a_pod_or_a_container(dynamo_table: Any) -> None:
    registry = AgentRegistry(dynamo_table)
    registry.register("node-1", "node-1", "https://q/1", "1")
    container_id = "3f4e8a1b2c9d" + "0" * 52
    app = process(7, "dotnet").model_copy(
        update={"pod_name": "web-7d9c5-xq2lp", "container_id": container_id}
    )
    registry.publish_processes("node-1", "node-1", [app, process(8, "other")])
    for name in ("DOTNET", "web-7d9c5-XQ2LP", container_id[:12], container_id[:20], container_id):
        assert [c.pid for c in registry.candidates(name=name)] == [7], name
    assert registry.candidates(name=container_id[:8]) == []  # too short to mean a container
    registry.publish_processes("node-1", "node-1", [], previous=[app])
    assert registry.candidates(name="web-7d9c5-xq2lp") == []


def test_registry_pages_sorted_by_host(dynamo_table: Any) -> None:
    registry = AgentRegistry(dynamo_table)
    for i in range(7):
        registry.register(f"id-{i}", f"host-{6 - i}", f"https://q/{i}", "1")
    names: list[str] = []
    token = None
    while True:
        page = registry.page(limit=3, token=token)
        names.extend(a.host_name for a in page.agents)
        token = page.next_token
        if token is None:
            break
    assert names == [f"host-{i}" for i in range(7)]


def test_every_aws_fault_is_a_store_error() -> None:
    """Connection refused is a BotoCoreError, not a ClientError: it still becomes StoreUnavailable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    table = boto3.resource(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    ).Table("nowhere")
    with pytest.raises(StoreUnavailable):
        OperationStore(table).get(uuid.uuid4())
    with pytest.raises(StoreUnavailable):
        SlotStore(table).reserve(ArtifactKind.TRACE, "h", uuid.uuid4(), 30)
    with pytest.raises(StoreUnavailable):
        AgentRegistry(table).candidates(pid=1)
