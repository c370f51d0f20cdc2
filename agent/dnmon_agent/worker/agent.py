"""``dnmon agent``: register, long-poll this host's queue, act on signed messages, report state.

The claim and lease (kept by the control plane, in DynamoDB) are the source of truth, not SQS
visibility (which cannot outlive 12 h while ``durationSeconds`` may be -1): a job is claimed
through the agent API, its message deleted at once, and the lease renewed while the capture runs
(the AWS SSM Agent pattern). A redelivered message finds the claim taken and starts nothing. The
agent reads its own queue and writes its own artifact prefix; everything else goes through the
agent API, which knows the agent by its AWS identity.

Nothing on the queue is trusted: a message must carry the control plane's signature, name this
agent and be unexpired, or it is dropped and logged. AWS faults never end the loop: it backs off
and polls again. Should the loop itself fail, running captures are stopped and ``run`` raises,
so ``dnmon agent`` exits non-zero.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import pydantic
from botocore.config import Config

from dnmon_core.config import AgentSettings, ConfigurationError
from dnmon_core.operations import CaptureJob, ControlAction, ControlMessage, EnvironmentRequest
from dnmon_core.signing import MessageType, OpenedMessage, SignatureError, Verifier, unseal
from dnmon_core.store import StoreError, map_aws_errors

from .. import __version__
from ..diagnostics.client import DiagnosticsClient
from ..diagnostics.discovery import select_process
from ..diagnostics.errors import DiagnosticsError
from .capture import Capture, CaptureContext
from .control_plane import ControlPlane, Registration
from .processes import ProcessWatcher

log = logging.getLogger("dnmon.agent")

BACKOFF_MAX_SECONDS = 30.0
BUSY_VISIBILITY_SECONDS = 10  # a job that arrives while every capture slot is busy comes back then


@dataclass
class Agent:
    settings: AgentSettings
    session: boto3.Session = field(default_factory=boto3.Session)
    clock: Callable[[], float] = time.time
    endpoint_url: str | None = None  # every AWS call through this endpoint (tests: a fault proxy)
    registration: Registration | None = None
    failure: BaseException | None = None
    _running: dict[uuid.UUID, Capture] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4")
        self.sqs = self._client("sqs")
        self.control = ControlPlane(
            self.settings.agent_api_url, self.session, agent_id=self.settings.agent_id
        )

    def _client(self, service: str) -> Any:
        return self.session.client(service, config=self._config, endpoint_url=self.endpoint_url)  # type: ignore[call-overload]

    @property
    def agent_id(self) -> str:
        """The id the agent API derived from this host's AWS identity (known once registered)."""
        return self._registered().agent_id

    @property
    def queue_url(self) -> str | None:
        return self.registration.queue_url if self.registration else None

    def _registered(self) -> Registration:
        if self.registration is None:
            raise RuntimeError("the agent is not registered yet")
        return self.registration

    @cached_property
    def s3(self) -> Any:
        """Created on the first capture: an idle agent does not carry an S3 client (~6 MB)."""
        return self._client("s3")

    @cached_property
    def verifier(self) -> Verifier:
        """The control plane's public key, fetched once: verifying a message costs no request."""
        if not self.settings.signing_key:
            raise ConfigurationError("DNMON_SIGNING_KEY is not set: the agent cannot verify its jobs")
        kms = self._client("kms")
        with map_aws_errors("fetching the signing key's public half"):
            response = kms.get_public_key(KeyId=self.settings.signing_key)
        return Verifier(bytes(response["PublicKey"]), str(response["KeyId"]))

    @cached_property
    def watcher(self) -> ProcessWatcher:
        return ProcessWatcher(self.control)

    @cached_property
    def captures(self) -> CaptureContext:
        return CaptureContext(
            settings=self.settings,
            control=self.control,
            artifact_owner=self._registered().artifact_owner,
            s3=lambda: self.s3,
            processes=self.watcher.processes,
            egress_directories=tuple(Path(p).resolve() for p in self.settings.egress_directories),
            clock=self.clock,
        )

    # --- registration --------------------------------------------------------------------------

    def register(self) -> str:
        """Register through the agent API (which makes this identity's queue) and publish processes."""
        self.verifier  # noqa: B018 - fail at start, not at the first job, when the key is unusable
        self.registration = self.control.register(self.settings.host_name, __version__)
        self.watcher.scan(force=True)
        return self._registered().queue_url

    def refresh_processes(self) -> None:
        """Scan now rather than at the next tick (the local stack, after starting its sample app)."""
        self.watcher.scan()

    # --- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop``; then stop running captures gracefully and wait for them.

        AWS faults are retried with backoff; anything else ends the loop: captures are stopped,
        the error is kept in ``failure`` and raised."""
        try:
            self._register_patiently(stop)
            watch = threading.Thread(
                target=self.watcher.run,
                args=(stop, self.settings.scan_seconds, self.settings.liveness_seconds),
                name="process-watcher",
                daemon=True,
            )
            watch.start()
            self._threads.append(watch)
            failures = 0
            while not stop.is_set():
                try:
                    self.poll_once(self.settings.poll_seconds)
                    failures = 0
                except StoreError as exc:
                    failures += 1
                    delay = min(BACKOFF_MAX_SECONDS, 0.5 * 2**failures)
                    log.warning("polling the queue failed (retrying in %.1fs): %s", delay, exc)
                    stop.wait(delay)
        except BaseException as exc:
            self.failure = exc
            log.exception("the agent's loop failed: stopping its captures")
            raise
        finally:
            stop.set()
            self.shutdown()
            if self.failure is None:
                self.deregister()

    def _register_patiently(self, stop: threading.Event) -> None:
        failures = 0
        while self.queue_url is None:
            try:
                self.register()
                return
            except StoreError as exc:
                failures += 1
                delay = min(BACKOFF_MAX_SECONDS, 0.5 * 2**failures)
                log.warning("registering failed (retrying in %.1fs): %s", delay, exc)
                if stop.wait(delay):
                    return

    def free_capacity(self) -> int:
        with self._lock:
            return self.settings.max_captures - len(self._running)

    def poll_once(self, wait_seconds: int) -> int:
        """One long poll; dispatch what arrives. Returns the number of messages handled."""
        with map_aws_errors("polling the queue"):
            response = self.sqs.receive_message(
                QueueUrl=self._queue(), MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
            )
        messages = response.get("Messages", [])
        for message in messages:
            self.dispatch(message)
        return len(messages)

    def _queue(self) -> str:
        return self._registered().queue_url

    def dispatch(self, message: Mapping[str, Any]) -> None:
        """Verify, then act; a message that cannot be trusted or read is dropped and logged."""
        try:
            opened = unseal(self.verifier, str(message.get("Body", "")), self.agent_id, clock=self.clock)
            handler = {
                MessageType.JOB: self._on_job,
                MessageType.CONTROL: self._on_control,
                MessageType.ENVIRONMENT: self._on_environment,
            }[opened.kind]
            handler(opened, message)
        except SignatureError as exc:
            log.warning("dropping a queue message that is not a valid job for this agent: %s", exc.reason)
            self._delete(message)
        except pydantic.ValidationError as exc:
            log.error("dropping a signed message this agent cannot read: %s", exc)
            self._delete(message)

    def _on_job(self, opened: OpenedMessage, message: Mapping[str, Any]) -> None:
        job = CaptureJob.model_validate(opened.body)
        if self.free_capacity() <= 0:  # back on the queue shortly; its claim window still runs
            with map_aws_errors("postponing a job"):
                self.sqs.change_message_visibility(
                    QueueUrl=self._queue(),
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=BUSY_VISIBILITY_SECONDS,
                )
            return
        claimed = self.control.claim(job.operation_id, self.settings.lease_seconds)
        self._delete(message)
        if not claimed:
            log.info("operation %s is already claimed or over: not starting it", job.operation_id)
            return
        capture = Capture(self.captures, job, on_end=self._ended)
        with self._lock:
            self._running[job.operation_id] = capture
        capture.start()

    def _ended(self, capture: Capture) -> None:
        with self._lock:
            self._running.pop(capture.operation_id, None)

    def _on_control(self, opened: OpenedMessage, message: Mapping[str, Any]) -> None:
        control = ControlMessage.model_validate(opened.body)
        self._delete(message)
        with self._lock:
            capture = self._running.get(control.operation_id)
        if capture is None:
            log.info("%s for %s: no such capture runs here", control.action, control.operation_id)
            return
        (capture.control.stop if control.action == ControlAction.STOP else capture.control.cancel).set()

    def _on_environment(self, opened: OpenedMessage, message: Mapping[str, Any]) -> None:
        request = EnvironmentRequest.model_validate(opened.body)
        self._delete(message)
        thread = threading.Thread(
            target=self._answer_environment, args=(request,), name=f"environment-{request.request_id}"
        )
        thread.start()

    def _answer_environment(self, request: EnvironmentRequest) -> None:
        """Read the target's environment (ProcessEnvironment) and leave the answer for the API.
        A thread of its own: whatever ends it is logged, and the API then answers 503 in time."""
        selector = request.process
        try:
            try:
                target = select_process(
                    self.watcher.processes(), pid=selector.pid, uid=selector.uid, name=selector.name
                )
                reply: dict[str, Any] = {"environment": DiagnosticsClient(target.socket_path).environment()}
            except DiagnosticsError as exc:
                reply = {"error": str(exc)}
            self.control.reply(request.request_id, reply)
        except StoreError as exc:
            log.warning("storing the environment reply failed: %s", exc)
        except Exception:
            log.exception("answering environment request %s failed", request.request_id)

    def _delete(self, message: Mapping[str, Any]) -> None:
        try:
            with map_aws_errors("deleting a message"):
                self.sqs.delete_message(QueueUrl=self._queue(), ReceiptHandle=message["ReceiptHandle"])
        except StoreError as exc:
            log.warning("deleting a message failed (a redelivery will find the claim taken): %s", exc)

    def shutdown(self, timeout: float = 120.0) -> None:
        with self._lock:
            running = list(self._running.values())
        for capture in running:
            capture.control.stop.set()
        deadline = time.monotonic() + timeout
        for capture in running:
            if capture.thread.ident is not None:  # recorded a moment before its thread starts
                capture.thread.join(max(0.0, deadline - time.monotonic()))

    def deregister(self) -> None:
        """Leave the registry (graceful shutdown): the API stops sending jobs here at once."""
        try:
            self.control.deregister()
        except StoreError as exc:
            log.warning("deregistering failed (the agent will be seen as silent): %s", exc)

    def wait_idle(self, timeout: float) -> bool:
        """Tests and ``up``: wait until no capture runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.free_capacity() == self.settings.max_captures:
                return True
            time.sleep(0.05)
        return False
