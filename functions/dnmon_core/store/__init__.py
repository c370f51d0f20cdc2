"""dnmon's state in one DynamoDB table, one module per item kind behind one error edge.

- ``operations``: the guarded state machine, claims, leases, keyed listings;
- ``slots``: concurrency limits per host (and an optional fleet cap);
- ``agents``: the keyed registry (agents, liveness, process indexes);
- ``replies``: answers to the API's synchronous questions;
- ``errors``: the error tree and ``map_aws_errors``, the only place AWS exceptions are caught.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .agents import AgentPage, AgentRecord, AgentRegistry, Candidate
from .errors import (
    ConditionFailed,
    InvalidToken,
    NotFound,
    StoreError,
    StoreUnavailable,
    TransitionRejected,
    map_aws_errors,
)
from .operations import AGENT_LOST, OperationFilter, OperationRecord, OperationStore, Page, filter_of
from .replies import ReplyStore
from .schema import table_schema
from .slots import DEFAULT_LIMITS, Slot, SlotStore, slots_of


def utcnow() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "AGENT_LOST",
    "DEFAULT_LIMITS",
    "AgentPage",
    "AgentRecord",
    "AgentRegistry",
    "Candidate",
    "ConditionFailed",
    "InvalidToken",
    "NotFound",
    "OperationFilter",
    "OperationRecord",
    "OperationStore",
    "Page",
    "ReplyStore",
    "Slot",
    "SlotStore",
    "StoreError",
    "StoreUnavailable",
    "TransitionRejected",
    "filter_of",
    "map_aws_errors",
    "slots_of",
    "table_schema",
    "utcnow",
]
