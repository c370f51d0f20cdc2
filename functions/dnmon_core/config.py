"""Every setting of dnmon and its default, read from the environment once (README lists them).

Control plane (API and schedule functions, the local stack):

| variable | meaning | default |
|---|---|---|
| ``DNMON_TABLE`` | DynamoDB table (operations, slots, agents) | required |
| ``DNMON_BUCKET`` | artifact bucket: the default egress when no ``egressProvider`` is given | required |
| ``DNMON_SIGNING_KEY`` | KMS key (id, ARN or alias) that signs jobs and control messages | required |
| ``DNMON_TRACE_LIMIT`` / ``DNMON_LIVEMETRICS_LIMIT`` | concurrent operations per kind, per host | 3 / 3 |
| ``DNMON_FLEET_TRACE_LIMIT`` / ``DNMON_FLEET_LIVEMETRICS_LIMIT`` | optional cap across the fleet | unset |
| ``DNMON_STREAM_MAX_SECONDS`` | longest ``durationSeconds`` streamed in the response (else 202) | 840 |
| ``DNMON_STREAM_POLL_SECONDS`` | how often a streamed response looks for the next chunk | 0.25 |
| ``DNMON_PUBLIC_URL`` | the API's base URL for ``Location`` (else the gateway's domain and stage) | unset |
| ``DNMON_EGRESS_PROVIDERS`` | named egress providers, JSON (below) | ``{}`` |
| ``DNMON_AGENT_MAX_SILENCE_SECONDS`` | an agent silent for longer is not alive (3 liveness periods) | 1800 |
| ``DNMON_CLAIM_SECONDS`` | how long a job may wait for its agent's claim before it fails | 60 |
| ``DNMON_COUNTER_INTERVAL_SECONDS`` | live-metrics interval (``GlobalCounter:IntervalSeconds``) | 5 |
| ``DNMON_AGENT_QUEUE_PREFIX`` | agent queues are ``<prefix><agent id>`` | ``dnmon-agent-`` |
| ``DNMON_DEAD_LETTER_ARN`` | redrive target of every agent queue | unset |
| ``DNMON_AGENT_RETIRE_SECONDS`` | the janitor removes agents (and queues) silent for longer | 86400 |
| ``DNMON_ALLOW_AGENT_ID_OVERRIDE`` | ``1``: agents may name their id (one identity, several agents) | unset |

Agent (``dnmon agent``): see ``AgentSettings``.

Egress providers: name → ``{"type": "s3", "bucketName", "prefix", "kmsKeyId", "preSignedUrlExpiry"}``
or ``{"type": "filesystem", "directoryPath"}`` (option names case-insensitive, as in dotnet-monitor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from .operations import ArtifactKind, EgressTarget

STREAM_MAX_SECONDS = 840.0  # API Gateway streams for 15 minutes; leave room for start and rundown


class ConfigurationError(ValueError):
    """The service is misconfigured (named in the message); raised at start-up, not per request."""


@dataclass(frozen=True)
class EgressProvider:
    name: str
    kind: str  # "s3" | "filesystem"
    bucket: str | None = None
    prefix: str = "artifacts/"
    kms_key_id: str | None = None
    presign_expiry: timedelta = timedelta(minutes=15)
    directory: str | None = None

    def target(self) -> EgressTarget:
        return EgressTarget(
            provider=self.name,
            kind=self.kind,
            bucket=self.bucket,
            key=self.prefix if self.kind == "s3" else None,
            directory=self.directory,
            kms_key_id=self.kms_key_id,
        )


def _timespan(text: str) -> timedelta:
    """dotnet-monitor's ``PreSignedUrlExpiry`` is a TimeSpan text (``[d.]hh:mm:ss``)."""
    days = 0
    if "." in text.split(":")[0]:
        day_text, text = text.split(".", 1)
        days = int(day_text)
    hours, minutes, seconds = (float(part) for part in text.split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_egress_providers(text: str | None) -> dict[str, EgressProvider]:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"DNMON_EGRESS_PROVIDERS is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError("DNMON_EGRESS_PROVIDERS must be a JSON object of name → options")
    providers: dict[str, EgressProvider] = {}
    for name, options in raw.items():
        if not isinstance(options, dict):
            raise ConfigurationError(f"egress provider {name!r}: options must be an object")
        lowered = {str(k).lower(): v for k, v in options.items()}
        kind = str(lowered.get("type", "s3")).lower()
        try:
            if kind == "s3":
                bucket = lowered.get("bucketname")
                if not bucket:
                    raise ConfigurationError(f"egress provider {name!r}: bucketName is required")
                expiry = lowered.get("presignedurlexpiry")
                providers[name] = EgressProvider(
                    name,
                    "s3",
                    bucket=str(bucket),
                    prefix=str(lowered.get("prefix", "artifacts/")),
                    kms_key_id=lowered.get("kmskeyid") or lowered.get("kmsencryptionkey"),
                    presign_expiry=_timespan(str(expiry)) if expiry else timedelta(minutes=15),
                )
            elif kind == "filesystem":
                directory = lowered.get("directorypath")
                if not directory:
                    raise ConfigurationError(f"egress provider {name!r}: directoryPath is required")
                providers[name] = EgressProvider(name, "filesystem", directory=str(directory))
            else:
                raise ConfigurationError(f"egress provider {name!r}: unknown type {kind!r}")
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"egress provider {name!r}: {exc}") from exc
    return providers


@dataclass(frozen=True)
class ServiceSettings:
    table: str
    bucket: str
    limits: Mapping[ArtifactKind, int]
    stream_max_seconds: float = STREAM_MAX_SECONDS
    stream_poll_seconds: float = 0.25
    public_url: str | None = None
    egress_providers: Mapping[str, EgressProvider] = field(default_factory=dict)
    agent_max_silence_seconds: float = 1800.0
    claim_seconds: float = 60.0
    counter_interval_seconds: float = 5.0
    presign_expiry: timedelta = timedelta(minutes=15)
    signing_key: str = ""
    fleet_limits: Mapping[ArtifactKind, int] = field(default_factory=dict)
    agent_queue_prefix: str = "dnmon-agent-"
    dead_letter_arn: str | None = None
    allow_agent_id_override: bool = False
    agent_retire_seconds: float = 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        env = os.environ if environ is None else environ
        try:
            table, bucket = env["DNMON_TABLE"], env["DNMON_BUCKET"]
        except KeyError as exc:
            raise ConfigurationError(f"{exc.args[0]} is not set") from exc
        try:
            return cls(
                table=table,
                bucket=bucket,
                limits={
                    ArtifactKind.TRACE: int(env.get("DNMON_TRACE_LIMIT", "3")),
                    ArtifactKind.LIVEMETRICS: int(env.get("DNMON_LIVEMETRICS_LIMIT", "3")),
                },
                stream_max_seconds=float(env.get("DNMON_STREAM_MAX_SECONDS", str(STREAM_MAX_SECONDS))),
                stream_poll_seconds=float(env.get("DNMON_STREAM_POLL_SECONDS", "0.25")),
                public_url=(env.get("DNMON_PUBLIC_URL") or "").rstrip("/") or None,
                egress_providers=parse_egress_providers(env.get("DNMON_EGRESS_PROVIDERS")),
                agent_max_silence_seconds=float(env.get("DNMON_AGENT_MAX_SILENCE_SECONDS", "1800")),
                claim_seconds=float(env.get("DNMON_CLAIM_SECONDS", "60")),
                counter_interval_seconds=float(env.get("DNMON_COUNTER_INTERVAL_SECONDS", "5")),
                signing_key=env.get("DNMON_SIGNING_KEY", ""),
                agent_queue_prefix=env.get("DNMON_AGENT_QUEUE_PREFIX", "dnmon-agent-"),
                dead_letter_arn=env.get("DNMON_DEAD_LETTER_ARN") or None,
                allow_agent_id_override=env.get("DNMON_ALLOW_AGENT_ID_OVERRIDE") == "1",
                agent_retire_seconds=float(env.get("DNMON_AGENT_RETIRE_SECONDS", "86400")),
                fleet_limits={
                    kind: int(text)
                    for kind, text in (
                        (ArtifactKind.TRACE, env.get("DNMON_FLEET_TRACE_LIMIT")),
                        (ArtifactKind.LIVEMETRICS, env.get("DNMON_FLEET_LIVEMETRICS_LIMIT")),
                    )
                    if text
                },
            )
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"invalid dnmon setting: {exc}") from exc

    def default_egress(self, *, chunks: bool = False) -> EgressTarget:
        """Where an artifact goes when the request named no egress provider: kept in the bucket,
        and with ``chunks`` also published as it is produced, for the streamed response."""
        return EgressTarget(provider=None, kind="s3", bucket=self.bucket, key="artifacts/", chunks=chunks)


@dataclass
class AgentSettings:
    """What ``dnmon agent`` reads (``DNMON_*``); defaults are the production ones.

    | variable | meaning | default |
    |---|---|---|
    | ``DNMON_AGENT_API_URL`` | the agent API's function URL (the stack's ``AgentApiUrl`` output) | required |
    | ``DNMON_SIGNING_KEY`` | the KMS key whose public half verifies jobs | required |
    | ``DNMON_BUCKET`` | artifact bucket, when a job names none | unset |
    | ``DNMON_AGENT_ID`` | ask for this id instead of the AWS identity's (only where allowed) | unset |
    | ``DNMON_HOST_NAME`` | the display name and ``host`` parameter value | the host name |
    | ``DNMON_MAX_CAPTURES`` | captures this agent runs at once | 6 |
    | ``DNMON_LEASE_SECONDS`` | an operation's lease, renewed at a third of it | 60 |
    | ``DNMON_LIVENESS_SECONDS`` | how often the agent says it is alive | 600 |
    | ``DNMON_SCAN_SECONDS`` | how often the diagnostics sockets are scanned for changes | 1 |
    | ``DNMON_POLL_SECONDS`` | SQS long-poll wait (20 is the maximum and the cheapest) | 20 |
    | ``DNMON_EGRESS_DIRECTORIES`` | directories filesystem egress may write into (``:``-separated) | none |
    """

    agent_api_url: str
    signing_key: str
    host_name: str
    bucket: str = ""
    agent_id: str | None = None
    max_captures: int = 6
    lease_seconds: float = 60.0
    liveness_seconds: float = 600.0
    scan_seconds: float = 1.0
    poll_seconds: int = 20
    part_size: int = 8 << 20
    artifact_prefix: str = "artifacts/"
    egress_directories: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        import socket

        env = os.environ if environ is None else environ
        try:
            return cls(
                agent_api_url=env["DNMON_AGENT_API_URL"],
                signing_key=env["DNMON_SIGNING_KEY"],
                host_name=env.get("DNMON_HOST_NAME") or socket.gethostname(),
                bucket=env.get("DNMON_BUCKET", ""),
                agent_id=env.get("DNMON_AGENT_ID") or None,
                max_captures=int(env.get("DNMON_MAX_CAPTURES", "6")),
                lease_seconds=float(env.get("DNMON_LEASE_SECONDS", "60")),
                liveness_seconds=float(env.get("DNMON_LIVENESS_SECONDS", "600")),
                scan_seconds=float(env.get("DNMON_SCAN_SECONDS", "1")),
                poll_seconds=int(env.get("DNMON_POLL_SECONDS", "20")),
                egress_directories=tuple(
                    p for p in env.get("DNMON_EGRESS_DIRECTORIES", "").split(os.pathsep) if p
                ),
            )
        except KeyError as exc:
            raise ConfigurationError(f"{exc.args[0]} is not set") from exc
        except ValueError as exc:
            raise ConfigurationError(f"invalid dnmon agent setting: {exc}") from exc
