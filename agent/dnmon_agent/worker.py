"""``dnmon agent``: register, long-poll this host's queue, run captures, report their state.

The DynamoDB claim and lease are the source of truth, not SQS visibility (which cannot outlive
12 h while ``durationSeconds`` may be -1): a job is claimed conditionally, its message deleted at
once, and a lease on the operation item is renewed while the capture runs (the AWS SSM Agent
pattern). A redelivered message finds the claim taken and starts nothing; an agent that dies
stops renewing and the API reports its operation Failed when the lease runs out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
import pydantic
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dnmon_core.models import EventMetricsConfiguration, EventProvidersConfiguration
from dnmon_core.operations import (
    ARTIFACT_CONTENT_TYPES,
    ArtifactKind,
    CaptureJob,
    EnvironmentRequest,
    OperationError,
    OperationProcess,
    OperationState,
    artifact_name,
)
from dnmon_core.profiles import TraceProfile, profile_configuration
from dnmon_core.store import AgentRegistry, OperationStore, ReplyStore, StoreError, TransitionRejected

from . import __version__
from .diagnostics.client import DiagnosticsClient
from .diagnostics.discovery import DotnetProcess, list_processes, select_process
from .diagnostics.errors import DiagnosticsError, ProcessSelectionError
from .egress import (
    PART_SIZE,
    ArtifactWriter,
    EgressError,
    FileSystemWriter,
    HttpStreamWriter,
    S3MultipartWriter,
)
from .pipelines.counters import CountersPipeline
from .pipelines.runner import CaptureCancelled, CaptureError, StopControl, run_live_metrics, run_trace
from .pipelines.trace import session_configuration

log = logging.getLogger("dnmon.agent")


@dataclass
class AgentSettings:
    """Everything the agent needs; ``from_env`` reads the ``DNMON_*`` variables (README lists them)."""

    table: str
    bucket: str
    agent_id: str
    host_name: str
    queue_prefix: str = "dnmon-agent-"
    dead_letter_arn: str | None = None
    max_captures: int = 6
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 20.0
    poll_seconds: int = 20
    part_size: int = PART_SIZE
    artifact_prefix: str = "artifacts/"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentSettings:
        env = dict(os.environ if environ is None else environ)
        host = env.get("DNMON_HOST_NAME") or socket.gethostname()
        return cls(
            table=env["DNMON_TABLE"],
            bucket=env["DNMON_BUCKET"],
            agent_id=env.get("DNMON_AGENT_ID") or _agent_id_for(host),
            host_name=host,
            queue_prefix=env.get("DNMON_AGENT_QUEUE_PREFIX", "dnmon-agent-"),
            dead_letter_arn=env.get("DNMON_DEAD_LETTER_ARN") or None,
            max_captures=int(env.get("DNMON_MAX_CAPTURES", "6")),
            lease_seconds=float(env.get("DNMON_LEASE_SECONDS", "30")),
            heartbeat_seconds=float(env.get("DNMON_HEARTBEAT_SECONDS", "20")),
            poll_seconds=int(env.get("DNMON_POLL_SECONDS", "20")),
        )


def _agent_id_for(host: str) -> str:
    """A queue-name-safe id, stable for a host name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)[:40]
    return safe or "agent"


@dataclass
class _Running:
    job: CaptureJob
    control: StopControl
    thread: threading.Thread
    slot: int | None = None


@dataclass
class Agent:
    settings: AgentSettings
    session: boto3.Session = field(default_factory=boto3.Session)
    clock: Callable[[], float] = time.time
    queue_url: str | None = None
    _running: dict[uuid.UUID, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _known: dict[int, DotnetProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4")
        self.sqs = self.session.client("sqs", config=self._config)
        table = self.session.resource("dynamodb", config=self._config).Table(self.settings.table)
        self.store = OperationStore(table, clock=self.clock)
        self.registry = AgentRegistry(table, clock=self.clock)
        self.replies = ReplyStore(table, clock=self.clock)

    @cached_property
    def s3(self) -> Any:
        """Created on the first capture: an idle agent does not carry an S3 client (~6 MB)."""
        return self.session.client("s3", config=self._config)

    # --- registration --------------------------------------------------------------------

    def register(self) -> str:
        """Create (or find) this agent's queue and announce the agent with its processes."""
        attributes: dict[Any, str] = {"ReceiveMessageWaitTimeSeconds": "20", "VisibilityTimeout": "120"}
        if self.settings.dead_letter_arn:
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": self.settings.dead_letter_arn, "maxReceiveCount": "5"}
            )
        name = f"{self.settings.queue_prefix}{self.settings.agent_id}"
        self.queue_url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.heartbeat()
        return self.queue_url

    def heartbeat(self) -> None:
        self._known = {p.pid: p for p in list_processes(known=self._known)}
        processes = [p.to_process_info() for p in self._known.values()]
        self.registry.heartbeat(
            self.settings.agent_id, self.settings.host_name, self._queue(), __version__, processes
        )

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop``; then stop running captures gracefully and wait for them."""
        if self.queue_url is None:
            self.register()
        beat = threading.Thread(target=self._heartbeats, args=(stop,), name="heartbeat", daemon=True)
        beat.start()
        while not stop.is_set():
            try:
                self.poll_once(self.settings.poll_seconds)
            except (ClientError, BotoCoreError) as exc:
                log.warning("polling the queue failed: %s", exc)
                stop.wait(5)
        self.shutdown()

    def _heartbeats(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_seconds):
            try:
                self.heartbeat()
            except (StoreError, ClientError, BotoCoreError) as exc:
                log.warning("heartbeat failed: %s", exc)

    def free_capacity(self) -> int:
        with self._lock:
            return self.settings.max_captures - len(self._running)

    def poll_once(self, wait_seconds: int) -> int:
        """One long poll; dispatch what arrives. Returns the number of messages handled."""
        capacity = self.free_capacity()
        if capacity <= 0:
            time.sleep(min(1.0, wait_seconds))
            return 0
        response = self.sqs.receive_message(
            QueueUrl=self._queue(),
            MaxNumberOfMessages=min(10, capacity),
            WaitTimeSeconds=wait_seconds,
        )
        messages = response.get("Messages", [])
        for message in messages:
            self.dispatch(message)
        return len(messages)

    def _queue(self) -> str:
        if self.queue_url is None:
            raise RuntimeError("the agent is not registered yet")
        return self.queue_url

    def dispatch(self, message: Mapping[str, Any]) -> None:
        """Claim the job; whatever happens, the message is deleted once the claim is decided."""
        try:
            if json.loads(message["Body"]).get("type") == "environment":
                request = EnvironmentRequest.model_validate_json(message["Body"])
                self._delete(message)
                threading.Thread(target=self._answer_environment, args=(request,), daemon=True).start()
                return
            job = CaptureJob.model_validate_json(message["Body"])
        except (pydantic.ValidationError, ValueError, AttributeError) as exc:
            log.error("dropping an unreadable job message: %s", exc)
            self._delete(message)
            return
        record = self.store.claim(job.operation_id, self.settings.agent_id, self.settings.lease_seconds)
        self._delete(message)
        if record is None:
            log.info("operation %s is already claimed or finished: not starting it again", job.operation_id)
            return
        control = StopControl.new()
        thread = threading.Thread(
            target=self._capture, args=(job, control), name=f"capture-{job.operation_id}"
        )
        with self._lock:
            self._running[job.operation_id] = _Running(job, control, thread, record.slot)
        thread.start()

    def _answer_environment(self, request: EnvironmentRequest) -> None:
        """Read the target's environment (ProcessEnvironment) and leave the answer for the API."""
        selector = request.process
        try:
            target = select_process(list_processes(), pid=selector.pid, uid=selector.uid, name=selector.name)
            reply: dict[str, Any] = {"environment": DiagnosticsClient(target.socket_path).environment()}
        except DiagnosticsError as exc:
            reply = {"error": str(exc)}
        try:
            self.replies.put(request.request_id, reply)
        except StoreError as exc:
            log.warning("storing the environment reply failed: %s", exc)

    def _delete(self, message: Mapping[str, Any]) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self._queue(), ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:
            log.warning("deleting a message failed (a redelivery will find the claim taken): %s", exc)

    def shutdown(self, timeout: float = 120.0) -> None:
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.control.stop.set()
        deadline = time.monotonic() + timeout
        for run in running:
            run.thread.join(max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float) -> bool:
        """Tests and ``up``: wait until no capture runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.free_capacity() == self.settings.max_captures:
                return True
            time.sleep(0.05)
        return False

    # --- one capture ------------------------------------------------------------------------

    def _capture(self, job: CaptureJob, control: StopControl) -> None:
        lease_stop = threading.Event()
        keeper = threading.Thread(target=self._keep_lease, args=(job, control, lease_stop), daemon=True)
        keeper.start()
        try:
            self._run_job(job, control)
        except Exception:  # the last line of defence: an operation never stays Running
            log.exception("capture %s crashed", job.operation_id)
            self._finish(
                job,
                OperationState.FAILED,
                error=OperationError(code="InternalError", message="the agent failed unexpectedly"),
            )
        finally:
            lease_stop.set()
            keeper.join()
            with self._lock:
                run = self._running.pop(job.operation_id, None)
            slot = run.slot if run else None
            if slot is not None:
                try:
                    self.store.release_slot(job.kind, slot, job.operation_id)
                except StoreError as exc:
                    log.warning("releasing slot %s failed (its lease will expire): %s", slot, exc)

    def _keep_lease(self, job: CaptureJob, control: StopControl, done: threading.Event) -> None:
        """Renew the lease; pass stop/cancel requests (and a lost lease) to the capture."""
        interval = self.settings.lease_seconds / 3
        slot = self._running[job.operation_id].slot if job.operation_id in self._running else None
        while not done.wait(min(interval, 1.0)):
            try:
                record = self.store.renew_lease(
                    job.operation_id, self.settings.agent_id, self.settings.lease_seconds
                )
                if slot is not None:
                    self.store.renew_slot(job.kind, slot, job.operation_id, self.settings.lease_seconds)
            except StoreError as exc:
                log.warning("renewing the lease of %s failed: %s", job.operation_id, exc)
                continue
            if record is None:  # cancelled, or the lease was lost: either way, end now
                control.cancel.set()
                return
            if record.status == OperationState.STOPPING or record.stop_requested:
                control.stop.set()

    def _writer(self, job: CaptureJob, name: str) -> ArtifactWriter:
        egress = job.egress
        if egress.kind == "stream" and egress.url:
            return HttpStreamWriter(egress.url, ARTIFACT_CONTENT_TYPES[job.kind])
        if egress.kind == "filesystem":
            return FileSystemWriter(egress.directory or "artifacts", name)
        bucket = egress.bucket or self.settings.bucket
        key = (egress.key or self.settings.artifact_prefix) + name
        return S3MultipartWriter(
            self.s3,
            bucket,
            key,
            content_type=ARTIFACT_CONTENT_TYPES[job.kind],
            part_size=self.settings.part_size,
            kms_key_id=egress.kms_key_id,
        )

    def _run_job(self, job: CaptureJob, control: StopControl) -> None:
        try:
            target = select_process(
                list_processes(known=self._known),
                pid=job.process.pid,
                uid=job.process.uid,
                name=job.process.name,
            )
        except ProcessSelectionError as exc:
            self._fail(job, None, "ProcessNotFound", str(exc))
            return
        process = OperationProcess(pid=target.pid, uid=target.uid, name=target.name)
        writer = self._writer(job, artifact_name(job.kind, target.pid, job.created))
        try:
            self._capture_into(job, DiagnosticsClient(target.socket_path), writer, control)
            location = writer.complete()
        except CaptureCancelled:
            writer.abort()
            cancelled = OperationError(code="Cancelled", message="the operation was cancelled")
            self._finish(job, OperationState.CANCELLED, process=process, error=cancelled)
        except CaptureError as exc:
            # Keep what the runtime sent before it went away: the partial artifact is evidence.
            partial = self._complete_quietly(writer)
            suffix = f" (partial artifact: {_describe(partial)})" if partial else ""
            self._fail(job, process, exc.code, str(exc) + suffix)
        except EgressError as exc:
            self._fail(job, process, "EgressFailed", str(exc))
        except (DiagnosticsError, ValueError) as exc:  # ValueError: a job this agent cannot read
            writer.abort()
            self._fail(job, process, "CaptureFailed", str(exc))
        else:
            self._finish(
                job,
                OperationState.SUCCEEDED,
                process=process,
                resource_location=_describe(location),
                artifact=location.to_dict(),
            )

    def _capture_into(
        self, job: CaptureJob, client: DiagnosticsClient, writer: ArtifactWriter, control: StopControl
    ) -> None:
        duration = None if job.duration_seconds == -1 else float(job.duration_seconds)
        if job.kind == ArtifactKind.TRACE:
            config = (
                profile_configuration(TraceProfile.parse(job.trace_profile), job.counter_interval_seconds)
                if job.trace_profile
                else EventProvidersConfiguration.model_validate(job.configuration)
            )
            run_trace(client, session_configuration(config), writer, duration=duration, control=control)
        else:
            metrics = EventMetricsConfiguration.model_validate(job.configuration)
            pipeline = CountersPipeline(metrics, interval_seconds=job.counter_interval_seconds)
            run_live_metrics(client, pipeline, _JsonSeqArtifact(writer), duration=duration, control=control)

    def _fail(self, job: CaptureJob, process: OperationProcess | None, code: str, message: str) -> None:
        error = OperationError(code=code, message=message)
        self._finish(job, OperationState.FAILED, process=process, error=error)

    @staticmethod
    def _complete_quietly(writer: ArtifactWriter) -> Any:
        try:
            return writer.complete()
        except EgressError:
            return None

    def _finish(self, job: CaptureJob, state: OperationState, **changes: Any) -> None:
        try:
            self.store.transition(job.operation_id, state, claimed_by=self.settings.agent_id, **changes)
        except TransitionRejected as exc:
            log.info("operation %s already ended (%s): %s not recorded", job.operation_id, exc.current, state)
        except StoreError as exc:
            log.error("recording %s for %s failed (its lease will expire): %s", state, job.operation_id, exc)


def _describe(location: Any) -> str:
    if location.kind == "s3":
        return f"s3://{location.bucket}/{location.key}"
    if location.kind == "stream":
        return str(location.path)
    return f"file://{location.path}"


class _JsonSeqArtifact:
    """The live-metrics artifact: each Metric record as json-seq into the egress writer."""

    def __init__(self, writer: ArtifactWriter) -> None:
        self.writer = writer

    def write(self, metric: Any) -> None:
        self.writer.write(metric.to_json_seq())

    def close(self) -> None:
        pass
