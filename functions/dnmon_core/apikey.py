"""MonitorApiKey: dotnet-monitor's Bearer JWTs, verified and generated the way dotnet-monitor does it.

An existing dotnet-monitor key has to work unchanged, so the rules below follow dotnet-monitor
(``Auth/ApiKey/*`` in dotnet/dotnet-monitor) and the Microsoft.IdentityModel defaults it relies on:

- configuration: ``Authentication__MonitorApiKey__{Subject,PublicKey,Issuer}`` (names are
  case-insensitive, ``:`` works as separator, ``DotnetMonitor_``-prefixed names win); the public key
  is a JWK serialized as JSON and base64url-encoded. dotnet-monitor's own ``generatekey`` writes the
  JWK with .NET property names (``"Kty"``, ``"Crv"``, ``"X"``, ... plus computed noise such as
  ``"KeySize"``), which IdentityModel reads case-insensitively — so do we;
- header ``alg``: ES256/384/512 or RS256/384/512 (and IdentityModel's XML-DSig names for the same
  six), from the family of the configured key; ``typ`` and ``kid`` are not checked;
- claims: ``exp`` required (a number, or a numeric string as dotnet-monitor's generatekey writes it),
  ``nbf`` honoured when present, 5 minutes of clock skew both ways; ``aud`` must contain
  ``https://github.com/dotnet/dotnet-monitor`` (a trailing ``/`` is tolerated); ``iss`` must equal
  the configured issuer exactly; ``sub`` must equal the configured subject exactly.

Stricter than dotnet-monitor: a JWK carrying private key material is refused (dotnet-monitor only
warns), because the key sits in plain Lambda configuration.

The signature is checked with ``cryptography`` directly: only the two asymmetric families exist in
this code path, so ``none`` and HMAC cannot be reached by any header. ``cryptography`` is imported
inside the functions: the agent imports this package too and needs it only for ``generatekey``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

AUDIENCE = "https://github.com/dotnet/dotnet-monitor"
DEFAULT_ISSUER = "https://github.com/dotnet/dotnet-monitor/generatekey+MonitorApiKey"
CLOCK_SKEW = timedelta(minutes=5)  # TokenValidationParameters.DefaultClockSkew
DEFAULT_EXPIRY = timedelta(days=7)  # AuthConstants.ApiKeyJwtDefaultExpiration
MAX_TOKEN_LENGTH = 250 * 1024  # TokenValidationParameters.DefaultMaximumTokenSizeInBytes
MIN_RSA_BITS = 1024  # IdentityModel's minimum RSA size for verifying
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512")
OUTPUT_FORMATS = ("Text", "Json", "Shell", "Cmd", "PowerShell", "MachineJson")

_XMLDSIG = "http://www.w3.org/2001/04/xmldsig-more#"
# alg → (kty it needs, hash). The XML-DSig names are how .NET code may label the same algorithms,
# and dotnet-monitor's ValidAlgorithms lists them; nothing else is reachable.
_ALGORITHMS: dict[str, tuple[str, str]] = {
    **{f"ES{bits}": ("EC", f"SHA{bits}") for bits in (256, 384, 512)},
    **{f"RS{bits}": ("RSA", f"SHA{bits}") for bits in (256, 384, 512)},
    **{f"{_XMLDSIG}ecdsa-sha{bits}": ("EC", f"SHA{bits}") for bits in (256, 384, 512)},
    **{f"{_XMLDSIG}rsa-sha{bits}": ("RSA", f"SHA{bits}") for bits in (256, 384, 512)},
}
_CURVE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # MonitorApiKeyOptions.PublicKey's own pattern
_SETTING_PREFIXES = ("dotnetmonitor_", "")  # dotnet-monitor adds the prefixed source last: it wins
_SETTING = "Authentication__MonitorApiKey__"


class ApiKeyError(Exception):
    """A token was refused; ``reason`` is safe to log (it never quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiKeyConfigurationError(ApiKeyError):
    """The configured key is unusable, so every token is refused until it is fixed."""


def _b64url_decode(text: str) -> bytes:
    """Strict base64url without padding: a lenient decoder would skip stray characters silently."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # a length of 4n+1 characters
        raise ValueError("not base64url") from exc


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _shown(value: object) -> str:
    """A header value fit for a log line: short, so a pasted token cannot ride along in full."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


# --- the configured key ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _PublicKey:
    kty: str
    key: EllipticCurvePublicKey | RSAPublicKey


@lru_cache(maxsize=8)
def _load_public_key(encoded: str) -> _PublicKey:
    """Cached: every authorizer call reads the configuration, but the key changes only on deploy."""
    try:
        document = json.loads(_b64url_decode(encoded))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiKeyConfigurationError(
            "PublicKey must be a JSON Web Key, serialized as JSON and base64url-encoded (no padding)"
        ) from exc
    if not isinstance(document, dict):
        raise ApiKeyConfigurationError("PublicKey must encode a JSON object (a JSON Web Key)")
    members = {str(name).lower(): value for name, value in document.items()}
    private = [name for name in _PRIVATE_MEMBERS if members.get(name) not in (None, "", [])]
    if private:
        raise ApiKeyConfigurationError(
            f"PublicKey carries private key material ({', '.join(private)}): configure only the public key"
        )
    kty = members.get("kty")
    if kty == "EC":
        return _PublicKey("EC", _ec_key(members))
    if kty == "RSA":
        return _PublicKey("RSA", _rsa_key(members))
    raise ApiKeyConfigurationError(f"PublicKey must be an EC or RSA key; its kty is {_shown(kty)}")


def _key_number(members: Mapping[str, Any], name: str, kty: str) -> bytes:
    value = members.get(name)
    try:
        if isinstance(value, str) and value:
            return _b64url_decode(value)
    except ValueError:
        pass
    raise ApiKeyConfigurationError(f"an {kty} PublicKey needs '{name}' as a base64url string")


def _ec_key(members: Mapping[str, Any]) -> EllipticCurvePublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    crv = members.get("crv")
    if crv not in _CURVE_BYTES:
        raise ApiKeyConfigurationError(f"an EC PublicKey needs crv P-256, P-384 or P-521, not {_shown(crv)}")
    x, y = _key_number(members, "x", "EC"), _key_number(members, "y", "EC")
    if len(x) != _CURVE_BYTES[crv] or len(y) != _CURVE_BYTES[crv]:
        raise ApiKeyConfigurationError(f"the x and y of a {crv} PublicKey are {_CURVE_BYTES[crv]} bytes each")
    curves: dict[str, ec.EllipticCurve] = {
        "P-256": ec.SECP256R1(),
        "P-384": ec.SECP384R1(),
        "P-521": ec.SECP521R1(),
    }
    curve = curves[crv]
    try:
        numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
        return numbers.public_key()
    except ValueError as exc:
        raise ApiKeyConfigurationError(f"the EC PublicKey is not a point on {crv}") from exc


def _rsa_key(members: Mapping[str, Any]) -> RSAPublicKey:
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = int.from_bytes(_key_number(members, "n", "RSA"), "big")
    e = int.from_bytes(_key_number(members, "e", "RSA"), "big")
    if n.bit_length() < MIN_RSA_BITS:
        raise ApiKeyConfigurationError(f"the RSA PublicKey must have at least {MIN_RSA_BITS} bits")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ApiKeyConfigurationError("the RSA PublicKey's n and e do not form a valid key") from exc


@dataclass(frozen=True)
class MonitorApiKeyConfiguration:
    """What dotnet-monitor's MonitorApiKey settings hold; constructing one validates the key."""

    subject: str
    public_key: str  # the base64url-encoded JWK, as configured
    issuer: str = DEFAULT_ISSUER
    _key: _PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.subject.strip():
            raise ApiKeyConfigurationError("Subject must not be empty")
        if not self.issuer:  # dotnet-monitor: an empty Issuer means the generatekey issuer
            object.__setattr__(self, "issuer", DEFAULT_ISSUER)
        object.__setattr__(self, "_key", _load_public_key(self.public_key))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitorApiKeyConfiguration | None:
        """None when neither Subject nor PublicKey is set: no key configured, so nothing is accepted."""
        folded = {name.lower(): value for name, value in (os.environ if environ is None else environ).items()}

        def setting(name: str) -> str | None:
            for prefix in _SETTING_PREFIXES:
                for separator in ("__", ":"):
                    key = f"{prefix}authentication{separator}monitorapikey{separator}{name}"
                    if folded.get(key):
                        return folded[key]
            return None

        subject, public_key = setting("subject"), setting("publickey")
        if subject is None and public_key is None:
            return None
        if subject is None or public_key is None:
            missing = f"{_SETTING}{'Subject' if subject is None else 'PublicKey'}"
            raise ApiKeyConfigurationError(
                f"{missing} is not set: a MonitorApiKey needs Subject and PublicKey"
            )
        return cls(subject, public_key, setting("issuer") or DEFAULT_ISSUER)

    @property
    def key_type(self) -> str:
        return self._key.kty


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    subject: str
    issuer: str
    expires: datetime


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64url_decode(part))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"malformed token: the {what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise ApiKeyError(f"malformed token: the {what} is not a JSON object")
    return value


def _seconds(value: object) -> int | None:
    """A NumericDate as IdentityModel reads it: a number, or a string holding one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    return None


def _hash(name: str) -> HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    algorithms: dict[str, HashAlgorithm] = {
        "SHA256": hashes.SHA256(),
        "SHA384": hashes.SHA384(),
        "SHA512": hashes.SHA512(),
    }
    return algorithms[name]


def _signature_matches(key: _PublicKey, hash_name: str, signed: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    try:
        if isinstance(key.key, ec.EllipticCurvePublicKey):
            size = (key.key.curve.key_size + 7) // 8  # JWS carries r and s side by side, each this long
            if len(signature) != 2 * size:
                return False
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.key.verify(utils.encode_dss_signature(r, s), signed, ec.ECDSA(_hash(hash_name)))
        else:
            key.key.verify(signature, signed, padding.PKCS1v15(), _hash(hash_name))
    except InvalidSignature:
        return False
    return True


def _audiences_match(token_audience: str) -> bool:
    """Microsoft.IdentityModel's rule: exact, or differing only by one trailing slash."""
    if token_audience == AUDIENCE:
        return True
    return token_audience.endswith("/") and token_audience[:-1] == AUDIENCE


def verify(token: str, config: MonitorApiKeyConfiguration, *, now: datetime | None = None) -> Claims:
    """Accept the token only as dotnet-monitor would; anything else raises ``ApiKeyError``."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise ApiKeyError(f"malformed token: longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise ApiKeyError("malformed token: a signed JWT has three dot-separated parts")
    header, claims = _json_object(parts[0], "header"), _json_object(parts[1], "payload")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        raise ApiKeyError(f"algorithm {_shown(alg)} is not accepted (ES256/384/512 or RS256/384/512 only)")
    kty, hash_name = _ALGORITHMS[alg]
    if kty != config.key_type:
        raise ApiKeyError(f"algorithm {alg} does not fit the configured {config.key_type} key")
    try:
        signature = _b64url_decode(parts[2])
    except ValueError:
        raise ApiKeyError("malformed token: the signature is not base64url") from None
    if not _signature_matches(config._key, hash_name, f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise ApiKeyError("the signature is not by the configured key")
    return _check_claims(claims, config, now or datetime.now(UTC))


def _check_claims(claims: Mapping[str, Any], config: MonitorApiKeyConfiguration, now: datetime) -> Claims:
    if "exp" not in claims:
        raise ApiKeyError("the token has no exp (expiry) claim")
    expires, not_before = _seconds(claims["exp"]), _seconds(claims.get("nbf"))
    if expires is None:
        raise ApiKeyError("the token's exp claim is not a number of seconds")
    if "nbf" in claims and not_before is None:
        raise ApiKeyError("the token's nbf claim is not a number of seconds")
    instant = now.timestamp()
    if not_before is not None and not_before > expires:
        raise ApiKeyError("the token's nbf is after its exp")
    if not_before is not None and not_before > instant + CLOCK_SKEW.total_seconds():
        raise ApiKeyError("the token is not valid yet (nbf)")
    if expires < instant - CLOCK_SKEW.total_seconds():
        raise ApiKeyError("the token expired")

    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    audiences = [a for a in audiences if isinstance(a, str) and a]
    if not audiences:
        raise ApiKeyError("the token has no aud (audience) claim")
    if not any(_audiences_match(a) for a in audiences):
        raise ApiKeyError(f"the token's audience is not {AUDIENCE}")

    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer.strip():
        raise ApiKeyError("the token has no iss (issuer) claim")
    if issuer != config.issuer:
        raise ApiKeyError("the token's issuer is not the configured issuer")

    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ApiKeyError("the token has no sub (subject) claim")
    if subject != config.subject:
        raise ApiKeyError("the token's subject is not the configured subject")
    return Claims(subject, issuer, datetime.fromtimestamp(expires, UTC))


# --- generatekey ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    token: str
    subject: str
    public_key: str  # base64url-encoded public JWK
    issuer: str = DEFAULT_ISSUER
    expires: datetime | None = None

    def settings(self) -> dict[str, str]:
        """The environment variables (dotnet-monitor's names) that make dnmon accept ``token``."""
        values = {f"{_SETTING}Subject": self.subject, f"{_SETTING}PublicKey": self.public_key}
        if self.issuer != DEFAULT_ISSUER:
            values[f"{_SETTING}Issuer"] = self.issuer
        return values

    def render(self, output: str = "Text") -> str:
        """The token and its configuration in one of ``OUTPUT_FORMATS`` (case-insensitive)."""
        kind = {name.lower(): name for name in OUTPUT_FORMATS}.get(output.lower())
        if kind is None:
            raise ValueError(f"unknown output format {output!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
        section = {name.removeprefix(_SETTING): value for name, value in self.settings().items()}
        if kind == "MachineJson":  # one JSON document and nothing else, shaped like dotnet-monitor's
            machine = {
                "Authentication": {"MonitorApiKey": section},
                "AuthorizationHeader": f"Bearer {self.token}",
            }
            return json.dumps(machine, indent=2)
        if kind == "Json":
            body = json.dumps({"Authentication": {"MonitorApiKey": section}}, indent=2)
        elif kind == "Text":
            body = "\n".join(
                f"{'Public Key' if name == 'PublicKey' else name}: {v}" for name, v in section.items()
            )
        else:
            body = "\n".join(_assignment(kind, name, value) for name, value in self.settings().items())
        expiry = f" It expires {self.expires:%Y-%m-%d %H:%M:%S} UTC." if self.expires else ""
        return (
            f"A new MonitorApiKey; send this header with every request.{expiry}\n\n"
            f"Authorization: Bearer {self.token}\n\n"
            f"Configuration that accepts it ({kind}):\n{body}"
        )


def _assignment(shell: str, name: str, value: str) -> str:
    if shell == "Shell":
        return f"export {name}={shlex.quote(value)}"
    if shell == "Cmd":
        return f'set "{name}={value}"'
    return "$env:{}='{}'".format(name, value.replace("'", "''"))  # PowerShell


def generate_key(subject: str | None = None, expiry: timedelta = DEFAULT_EXPIRY) -> GeneratedKey:
    """A P-384 key and an ES384 token for it, as ``dotnet monitor generatekey`` makes them.

    The JWK uses the standard lowercase member names, which dotnet-monitor reads as well, so the
    printed configuration also works in a real dotnet-monitor.
    """
    if expiry <= timedelta(0):
        raise ValueError("the key's expiry must be positive")
    if subject is not None and not subject.strip():
        raise ValueError("the subject must not be empty")
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils
    except ImportError as exc:  # the agent's minimal install
        raise ImportError(
            "making a key needs the 'cryptography' package (pip install 'dnmon[functions]')"
        ) from exc

    private = ec.generate_private_key(ec.SECP384R1())
    size = _CURVE_BYTES["P-384"]
    point = private.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "x": _b64url_encode(point.x.to_bytes(size, "big")),
        "y": _b64url_encode(point.y.to_bytes(size, "big")),
    }
    subject = subject or str(uuid.uuid4())  # dotnet-monitor: Guid.NewGuid().ToString("D")
    expires = (datetime.now(UTC) + expiry).replace(microsecond=0)
    claims = {"aud": AUDIENCE, "exp": int(expires.timestamp()), "iss": DEFAULT_ISSUER, "sub": subject}

    def encoded(value: Mapping[str, Any]) -> str:
        return _b64url_encode(json.dumps(value, separators=(",", ":")).encode())

    signed = f"{encoded({'alg': 'ES384', 'typ': 'JWT'})}.{encoded(claims)}"
    r, s = utils.decode_dss_signature(private.sign(signed.encode("ascii"), ec.ECDSA(hashes.SHA384())))
    token = f"{signed}.{_b64url_encode(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"
    return GeneratedKey(token, subject, encoded(jwk), DEFAULT_ISSUER, expires)
