"""MonitorApiKey: dotnet-monitor's Bearer JWTs, verified and generated the same way.

An existing dotnet-monitor key works unchanged: the same configuration names
(``Authentication__MonitorApiKey__Subject`` / ``__PublicKey`` / ``__Issuer``), the same public-key
encoding (a JWK as JSON, base64url-encoded), the same claims (``aud`` fixed, ``iss`` configurable,
``sub`` equal to the configured subject, ``exp`` required) and the same algorithms (ES256/384/512,
RS256/384/512 — never ``none`` or HMAC). Clock skew is Microsoft.IdentityModel's default, 5 min.

PyJWT and cryptography are imported inside the functions: the agent imports this core package
too and needs them only for ``dnmon generatekey``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

AUDIENCE = "https://github.com/dotnet/dotnet-monitor"
DEFAULT_ISSUER = "https://github.com/dotnet/dotnet-monitor/generatekey+MonitorApiKey"
CLOCK_SKEW_SECONDS = 300
ALGORITHMS = {"EC": ("ES256", "ES384", "ES512"), "RSA": ("RS256", "RS384", "RS512")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_CURVES = {"P-256", "P-384", "P-521"}
_PREFIX = "Authentication__MonitorApiKey__"


class ApiKeyError(Exception):
    """The token is not acceptable; ``reason`` is safe to log (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiKeyConfigurationError(ValueError):
    """The configured key is unusable (missing, malformed, or carrying private parts)."""


def _b64url_decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class MonitorApiKeyConfiguration:
    subject: str
    public_key: str
    issuer: str = DEFAULT_ISSUER

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MonitorApiKeyConfiguration | None:
        """dotnet-monitor's names, with ``__`` or ``:`` separators; None when no key is configured."""

        def get(name: str) -> str | None:
            for key in (f"{_PREFIX}{name}", f"Authentication:MonitorApiKey:{name}"):
                if environ.get(key):
                    return environ[key]
            return None

        subject, public_key = get("Subject"), get("PublicKey")
        if not subject and not public_key:
            return None
        if not subject or not public_key:
            raise ApiKeyConfigurationError("MonitorApiKey needs both Subject and PublicKey")
        return cls(subject, public_key, get("Issuer") or DEFAULT_ISSUER)

    def jwk(self) -> dict[str, Any]:
        try:
            jwk = json.loads(_b64url_decode(self.public_key))
        except (ValueError, binascii.Error) as exc:
            raise ApiKeyConfigurationError("PublicKey is not a base64url-encoded JSON Web Key") from exc
        if not isinstance(jwk, dict) or jwk.get("kty") not in ALGORITHMS:
            raise ApiKeyConfigurationError("PublicKey must be an EC or RSA JSON Web Key")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise ApiKeyConfigurationError(
                "PublicKey carries private key material: configure the public key only"
            )
        if jwk["kty"] == "EC" and (jwk.get("crv") not in _CURVES or "x" not in jwk or "y" not in jwk):
            raise ApiKeyConfigurationError("an EC PublicKey needs crv (P-256, P-384, P-521), x and y")
        if jwk["kty"] == "RSA" and ("n" not in jwk or "e" not in jwk):
            raise ApiKeyConfigurationError("an RSA PublicKey needs n and e")
        return jwk


@dataclass(frozen=True)
class Claims:
    subject: str
    issuer: str
    expires: datetime


def verify(token: str, config: MonitorApiKeyConfiguration) -> Claims:
    """Accept the token only as dotnet-monitor would; anything else raises ``ApiKeyError``."""
    import jwt

    jwk = config.jwk()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ApiKeyError("malformed token") from exc
    allowed = ALGORITHMS[jwk["kty"]]
    if header.get("alg") not in allowed:  # none, HS*, or a family that does not match the key
        raise ApiKeyError(f"algorithm {header.get('alg')!r} is not accepted for this key")
    try:
        key = jwt.PyJWK(jwk, algorithm=header["alg"]).key
    except jwt.PyJWTError as exc:
        raise ApiKeyConfigurationError(f"PublicKey cannot be used: {exc}") from exc
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(allowed),
            audience=AUDIENCE,
            issuer=config.issuer,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "aud", "iss", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ApiKeyError("token expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise ApiKeyError("wrong audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise ApiKeyError("wrong issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise ApiKeyError(f"missing claim {exc.claim}") from exc
    except jwt.InvalidSignatureError as exc:
        raise ApiKeyError("signature does not match the configured key") from exc
    except jwt.PyJWTError as exc:
        raise ApiKeyError(f"invalid token: {type(exc).__name__}") from exc
    if claims.get("sub") != config.subject:
        raise ApiKeyError("wrong subject")
    return Claims(claims["sub"], claims["iss"], datetime.fromtimestamp(claims["exp"], UTC))


@dataclass(frozen=True)
class GeneratedKey:
    token: str
    subject: str
    public_key: str
    issuer: str = DEFAULT_ISSUER

    def render(self, output: str = "Text") -> str:
        """The token and the configuration that accepts it, like ``dotnet monitor generatekey``."""
        header = f"Authorization: Bearer {self.token}"
        kind = output.lower()
        if kind == "json":
            settings = {
                "Authentication": {"MonitorApiKey": {"Subject": self.subject, "PublicKey": self.public_key}}
            }
            return f"{header}\n\nSettings in Json format:\n{json.dumps(settings, indent=2)}"
        if kind == "machinejson":
            return json.dumps(
                {"AuthorizationHeader": f"Bearer {self.token}",
                 "Authentication": {"MonitorApiKey": {"Subject": self.subject, "PublicKey": self.public_key}}}
            )  # fmt: skip
        if kind == "shell":
            return (
                f"{header}\n\nSettings in Shell format:\n"
                f'export {_PREFIX}Subject="{self.subject}"\n'
                f'export {_PREFIX}PublicKey="{self.public_key}"'
            )
        if kind == "text":
            settings_text = f"Subject: {self.subject}\nPublic Key: {self.public_key}"
            return f"{header}\n\nSettings in Text format:\n{settings_text}"
        raise ValueError(f"unknown output format {output!r} (Json, MachineJson, Shell, Text)")


def generate_key(subject: str | None = None, expiry: timedelta = timedelta(days=7)) -> GeneratedKey:
    """A new P-384 key and an ES384 token for it, as dotnet-monitor's generatekey makes them."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP384R1())
    numbers = private.public_key().public_numbers()
    size = 48  # P-384 coordinates
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "x": _b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": _b64url_encode(numbers.y.to_bytes(size, "big")),
    }
    subject = subject or str(uuid.uuid4())
    expires = datetime.now(UTC) + expiry
    token = jwt.encode(
        {"aud": AUDIENCE, "iss": DEFAULT_ISSUER, "sub": subject, "exp": int(expires.timestamp())},
        private,
        algorithm="ES384",
        headers={"typ": "JWT"},
    )
    public_key = _b64url_encode(json.dumps(jwk, separators=(",", ":")).encode())
    return GeneratedKey(token, subject, public_key)
