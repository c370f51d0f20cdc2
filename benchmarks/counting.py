"""Counting every AWS request and every agent API call, for the fleet and cost benchmarks.

One ``Meter`` patches, while ``installed()``:

* ``botocore.client.BaseClient._make_api_call``: every boto3 request made in this process (the API
  handler, the agent API handler, the agents' own SQS, S3 and KMS clients). A retry inside botocore
  is one call here; the benchmarks run against a healthy moto, where there are none;
* ``ControlPlane._post``: every request an agent sends to the agent API (the function URL).

Each AWS call is attributed to an *actor*: the label set on the calling thread with ``acting()``
(the API handler, the agent API handler wrapped by ``function()``), else ``agent``. An agent's own
calls are tied to the agent by the queue they name (SQS) — the agents' other threads (watcher,
captures) are started by agent code, so a thread label cannot follow them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore.client import BaseClient

AGENT = "agent"


@dataclass(frozen=True)
class AwsCall:
    actor: str  # "api", "agent-api", or AGENT
    service: str  # botocore's service id, lower case: dynamodb, sqs, s3, kms
    operation: str  # PutItem, ReceiveMessage, ...
    queue: str | None  # the QueueUrl named, if any (ties an agent's SQS calls to the agent)
    at: float
    seconds: float
    returned: int | None = None  # ReceiveMessage: how many messages came back
    keys: tuple[str, ...] = ()  # DynamoDB: "pk|sk" of every item read or written ("pk|sk" of a put)


def _keys(operation: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The table items a DynamoDB request names (plain values from a Table resource, ``{"S": ...}``
    from a client: botocore's _make_api_call sees the resource's parameters before serialisation)."""

    def value(v: Any) -> str:
        return str(next(iter(v.values()))) if isinstance(v, dict) else str(v)

    def key(item: dict[str, Any]) -> str:
        return "|".join(value(item.get(n, "?")) for n in ("pk", "sk"))

    if "Key" in params:
        return (key(params["Key"]),)
    if "Item" in params:
        return (key(params["Item"]),)
    if operation == "BatchWriteItem":
        return tuple(
            key(r.get("PutRequest", {}).get("Item") or r.get("DeleteRequest", {}).get("Key") or {})
            for requests in params.get("RequestItems", {}).values()
            for r in requests
        )
    if operation == "BatchGetItem":
        return tuple(key(k) for spec in params.get("RequestItems", {}).values() for k in spec.get("Keys", []))
    return ()


@dataclass(frozen=True)
class AgentApiCall:
    """One request an agent sent to the agent API (``ControlPlane._post``)."""

    agent: str | None  # the DNMON_AGENT_ID override the agent sends, if any
    path: str
    at: float


@dataclass(frozen=True)
class Invocation:
    """One run of a wrapped Lambda handler, with the AWS requests it made and how long it took."""

    function: str
    route: str
    agent: str | None
    seconds: float
    aws: tuple[str, ...]  # "service:Operation" in call order


@dataclass
class Frame:
    """What one ``acting`` block made: its AWS calls (service:Operation) and their time."""

    actor: str
    calls: list[str] = field(default_factory=list)
    aws_seconds: float = 0.0


@dataclass
class Meter:
    aws: list[AwsCall] = field(default_factory=list)
    agent_api: list[AgentApiCall] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    # --- attribution ------------------------------------------------------------------------

    @contextmanager
    def acting(self, actor: str) -> Iterator[Frame]:
        """AWS calls on this thread belong to ``actor``; the frame collects them."""
        previous = getattr(self._local, "frame", None)
        frame = Frame(actor)
        self._local.frame = frame
        try:
            yield frame
        finally:
            self._local.frame = previous

    def function(
        self, name: str, handler: Callable[[dict[str, Any], Any], dict[str, Any]]
    ) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        """``handler`` wrapped: each call is an ``Invocation`` (route from the event's path)."""

        def wrapped(event: dict[str, Any], context: Any) -> dict[str, Any]:
            route = str(event.get("rawPath") or event.get("path") or "")
            headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
            with self.acting(name) as frame:
                start = time.perf_counter()
                try:
                    return handler(event, context)
                finally:
                    seconds = time.perf_counter() - start
                    record = Invocation(
                        name, route, headers.get("x-dnmon-agent-id"), seconds, tuple(frame.calls)
                    )
                    with self._lock:
                        self.invocations.append(record)

        return wrapped

    # --- patches ------------------------------------------------------------------------------

    @contextmanager
    def installed(self) -> Iterator[Meter]:
        from dnmon_agent.worker.control_plane import ControlPlane

        original_call = getattr(BaseClient, "_make_api_call")  # noqa: B009 - private, untyped
        original_post = ControlPlane._post
        meter = self

        def counted_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            start = time.perf_counter()
            result: Any = None
            try:
                result = original_call(client, operation, params)
                return result
            finally:
                seconds = time.perf_counter() - start
                frame: Frame | None = getattr(meter._local, "frame", None)
                service = client.meta.service_model.service_name
                if frame is not None:
                    frame.calls.append(f"{service}:{operation}")
                    frame.aws_seconds += seconds
                actor = frame.actor if frame is not None else AGENT
                returned = (
                    len(result.get("Messages", [])) if operation == "ReceiveMessage" and result else None
                )
                call = AwsCall(
                    actor,
                    service,
                    operation,
                    params.get("QueueUrl"),
                    time.time(),
                    seconds,
                    returned,
                    _keys(operation, params) if service == "dynamodb" else (),
                )
                with meter._lock:
                    meter.aws.append(call)

        def counted_post(
            plane: ControlPlane, path: str, body: Mapping[str, Any] | None = None
        ) -> dict[str, Any]:
            with meter._lock:
                meter.agent_api.append(AgentApiCall(plane.agent_id_override, path, time.time()))
            return original_post(plane, path, body)

        setattr(BaseClient, "_make_api_call", counted_call)  # noqa: B010
        setattr(ControlPlane, "_post", counted_post)  # noqa: B010
        try:
            yield self
        finally:
            setattr(BaseClient, "_make_api_call", original_call)  # noqa: B010
            setattr(ControlPlane, "_post", original_post)  # noqa: B010

    # --- reading --------------------------------------------------------------------------------

    def mark(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self.aws), len(self.agent_api), len(self.invocations)

    def since(self, mark: tuple[int, int, int]) -> tuple[list[AwsCall], list[AgentApiCall], list[Invocation]]:
        with self._lock:
            return (
                list(self.aws[mark[0] :]),
                list(self.agent_api[mark[1] :]),
                list(self.invocations[mark[2] :]),
            )


def tally(names: Iterator[str] | list[str] | tuple[str, ...]) -> dict[str, int]:
    """``{"dynamodb:PutItem": 2, ...}`` sorted by name."""
    return dict(sorted(Counter(names).items()))


def route_of(path: str) -> str:
    """An agent API path with its operation/request id folded: ``/operations/{id}/claim``."""
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in ("operations", "replies"):
        parts[2] = "{id}"
    return "/".join(parts)
