"""The agent's one way to write to the control plane: the agent API, SigV4-signed with its credentials.

The agent holds no DynamoDB permission at all: registration, process lists, liveness, claims,
leases, state and replies are requests to a Lambda function URL (``AuthType: AWS_IAM``), which
derives the agent's identity from the signature. Answers map onto the store's error family, the
one the rest of the agent already handles: a network fault, a throttle or a 5xx is
``StoreUnavailable`` (retry), 409 is ``TransitionRejected``, 404 ``NotFound``, any other refusal
``StoreError``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError
from botocore.httpsession import URLLib3Session

from dnmon_core.models import ProcessInfo
from dnmon_core.operations import OperationState
from dnmon_core.store import NotFound, StoreError, StoreUnavailable, TransitionRejected

OVERRIDE_HEADER = "X-Dnmon-Agent-Id"
_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


@dataclass(frozen=True)
class Registration:
    agent_id: str
    queue_url: str
    artifact_owner: str  # the S3 key segment this host's IAM policy lets it write under


@dataclass(frozen=True)
class LeaseState:
    status: OperationState
    stop_requested: bool


class ControlPlane:
    """A client of the agent API. Thread-safe: one pooled HTTP session, credentials read per call."""

    def __init__(
        self,
        url: str,
        session: boto3.Session,
        *,
        agent_id: str | None = None,
        timeout: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.agent_id_override = agent_id
        host = url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        found = _URL_REGION.search(host)
        self.region = found.group(1) if found else (session.region_name or "us-east-1")
        self._http = URLLib3Session(timeout=timeout, max_pool_connections=16)

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise StoreError("the agent has no AWS credentials to sign its requests with")
        headers = {"Content-Type": "application/json"}
        if self.agent_id_override:
            headers[OVERRIDE_HEADER] = self.agent_id_override
        request = AWSRequest(
            method="POST", url=f"{self.url}{path}", data=json.dumps(body or {}).encode(), headers=headers
        )
        try:
            SigV4Auth(credentials.get_frozen_credentials(), "lambda", self.region).add_auth(request)
            response = self._http.send(request.prepare())
        except BotoCoreError as exc:  # connection refused, reset, timeout: nothing was decided
            raise StoreUnavailable(f"the agent API did not answer {path}: {exc}", type(exc).__name__) from exc
        text = response.content.decode("utf-8", "replace")
        if response.status_code < 300:
            try:
                answer: dict[str, Any] = json.loads(text or "{}")
            except ValueError as exc:
                raise StoreUnavailable(f"the agent API answered {path} with no JSON") from exc
            return answer
        detail = _detail(text)
        message = f"agent API {path}: HTTP {response.status_code}: {detail}"
        if response.status_code == 429 or response.status_code >= 500:
            raise StoreUnavailable(message, str(response.status_code))
        if response.status_code == 404:
            raise NotFound(message, "404")
        raise StoreError(message, str(response.status_code))

    # --- registry --------------------------------------------------------------------------------

    def register(self, host_name: str, version: str) -> Registration:
        answer = self._post("/register", {"hostName": host_name, "version": version})
        return Registration(answer["agentId"], answer["queueUrl"], answer["artifactOwner"])

    def publish_processes(self, processes: Iterable[ProcessInfo]) -> None:
        self._post("/processes", {"processes": [p.model_dump(mode="json") for p in processes]})

    def alive(self) -> None:
        self._post("/alive")

    def deregister(self) -> None:
        self._post("/deregister")

    # --- operations ------------------------------------------------------------------------------

    def claim(self, operation_id: uuid.UUID, lease_seconds: float) -> bool:
        return bool(
            self._post(f"/operations/{operation_id}/claim", {"leaseSeconds": lease_seconds})["claimed"]
        )

    def renew(self, operation_id: uuid.UUID, lease_seconds: float) -> LeaseState | None:
        """The lease extended, with the operation's state; None when it is no longer this agent's."""
        answer = self._post(f"/operations/{operation_id}/lease", {"leaseSeconds": lease_seconds})
        if not answer.get("held"):
            return None
        try:
            return LeaseState(OperationState(answer["status"]), bool(answer.get("stopRequested")))
        except (KeyError, ValueError) as exc:
            raise StoreError(f"the agent API's lease answer is not understood: {answer!r}") from exc

    def report(self, operation_id: uuid.UUID, state: OperationState, **changes: Any) -> None:
        """Move the operation on (a terminal state also frees its slots, server-side)."""
        body: dict[str, Any] = {"state": str(state)}
        for name, value in changes.items():
            if value is None:
                continue
            key = {"resource_location": "resourceLocation"}.get(name, name)
            body[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        try:
            self._post(f"/operations/{operation_id}/state", body)
        except StoreError as exc:
            if exc.code == "409":
                raise TransitionRejected(operation_id, state, None) from exc
            raise

    def reply(self, request_id: uuid.UUID, reply: Mapping[str, Any]) -> None:
        self._post(f"/replies/{request_id}", {"reply": dict(reply)})


def _detail(text: str) -> str:
    try:
        problem = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(problem, dict):
        return str(problem.get("detail") or problem.get("Message") or problem)[:500]
    return text[:200]
