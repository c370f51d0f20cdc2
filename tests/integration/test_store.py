"""The DynamoDB store on moto in server mode: state machine, slots, claims, leases, registry."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from dnmon_core.operations import ArtifactKind, OperationError, OperationProcess, OperationState
from dnmon_core.store import AgentRegistry, OperationRecord, OperationStore, TransitionRejected


class FakeClock:
    """Time we move by hand, so lease expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _record(pid: int = 42, tags: list[str] | None = None, name: str = "dotnet") -> OperationRecord:
    return OperationRecord(
        operation_id=uuid.uuid4(),
        kind=ArtifactKind.TRACE,
        status=OperationState.RUNNING,
        created=datetime.now(UTC),
        process=OperationProcess(pid=pid, uid=uuid.uuid4(), name=name),
        tags=tags or [],
        egress_provider_name="s3",
        agent_id="agent-1",
    )


def test_lifecycle_and_terminal_states_never_change(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    record = _record(tags=["a", "b"])
    store.create(record, lease_seconds=60)
    got = store.get(record.operation_id)
    assert got.status == OperationState.RUNNING and got.tags == ["a", "b"]
    assert got.to_status().is_stoppable
    stopping = store.transition(record.operation_id, OperationState.STOPPING)
    assert stopping.status == OperationState.STOPPING and stopping.stop_requested
    done = store.transition(record.operation_id, OperationState.SUCCEEDED, resource_location="s3://b/k")
    assert done.resource_location == "s3://b/k"
    for late in (
        OperationState.FAILED,
        OperationState.CANCELLED,
        OperationState.RUNNING,
        OperationState.STOPPING,
    ):
        with pytest.raises(TransitionRejected) as rejected:
            store.transition(record.operation_id, late, error=OperationError(code="X", message="late"))
        assert rejected.value.current == "Succeeded"
    final = store.get(record.operation_id)
    assert final.status == OperationState.SUCCEEDED and final.error is None
    assert not final.to_status().is_stoppable


def test_list_filters_by_process_and_all_tags(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    first, second, third = _record(1, ["x", "y"]), _record(2, ["x"]), _record(3, [], name="other")
    for r in (first, second, third):
        store.create(r, lease_seconds=60)
    assert [r.operation_id for r in store.list()] == [
        first.operation_id,
        second.operation_id,
        third.operation_id,
    ]
    assert [r.process.pid for r in store.list(tags=["x"]) if r.process] == [1, 2]
    assert [r.process.pid for r in store.list(tags=["x", "y"]) if r.process] == [1]
    assert [r.process.pid for r in store.list(pid=2) if r.process] == [2]
    assert [r.process.pid for r in store.list(name="OTHER") if r.process] == [3]
    assert first.process is not None
    assert [r.operation_id for r in store.list(uid=first.process.uid)] == [first.operation_id]


def test_claim_is_idempotent_under_redelivery(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    record = _record()
    store.create(record, lease_seconds=60)
    results: list[OperationRecord | None] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(store.claim(record.operation_id, f"agent-{i}", 30))
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert store.get(record.operation_id).claimed_by == winners[0].claimed_by


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


def test_unclaimed_operation_fails_when_no_agent_picks_it_up(dynamo_table: Any) -> None:
    clock = FakeClock()
    store = OperationStore(dynamo_table, clock=clock)
    record = _record()
    store.create(record, lease_seconds=10)
    clock.now += 11
    assert store.claim(record.operation_id, "agent-1", 30) is None
    lost = store.list()[0]
    assert lost.status == OperationState.FAILED and lost.error is not None
    assert "no agent" in lost.error.message


def test_forty_threads_three_slots(dynamo_table: Any) -> None:
    store = OperationStore(dynamo_table)
    taken: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        slot = store.reserve_slot(ArtifactKind.TRACE, uuid.uuid4(), 60)
        if slot is not None:
            with lock:
                taken.append(slot)

    threads = [threading.Thread(target=grab) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [0, 1, 2]
    assert store.reserve_slot(ArtifactKind.TRACE, uuid.uuid4(), 60) is None
    # livemetrics has its own slots
    assert store.reserve_slot(ArtifactKind.LIVEMETRICS, uuid.uuid4(), 60) in (0, 1, 2)


def test_slots_return_on_release_and_heal_on_expiry(dynamo_table: Any) -> None:
    clock = FakeClock()
    store = OperationStore(dynamo_table, clock=clock, limits={ArtifactKind.TRACE: 1})
    holder = uuid.uuid4()
    assert store.reserve_slot(ArtifactKind.TRACE, holder, 30) == 0
    assert store.reserve_slot(ArtifactKind.TRACE, uuid.uuid4(), 30) is None
    store.release_slot(ArtifactKind.TRACE, 0, uuid.uuid4())  # not the holder: no effect
    assert store.reserve_slot(ArtifactKind.TRACE, uuid.uuid4(), 30) is None
    store.release_slot(ArtifactKind.TRACE, 0, holder)
    second = uuid.uuid4()
    assert store.reserve_slot(ArtifactKind.TRACE, second, 30) == 0
    clock.now += 10
    assert store.renew_slot(ArtifactKind.TRACE, 0, second, 30)
    clock.now += 31  # the holder died: its lease ran out
    assert store.reserve_slot(ArtifactKind.TRACE, uuid.uuid4(), 30) == 0
    assert not store.renew_slot(ArtifactKind.TRACE, 0, second, 30)


def test_agent_registry_liveness(dynamo_table: Any) -> None:
    clock = FakeClock()
    registry = AgentRegistry(dynamo_table, clock=clock, max_silence=60)
    registry.heartbeat("a1", "host-a", "https://q/a1", "0.1.0", [{"pid": 1, "name": "dotnet"}])
    clock.now += 30
    registry.heartbeat("a2", "host-b", "https://q/a2", "0.1.0", [])
    assert [a.agent_id for a in registry.agents()] == ["a1", "a2"]
    assert registry.agents()[0].processes == [{"pid": 1, "name": "dotnet"}]
    clock.now += 40
    assert [a.agent_id for a in registry.agents()] == ["a2"]
    assert len(registry.agents(alive_only=False)) == 2
    registry.deregister("a2")
    assert registry.agents(alive_only=False)[0].agent_id == "a1"
