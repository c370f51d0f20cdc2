"""The AWS clients and stores a warm Lambda reuses, built on first use from the environment.

Nothing is created at import time: a cold start pays only for what the route needs, and tests
point the environment at moto before the first call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config

from dnmon_core.config import ServiceSettings
from dnmon_core.store import AgentRecord, AgentRegistry, OperationStore, ReplyStore

AGENT_CACHE_SECONDS = 5.0
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, signature_version="s3v4")


@dataclass
class Services:
    settings: ServiceSettings
    session: boto3.Session = field(default_factory=boto3.Session)
    _agents: tuple[float, list[AgentRecord]] | None = None

    @cached_property
    def table(self) -> Any:
        return self.session.resource("dynamodb", config=_CONFIG).Table(self.settings.table)

    @cached_property
    def store(self) -> OperationStore:
        return OperationStore(self.table, limits=self.settings.limits)

    @cached_property
    def registry(self) -> AgentRegistry:
        return AgentRegistry(self.table, max_silence=self.settings.agent_max_silence_seconds)

    def agents(self, *, refresh: bool = False) -> list[AgentRecord]:
        """Alive agents, re-read at most every few seconds: a warm function saves a Query per
        request, and agents heartbeat far less often than that anyway. Callers refresh when the
        cached view cannot serve a request (an agent or process that may have just appeared)."""
        now = time.monotonic()
        if refresh or self._agents is None or now - self._agents[0] > AGENT_CACHE_SECONDS:
            self._agents = (now, self.registry.agents())
        return self._agents[1]

    @cached_property
    def replies(self) -> ReplyStore:
        return ReplyStore(self.table)

    @cached_property
    def sqs(self) -> Any:
        return self.session.client("sqs", config=_CONFIG)

    @cached_property
    def s3(self) -> Any:
        return self.session.client("s3", config=_CONFIG)


_cache: dict[tuple[str, ...], Services] = {}

_KEYS = (
    "DNMON_TABLE", "DNMON_BUCKET", "DNMON_TRACE_LIMIT", "DNMON_LIVEMETRICS_LIMIT",
    "DNMON_SYNC_BUDGET_SECONDS", "DNMON_INLINE_LIMIT_BYTES", "DNMON_EGRESS_PROVIDERS",
    "DNMON_AGENT_MAX_SILENCE_SECONDS", "DNMON_CLAIM_SECONDS", "DNMON_COUNTER_INTERVAL_SECONDS",
    "DNMON_STREAM_INGEST_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
)  # fmt: skip


def services() -> Services:
    """One Services per distinct configuration (a Lambda has one; the local stack and tests may vary)."""
    key = tuple(os.environ.get(k, "") for k in _KEYS)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = Services(ServiceSettings.from_env())
    return found
