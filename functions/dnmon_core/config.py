"""Service configuration shared by the API functions and the local stack, read from the environment.

| variable | meaning | default |
|---|---|---|
| ``DNMON_TABLE`` | DynamoDB table (operations, slots, agents) | required |
| ``DNMON_BUCKET`` | artifact bucket: the default egress when no ``egressProvider`` is given | required |
| ``DNMON_TRACE_LIMIT`` / ``DNMON_LIVEMETRICS_LIMIT`` | concurrent operations per kind | 3 / 3 |
| ``DNMON_SYNC_BUDGET_SECONDS`` | how long a request without ``egressProvider`` waits for the artifact | 25 |
| ``DNMON_INLINE_LIMIT_BYTES`` | largest artifact returned in the response body | 4194304 |
| ``DNMON_EGRESS_PROVIDERS`` | named egress providers, JSON (below) | ``{}`` |
| ``DNMON_AGENT_MAX_SILENCE_SECONDS`` | an agent silent for longer is not alive | 90 |
| ``DNMON_CLAIM_SECONDS`` | how long a job may wait for its agent's claim before it fails | 60 |
| ``DNMON_COUNTER_INTERVAL_SECONDS`` | live-metrics interval (``GlobalCounter:IntervalSeconds``) | 5 |
| ``DNMON_STREAM_INGEST_URL`` | local stack only: where artifacts without egress stream | unset |

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

INLINE_LIMIT = 4 << 20  # a buffered Lambda response is 6 MB after base64 (aws-facts.md)
STREAM_HEADER = "X-Dnmon-Stream-Operation"
"""Response header by which the API function tells the local gateway: stream this operation's
artifact as the body (Lambda's Python runtime cannot stream; the local gateway can)."""


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
    sync_budget_seconds: float = 25.0
    inline_limit_bytes: int = INLINE_LIMIT
    egress_providers: Mapping[str, EgressProvider] = field(default_factory=dict)
    agent_max_silence_seconds: float = 90.0
    claim_seconds: float = 60.0
    counter_interval_seconds: float = 5.0
    presign_expiry: timedelta = timedelta(minutes=15)
    stream_ingest_url: str | None = None

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
                sync_budget_seconds=float(env.get("DNMON_SYNC_BUDGET_SECONDS", "25")),
                inline_limit_bytes=int(env.get("DNMON_INLINE_LIMIT_BYTES", str(INLINE_LIMIT))),
                egress_providers=parse_egress_providers(env.get("DNMON_EGRESS_PROVIDERS")),
                agent_max_silence_seconds=float(env.get("DNMON_AGENT_MAX_SILENCE_SECONDS", "90")),
                claim_seconds=float(env.get("DNMON_CLAIM_SECONDS", "60")),
                counter_interval_seconds=float(env.get("DNMON_COUNTER_INTERVAL_SECONDS", "5")),
                stream_ingest_url=env.get("DNMON_STREAM_INGEST_URL") or None,
            )
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"invalid dnmon setting: {exc}") from exc

    def default_egress(self) -> EgressTarget:
        """Where an artifact goes when the request named no egress provider (the HTTP response)."""
        return EgressTarget(provider=None, kind="s3", bucket=self.bucket, key="artifacts/")
