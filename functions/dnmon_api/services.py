"""The AWS clients and stores a warm Lambda reuses, built on first use from the environment.

Nothing is created at import time: a cold start pays only for what the route needs, and tests
point the environment at moto before the first call. The registry is read by key on every
request (no cached fleet view): a keyed read costs the same at 10 or 10,000 agents, and a process
an agent published a second ago is found at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dnmon_core.config import ConfigurationError, ServiceSettings
from dnmon_core.signing import KmsSigner, MessageType, seal
from dnmon_core.store import AgentRegistry, OperationStore, ReplyStore, SlotStore, StoreUnavailable

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, signature_version="s3v4")


@dataclass
class Services:
    settings: ServiceSettings
    session: boto3.Session = field(default_factory=boto3.Session)

    @cached_property
    def table(self) -> Any:
        return self.session.resource("dynamodb", config=_CONFIG).Table(self.settings.table)

    @cached_property
    def store(self) -> OperationStore:
        return OperationStore(self.table)

    @cached_property
    def slots(self) -> SlotStore:
        return SlotStore(self.table, limits=self.settings.limits, fleet_limits=self.settings.fleet_limits)

    @cached_property
    def registry(self) -> AgentRegistry:
        return AgentRegistry(self.table, max_silence=self.settings.agent_max_silence_seconds)

    @cached_property
    def replies(self) -> ReplyStore:
        return ReplyStore(self.table)

    @cached_property
    def sqs(self) -> Any:
        return self.session.client("sqs", config=_CONFIG)

    @cached_property
    def s3(self) -> Any:
        return self.session.client("s3", config=_CONFIG)

    @cached_property
    def signer(self) -> KmsSigner:
        if not self.settings.signing_key:
            raise ConfigurationError("DNMON_SIGNING_KEY is not set: jobs cannot be signed")
        return KmsSigner(self.session.client("kms", config=_CONFIG), self.settings.signing_key)

    def send(
        self, queue_url: str, kind: MessageType, agent_id: str, body: Mapping[str, Any], ttl_seconds: float
    ) -> None:
        """Sign ``body`` for ``agent_id`` and put it on its queue; AWS faults become StoreUnavailable."""
        try:
            message = seal(self.signer, kind, agent_id, body, ttl_seconds=ttl_seconds)
            self.sqs.send_message(QueueUrl=queue_url, MessageBody=message)
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"sending the {kind} message to agent {agent_id}: {exc}") from exc


_cache: dict[tuple[str, ...], Services] = {}

_KEYS = (
    "DNMON_TABLE", "DNMON_BUCKET", "DNMON_SIGNING_KEY", "DNMON_TRACE_LIMIT", "DNMON_LIVEMETRICS_LIMIT",
    "DNMON_FLEET_TRACE_LIMIT", "DNMON_FLEET_LIVEMETRICS_LIMIT",
    "DNMON_STREAM_MAX_SECONDS", "DNMON_STREAM_POLL_SECONDS", "DNMON_PUBLIC_URL", "DNMON_EGRESS_PROVIDERS",
    "DNMON_AGENT_MAX_SILENCE_SECONDS", "DNMON_CLAIM_SECONDS", "DNMON_COUNTER_INTERVAL_SECONDS",
    "DNMON_AGENT_QUEUE_PREFIX", "DNMON_DEAD_LETTER_ARN",
    "DNMON_ALLOW_AGENT_ID_OVERRIDE", "DNMON_AGENT_RETIRE_SECONDS", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
)  # fmt: skip


def services() -> Services:
    """One Services per distinct configuration (a Lambda has one; the local stack and tests may vary)."""
    key = tuple(os.environ.get(k, "") for k in _KEYS)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = Services(ServiceSettings.from_env())
    return found
