"""One capture, from claimed job to final state: its thread, its lease, its egress, its last write.

Every path ends in Succeeded, Cancelled or Failed. The final report is retried through outages for
as long as the lease would still hold, so a capture that finished while AWS was unreachable is not
reported lost. The lease is renewed at a third of its length; a renewal that fails for a fault is
retried and never ends a healthy capture, one that is refused (the operation was cancelled, or its
lease taken over) cancels it. Concurrency slots are the control plane's: it renews them with the
lease and frees them when the operation ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnmon_core.chunks import CHUNK_BYTES, LIVEMETRICS_FLUSH_SECONDS, TRACE_FLUSH_SECONDS, chunk_key
from dnmon_core.config import AgentSettings
from dnmon_core.models import EventMetricsConfiguration, EventProvidersConfiguration
from dnmon_core.operations import (
    ARTIFACT_CONTENT_TYPES,
    ArtifactKind,
    CaptureJob,
    OperationError,
    OperationProcess,
    OperationState,
)
from dnmon_core.operations import artifact_name as name_of
from dnmon_core.profiles import TraceProfile, profile_configuration
from dnmon_core.store import StoreError, StoreUnavailable, TransitionRejected

from ..diagnostics.client import DiagnosticsClient
from ..diagnostics.discovery import DotnetProcess, select_process
from ..diagnostics.errors import DiagnosticsError, ProcessSelectionError
from ..egress import (
    ArtifactLocation,
    ArtifactWriter,
    EgressError,
    FileSystemWriter,
    S3ChunkPublisher,
    S3MultipartWriter,
    TeeWriter,
)
from ..pipelines.counters import CountersPipeline
from ..pipelines.runner import CaptureCancelled, CaptureError, StopControl, run_live_metrics, run_trace
from ..pipelines.trace import session_configuration
from .control_plane import ControlPlane

log = logging.getLogger("dnmon.agent.capture")

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


@dataclass
class CaptureContext:
    """What every capture of one agent shares."""

    settings: AgentSettings
    control: ControlPlane
    artifact_owner: str  # the key segment under which this host may write artifacts
    s3: Callable[[], Any]
    processes: Callable[[], Sequence[DotnetProcess]]
    egress_directories: tuple[Path, ...] = ()
    clock: Callable[[], float] = time.time


@dataclass
class Capture:
    """A claimed job running on its own thread (``start``); ``control`` stops or cancels it."""

    context: CaptureContext
    job: CaptureJob
    on_end: Callable[[Capture], None]
    control: StopControl = field(init=False)
    thread: threading.Thread = field(init=False)
    _lease_until: float = field(init=False)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.control = StopControl.new(on_started=self._started)
        self.thread = threading.Thread(target=self._run, name=f"capture-{self.job.operation_id}")
        self._lease_until = self.context.clock() + self.context.settings.lease_seconds

    @property
    def operation_id(self) -> Any:
        return self.job.operation_id

    def start(self) -> None:
        self.thread.start()

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        keeper = threading.Thread(target=self._keep_lease, name=f"lease-{self.job.operation_id}", daemon=True)
        keeper.start()
        try:
            self._run_job()
        except Exception:  # the last line of defence: an operation never stays Running
            log.exception("capture %s crashed", self.job.operation_id)
            error = OperationError(code="InternalError", message="the agent failed unexpectedly")
            self._finish(OperationState.FAILED, error=error)
        finally:
            self._done.set()
            keeper.join()
            self.on_end(self)

    def _started(self) -> None:
        """The EventPipe session is open: Starting → Running (a stop or cancel may have come first)."""
        try:
            self.context.control.report(self.job.operation_id, OperationState.RUNNING)
        except TransitionRejected as exc:
            log.info("operation %s is %s: not marked Running", self.job.operation_id, exc.current)
        except StoreError as exc:
            log.warning(
                "marking %s Running failed (its lease keeps it alive): %s", self.job.operation_id, exc
            )

    def _run_job(self) -> None:
        job = self.job
        try:
            target = select_process(
                self.context.processes(), pid=job.process.pid, uid=job.process.uid, name=job.process.name
            )
        except ProcessSelectionError as exc:
            self._finish(
                OperationState.FAILED,
                error=OperationError(
                    code="ProcessNotFound", message=f"Unable to discover a target process. {exc}"
                ),
            )
            return
        process = OperationProcess(pid=target.pid, uid=target.uid, name=target.name)
        try:
            writer = self._writer(name_of(job.kind, target.pid, job.created))
        except EgressError as exc:
            self._fail(process, "EgressRefused", str(exc))
            return
        try:
            self._capture_into(DiagnosticsClient(target.socket_path), writer)
            location = writer.complete()
        except CaptureCancelled:
            writer.abort()
            self._finish(OperationState.CANCELLED, process=process)
        except CaptureError as exc:
            # Keep what the runtime sent before it went away: the partial artifact is evidence,
            # recorded on the operation (marked partial) and served by its artifact route.
            partial = _complete_quietly(writer)
            if partial is None:
                self._fail(process, exc.code, str(exc))
            else:
                where = describe(partial)
                self._fail(
                    process,
                    exc.code,
                    f"{exc} (partial artifact: {where})",
                    resource_location=where,
                    artifact={**partial.to_dict(), "partial": True},
                )
        except EgressError as exc:
            self._fail(process, "EgressFailed", str(exc))
        except (DiagnosticsError, ValueError) as exc:  # ValueError: a job this agent cannot read
            writer.abort()
            self._fail(process, "CaptureFailed", str(exc))
        else:
            self._finish(
                OperationState.SUCCEEDED,
                process=process,
                resource_location=describe(location),
                artifact=location.to_dict(),
            )

    def _capture_into(self, client: DiagnosticsClient, writer: ArtifactWriter) -> None:
        job = self.job
        duration = None if job.duration_seconds == -1 else float(job.duration_seconds)
        if job.kind == ArtifactKind.TRACE:
            config = (
                profile_configuration(TraceProfile.parse(job.trace_profile), job.counter_interval_seconds)
                if job.trace_profile
                else EventProvidersConfiguration.model_validate(job.configuration)
            )
            run_trace(client, session_configuration(config), writer, duration=duration, control=self.control)
        else:
            metrics = EventMetricsConfiguration.model_validate(job.configuration)
            pipeline = CountersPipeline(metrics, interval_seconds=job.counter_interval_seconds)
            sink = JsonSeqArtifact(writer)
            run_live_metrics(client, pipeline, sink, duration=duration, control=self.control)

    # --- egress ----------------------------------------------------------------------------------

    def _writer(self, name: str) -> ArtifactWriter:
        """Only where the signed job says, and only into places this host allows."""
        egress = self.job.egress
        settings = self.context.settings
        if egress.kind == "filesystem":
            return FileSystemWriter(self._allowed_directory(egress.directory), name)
        if egress.kind != "s3":
            raise EgressError(f"unknown egress kind {egress.kind!r}")
        # Every artifact lands under this agent's own prefix: its IAM policy allows no other.
        prefix = egress.key if egress.key is not None else settings.artifact_prefix
        bucket = egress.bucket or settings.bucket
        content_type = ARTIFACT_CONTENT_TYPES[self.job.kind]
        writer = S3MultipartWriter(
            self.context.s3(),
            bucket,
            f"{prefix}{self.context.artifact_owner}/{name}",
            content_type=content_type,
            part_size=settings.part_size,
            kms_key_id=egress.kms_key_id,
            outage_seconds=settings.lease_seconds,  # as the final write: an outage shorter than the lease
        )
        if not egress.chunks:
            return writer
        owner, operation_id = self.context.artifact_owner, self.job.operation_id
        chunks = S3ChunkPublisher(
            self.context.s3(),
            bucket,
            lambda sequence: chunk_key(owner, operation_id, sequence),
            content_type=content_type,
            flush_seconds=TRACE_FLUSH_SECONDS
            if self.job.kind == ArtifactKind.TRACE
            else LIVEMETRICS_FLUSH_SECONDS,
            chunk_bytes=CHUNK_BYTES,
            outage_seconds=min(settings.lease_seconds, 10.0),  # a live view that late is no longer live
        )
        return TeeWriter(writer, chunks)

    def _allowed_directory(self, directory: str | None) -> Path:
        if not directory:
            raise EgressError("filesystem egress names no directory")
        path = Path(directory).resolve()
        if not any(path == root or root in path.parents for root in self.context.egress_directories):
            raise EgressError(
                f"filesystem egress into {directory} is not allowed on this host "
                "(DNMON_EGRESS_DIRECTORIES lists where it may write)"
            )
        return path

    # --- the lease -------------------------------------------------------------------------------

    def _keep_lease(self) -> None:
        settings = self.context.settings
        period = settings.lease_seconds / 3
        wait = period
        while not self._done.wait(wait):
            try:
                lease = self.context.control.renew(self.job.operation_id, settings.lease_seconds)
            except StoreError as exc:
                log.warning("renewing the lease of %s failed (retrying): %s", self.operation_id, exc)
                wait = min(period, 2.0)
                continue
            except Exception:  # never let the lease die silently under a healthy capture
                log.exception("renewing the lease of %s failed unexpectedly (retrying)", self.operation_id)
                wait = min(period, 2.0)
                continue
            wait = period
            if lease is None:  # cancelled, or the lease was lost: either way, end now
                self.control.cancel.set()
                return
            self._lease_until = self.context.clock() + settings.lease_seconds
            if lease.status == OperationState.STOPPING or lease.stop_requested:
                self.control.stop.set()

    # --- the end ---------------------------------------------------------------------------------

    def _fail(self, process: OperationProcess | None, code: str, message: str, **changes: Any) -> None:
        error = OperationError(code=code, message=message)
        self._finish(OperationState.FAILED, process=process, error=error, **changes)

    def _finish(self, state: OperationState, **changes: Any) -> None:
        def write() -> None:
            self.context.control.report(self.job.operation_id, state, **changes)

        try:
            _retrying(write, self._lease_until)
        except TransitionRejected as exc:
            log.info(
                "operation %s already ended (%s): %s not recorded", self.operation_id, exc.current, state
            )
        except StoreError as exc:
            log.error("recording %s for %s failed (its lease will expire): %s", state, self.operation_id, exc)


def _retrying(write: Callable[[], None], deadline: float, clock: Callable[[], float] = time.time) -> None:
    """Retry through AWS faults until ``deadline`` (the lease's end): past it, the write is moot."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            write()
            return
        except StoreUnavailable:
            if clock() + delay >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


def _complete_quietly(writer: ArtifactWriter) -> ArtifactLocation | None:
    try:
        return writer.complete()
    except EgressError:
        return None


def describe(location: ArtifactLocation) -> str:
    if location.kind == "s3":
        return f"s3://{location.bucket}/{location.key}"
    return f"file://{location.path}"


class JsonSeqArtifact:
    """The live-metrics artifact: each Metric record as json-seq into the egress writer."""

    def __init__(self, writer: ArtifactWriter) -> None:
        self.writer = writer

    def write(self, metric: Any) -> None:
        self.writer.write(metric.to_json_seq())

    def close(self) -> None:
        pass
