"""Operations (the dotnet-monitor ``/operations`` shapes) and the job message agents receive.

The state machine lives here as one table; the store makes every DynamoDB write conditional on it,
so a finished operation never changes again whoever writes late.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from .models import ContractModel, format_timestamp


class OperationState(StrEnum):
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TRANSITIONS: Final[dict[OperationState, frozenset[OperationState]]] = {
    # Starting: written by the API; the agent moves it to Running once the EventPipe session is open.
    OperationState.STARTING: frozenset(
        {
            OperationState.RUNNING,
            OperationState.STOPPING,
            OperationState.SUCCEEDED,
            OperationState.FAILED,
            OperationState.CANCELLED,
        }
    ),
    OperationState.RUNNING: frozenset(
        {OperationState.STOPPING, OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED}
    ),
    OperationState.STOPPING: frozenset(
        {OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED}
    ),
    OperationState.SUCCEEDED: frozenset(),
    OperationState.FAILED: frozenset(),
    OperationState.CANCELLED: frozenset(),
}
"""Allowed next states; terminal states allow none."""


def sources_of(target: OperationState) -> list[OperationState]:
    """The states from which ``target`` may be reached (the condition of a transition write)."""
    return [state for state, nexts in TRANSITIONS.items() if target in nexts]


def is_terminal(state: OperationState) -> bool:
    return not TRANSITIONS[state]


ACTIVE_STATES: Final = (OperationState.STARTING, OperationState.RUNNING, OperationState.STOPPING)
"""States in which an agent holds the operation (its lease counts)."""


class ArtifactKind(StrEnum):
    """Artifact kinds with their own concurrency limit (dotnet-monitor's collection rule names)."""

    TRACE = "trace"
    LIVEMETRICS = "livemetrics"


ARTIFACT_EXTENSIONS: Final = {ArtifactKind.TRACE: "nettrace", ArtifactKind.LIVEMETRICS: "metrics.json"}
ARTIFACT_CONTENT_TYPES: Final = {
    ArtifactKind.TRACE: "application/octet-stream",
    ArtifactKind.LIVEMETRICS: "application/json-seq",
}


def artifact_name(kind: ArtifactKind, pid: int, moment: datetime) -> str:
    """``{yyyyMMdd_HHmmss_fff}_{pid}.nettrace`` / ``.metrics.json``, in UTC, like dotnet-monitor."""
    moment = moment.astimezone(UTC)
    stamp = moment.strftime("%Y%m%d_%H%M%S_") + f"{moment.microsecond // 1000:03d}"
    return f"{stamp}_{pid}.{ARTIFACT_EXTENSIONS[kind]}"


class OperationProcess(ContractModel):
    pid: int
    uid: uuid.UUID
    name: str


class OperationError(ContractModel):
    code: str
    message: str


class OperationSummary(ContractModel):
    """An entry of ``GET /operations``."""

    operation_id: uuid.UUID
    created_date_time: datetime
    status: OperationState
    egress_provider_name: str | None = None
    is_stoppable: bool = True
    process: OperationProcess | None = None
    tags: list[str] = Field(default_factory=list)

    @field_serializer("created_date_time")
    def _utc(self, value: datetime) -> str:
        return format_timestamp(value)


class OperationStatus(OperationSummary):
    """``GET /operations/{id}``: the summary plus where the artifact went, or why it failed."""

    resource_location: str | None = None
    error: OperationError | None = None


def parse_tags(text: str | None) -> list[str]:
    """``tags`` query: comma-separated, empty entries dropped, a set in first-seen order."""
    if not text:
        return []
    seen: dict[str, None] = {}
    for part in text.split(","):
        tag = part.strip()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


# --- the job message --------------------------------------------------------------------------

JOB_SCHEMA_VERSION: Final = 1


class EgressTarget(BaseModel):
    """Where the agent writes the artifact: an S3 bucket + key, or a local directory (local stack)."""

    model_config = ConfigDict(extra="ignore")

    provider: str | None = None  # the user's egressProvider name; None = the HTTP response
    kind: str = "s3"  # "s3" | "filesystem"
    bucket: str | None = None
    key: str | None = None
    directory: str | None = None
    kms_key_id: str | None = None
    chunks: bool = False  # also publish it as it comes, for a streamed response (dnmon_core.chunks)


class ProcessSelector(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pid: int | None = None
    uid: uuid.UUID | None = None
    name: str | None = None


class CaptureJob(BaseModel):
    """What the API sends to an agent's queue. Versioned; unknown fields are ignored so that
    agents and the API can be deployed at different times."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = JOB_SCHEMA_VERSION
    operation_id: uuid.UUID
    kind: ArtifactKind
    process: ProcessSelector
    duration_seconds: int
    configuration: dict[str, Any]
    trace_profile: str | None = None  # GET /trace: the agent builds the profile's providers itself
    egress: EgressTarget
    artifact_name: str
    counter_interval_seconds: float = 5.0
    created: datetime


class EnvironmentRequest(BaseModel):
    """``GET /processes/env``: the agent reads the target's environment and stores the reply."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = JOB_SCHEMA_VERSION
    request_id: uuid.UUID
    process: ProcessSelector


class ControlAction(StrEnum):
    STOP = "stop"  # StopTracing: rundown, a whole file, Succeeded
    CANCEL = "cancel"  # drop the session, discard the artifact


class ControlMessage(BaseModel):
    """``DELETE /operations/{id}``: delivered on the agent's queue so it acts within a second."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = JOB_SCHEMA_VERSION
    operation_id: uuid.UUID
    action: ControlAction
