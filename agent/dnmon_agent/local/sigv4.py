"""SigV4 checked the way a Lambda function URL with ``AWS_IAM`` auth checks it, for the local stack.

Lambda recomputes the signature of every request and passes only matching ones on, with the
caller's identity (https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html). Locally
the secrets are the stack's own credentials; the signature is recomputed with botocore's own
signer over exactly the headers the client signed, so a request the agent signs for AWS is
accepted here, and any change to its method, path, query, signed headers or body is refused.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_SKEW_SECONDS = 300  # SigV4 requests older or newer than this are refused
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class SignatureRefused(Exception):
    """The request is not signed by a known identity, or not as it was sent."""


@dataclass(frozen=True)
class Identity:
    """Who holds an access key: what Lambda puts in ``requestContext.authorizer.iam``."""

    secret_key: str
    user_arn: str
    user_id: str
    account_id: str = "123456789012"


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    identities: Mapping[str, Identity],
    *,
    service: str = "lambda",
    now: float | None = None,
) -> tuple[str, Identity]:
    """(access key, identity) of a correctly signed request; else ``SignatureRefused``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    match = _AUTHORIZATION.match(lowered.get("authorization", "").strip())
    if match is None:
        raise SignatureRefused("no AWS4-HMAC-SHA256 Authorization header")
    access_key = match["key"]
    identity = identities.get(access_key)
    if identity is None:
        raise SignatureRefused("unknown access key")
    if match["service"] != service:
        raise SignatureRefused(f"signed for service {match['service']!r}, not {service!r}")
    stamp = lowered.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise SignatureRefused("no valid X-Amz-Date") from None
    if (
        abs((time.time() if now is None else now) - signed_at) > MAX_SKEW_SECONDS
        or stamp[:8] != match["date"]
    ):
        raise SignatureRefused("the signature's time is too far from now")
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in lowered for name in signed):
        raise SignatureRefused("a signed header is missing")
    request = AWSRequest(method=method, url=url, data=body, headers={n: lowered[n] for n in signed})
    request.context["timestamp"] = stamp
    token = lowered.get("x-amz-security-token")
    signer = SigV4Auth(Credentials(access_key, identity.secret_key, token), service, match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureRefused("the signature does not match the request")
    return access_key, identity
