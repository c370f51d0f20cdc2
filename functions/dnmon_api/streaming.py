"""The StreamFunction: ``POST|GET /livemetrics`` and ``/trace`` with the artifact as the response.

The capture routes run in the same Powertools resolver as everywhere else; when one answers with
``STREAM_MARKER`` (no egress provider, a duration that fits in a stream) this handler relays the
artifact: it waits for the EventPipe session to open, then sends 200 with Location and
Content-Disposition at once, then every chunk the agent publishes (``dnmon_core.chunks``) as soon
as it appears, until the operation ends. Run by ``runtime.py`` on AWS and by ``dnmon up`` alike.

- The capture fails before the session opens: 400 problem+json, as dotnet-monitor answers.
- It fails after: the response ends without completing (the runtime's error trailers), so the
  client sees the cut; what was captured is kept and served by ``/operations/{id}/artifact``.
- The client goes away (a write fails): a trace is stopped gracefully and kept, live metrics are
  cancelled, and either way its slot is freed. Lambda does not promise that a write fails after a
  disconnect (docs/streaming.md), so the relay also ends on its own with the operation, at the
  response size limit, and before the function's deadline.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from dnmon_core.chunks import chunk_key
from dnmon_core.operations import ArtifactKind, OperationState, is_terminal
from dnmon_core.store import OperationRecord, StoreError, TransitionRejected

from . import livemetrics, trace
from .captures import STREAM_MARKER, problem_json
from .operations import end_operation
from .problems import Problem, install_handlers
from .resolvers import RestResolver
from .runtime import ClientGone, ResponseStream
from .services import Services, services

logger = Logger(service="dnmon")
app = RestResolver()
for group in (livemetrics, trace):
    app.include_router(group.router)
install_handlers(app, logger, "No such route.")

STATE_SECONDS = 1.0  # how often the operation's state is read while no chunk comes
DEADLINE_MARGIN_MS = 10_000  # end the response this long before Lambda would end the function
MAX_RESPONSE_BYTES = 200 * 10**6  # Lambda's limit for one streamed response


class StreamCut(Exception):
    """The response cannot complete: it ends without its last chunk, so the client sees the cut."""


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any, stream: ResponseStream) -> None:
    response = app.resolve(event, context)
    status = int(response.get("statusCode", 200))
    headers = _headers(response)
    operation = headers.pop(STREAM_MARKER, None)
    if operation is None:  # a problem, a 202: an ordinary response, written at once
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode()
        stream.start(status, headers)
        stream.write(raw)
        return
    Relay(services(), uuid.UUID(operation), stream, context.get_remaining_time_in_millis).run(headers)


def _headers(response: dict[str, Any]) -> dict[str, str]:
    """The resolver's headers as one value per name (the prelude's ``headers``)."""
    merged: dict[str, list[str]] = {}
    for name, value in (response.get("headers") or {}).items():
        merged.setdefault(name, []).append(str(value))
    for name, values in (response.get("multiValueHeaders") or {}).items():
        merged[name] = [str(v) for v in values]
    return {name: ", ".join(values) for name, values in merged.items()}


class Relay:
    """One streamed artifact: the operation's state from the table, its bytes from the chunks."""

    def __init__(
        self,
        svc: Services,
        operation_id: uuid.UUID,
        stream: ResponseStream,
        remaining_ms: Callable[[], int],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.svc = svc
        self.operation_id = operation_id
        self.stream = stream
        self.remaining_ms = remaining_ms
        self.sleep = sleep
        self.sequence = 0
        self.sent = 0

    def run(self, headers: dict[str, str]) -> None:
        record = self._wait_for_session()
        if record.status in (OperationState.FAILED, OperationState.CANCELLED):
            # It never started: nothing was captured, so the answer is a problem, not an artifact.
            message = record.error.message if record.error else f"The operation was {record.status}."
            problem_headers = {"Content-Type": "application/problem+json", "Location": headers["Location"]}
            self.stream.start(400, problem_headers)
            self.stream.write(problem_json(Problem(400, message)).encode())
            return
        self.stream.start(200, headers)
        try:
            self._relay(record, headers["Location"])
        except ClientGone:
            self._client_left(record)
            raise

    def _wait_for_session(self) -> OperationRecord:
        """Headers go out when the session is open (Running), not at the first record."""
        record = self._record()
        while record.status == OperationState.STARTING:
            self._check_deadline("the capture did not start")
            self.sleep(self.svc.settings.stream_poll_seconds)
            record = self._record()
        return record

    def _relay(self, record: OperationRecord, location: str) -> None:
        check_at = 0.0
        while True:
            if self._forward_next(record):
                continue
            now = time.monotonic()
            if now >= check_at:
                check_at = now + STATE_SECONDS
                record = self._record()
                if is_terminal(record.status):
                    while self._forward_next(record):
                        pass
                    self._finish(record)
                    return
            self._check_deadline(f"the capture goes on; follow it at {location}")
            self.sleep(self.svc.settings.stream_poll_seconds)

    def _finish(self, record: OperationRecord) -> None:
        """Every chunk is there once the agent reports the end; anything short of all is a cut."""
        artifact = record.artifact or {}
        if record.status != OperationState.SUCCEEDED:
            reason = record.error.message if record.error else f"the operation was {record.status}"
            raise StreamCut(reason)
        if artifact.get("chunks_broken"):
            raise StreamCut(f"the live stream broke: {artifact['chunks_broken']}")
        expected = artifact.get("chunks")
        if expected is not None and self.sequence < int(expected):
            raise StreamCut(f"{self.sequence} of {expected} chunks could be read")

    def _forward_next(self, record: OperationRecord) -> bool:
        if not record.owner:
            return False  # not claimed yet: there can be no chunk
        key = chunk_key(record.owner, self.operation_id, self.sequence)
        try:
            obj = self.svc.s3.get_object(Bucket=self.svc.settings.bucket, Key=key)
            data: bytes = obj["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise StreamCut(f"reading chunk {self.sequence} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StreamCut(f"reading chunk {self.sequence} failed: {exc}") from exc
        if self.sent + len(data) > MAX_RESPONSE_BYTES:
            raise StreamCut(
                f"a streamed response holds at most {MAX_RESPONSE_BYTES} bytes; the capture goes on "
                "and its artifact is kept (GET /operations/{id}/artifact)"
            )
        self.stream.write(data)
        self.sequence += 1
        self.sent += len(data)
        return True

    def _record(self) -> OperationRecord:
        try:
            return self.svc.store.get(self.operation_id)
        except StoreError as exc:
            raise StreamCut(f"the operation's state could not be read: {exc}") from exc

    def _check_deadline(self, what: str) -> None:
        if self.remaining_ms() < DEADLINE_MARGIN_MS:
            raise StreamCut(f"the response reached its time limit: {what}")

    def _client_left(self, record: OperationRecord) -> None:
        """A trace is stopped and kept (its rundown completes the file); live metrics are cancelled."""
        stop = record.kind == ArtifactKind.TRACE
        try:
            end_operation(self.svc, record, stop=stop)
        except TransitionRejected:
            return  # it had just ended anyway
        except StoreError as exc:
            logger.warning("could not end %s after its client left: %s", self.operation_id, exc)
            return
        logger.info("client left: %s %s", "stopped" if stop else "cancelled", self.operation_id)
