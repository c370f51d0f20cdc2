"""MonitorApiKey verification and the REQUEST authorizer: every way a token can be wrong → 401."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dnmon_api import authorizer
from dnmon_core.apikey import (
    AUDIENCE,
    DEFAULT_ISSUER,
    ApiKeyConfigurationError,
    ApiKeyError,
    MonitorApiKeyConfiguration,
    generate_key,
    verify,
)

ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123/v1/POST/trace"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_jwk(private: Any) -> dict[str, Any]:
    return json.loads(jwt.algorithms.get_default_algorithms()[
        "ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS256"
    ].to_jwk(private.public_key()))  # fmt: skip


def _config(private: Any, subject: str = "sub-1", issuer: str = DEFAULT_ISSUER) -> MonitorApiKeyConfiguration:
    return MonitorApiKeyConfiguration(subject, _b64(json.dumps(_public_jwk(private)).encode()), issuer)


def _token(private: Any, alg: str, **overrides: Any) -> str:
    claims = {"aud": AUDIENCE, "iss": DEFAULT_ISSUER, "sub": "sub-1", "exp": int(time.time()) + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, private, algorithm=alg, headers={"typ": "JWT"})


EC_KEYS = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}


@pytest.mark.parametrize("alg", sorted(EC_KEYS))
def test_ec_keys_of_each_size(alg: str) -> None:
    private = ec.generate_private_key(EC_KEYS[alg])
    assert verify(_token(private, alg), _config(private)).subject == "sub-1"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_rsa_keys(alg: str) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert verify(_token(private, alg), _config(private)).subject == "sub-1"


@pytest.fixture(scope="module")
def key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "missing claim exp"),
        ({"aud": "https://example.com"}, "wrong audience"),
        ({"aud": None}, "missing claim aud"),
        ({"iss": "https://evil"}, "wrong issuer"),
        ({"sub": "someone-else"}, "wrong subject"),
        ({"sub": None}, "missing claim sub"),
    ],
)
def test_claims_are_checked(key: Any, overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ApiKeyError, match=reason):
        verify(_token(key, "ES384", **overrides), _config(key))


def test_clock_skew_of_five_minutes_is_tolerated(key: Any) -> None:
    assert verify(_token(key, "ES384", exp=int(time.time()) - 120), _config(key))


def test_wrong_key_and_garbage(key: Any) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ApiKeyError, match="signature"):
        verify(_token(other, "ES384"), _config(key))
    for garbage in ("", "abc", "a.b.c", "Bearer x"):
        with pytest.raises(ApiKeyError):
            verify(garbage, _config(key))


def test_alg_none_is_refused(key: Any) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {"aud": AUDIENCE, "iss": DEFAULT_ISSUER, "sub": "sub-1", "exp": int(time.time()) + 600}
    token = f"{header}.{_b64(json.dumps(claims).encode())}."
    with pytest.raises(ApiKeyError, match="'none' is not accepted"):
        verify(token, _config(key))


def test_hmac_with_the_public_key_as_secret_is_refused(key: Any) -> None:
    """Algorithm confusion: an attacker signs HS256 with the (public) key text."""
    config = _config(key)
    secret = config.public_key.encode()
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(
        json.dumps({"aud": AUDIENCE, "iss": DEFAULT_ISSUER, "sub": "sub-1", "exp": 4102444800}).encode()
    )
    import hashlib
    import hmac

    signature = _b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(ApiKeyError, match="'HS256' is not accepted"):
        verify(f"{header}.{body}.{signature}", config)


def test_rsa_token_against_an_ec_key_is_refused(key: Any) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ApiKeyError, match="'RS256' is not accepted"):
        verify(_token(rsa_key, "RS256"), _config(key))


def test_configured_key_must_be_public_only(key: Any) -> None:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))  # includes "d"
    config = MonitorApiKeyConfiguration("sub-1", _b64(json.dumps(jwk).encode()))
    with pytest.raises(ApiKeyConfigurationError, match="private key material"):
        verify(_token(key, "ES384"), config)
    with pytest.raises(ApiKeyConfigurationError, match="base64url"):
        verify(_token(key, "ES384"), MonitorApiKeyConfiguration("s", "%%%"))


def test_custom_issuer(key: Any) -> None:
    config = _config(key, issuer="https://my-issuer")
    assert verify(_token(key, "ES384", iss="https://my-issuer"), config)
    with pytest.raises(ApiKeyError, match="issuer"):
        verify(_token(key, "ES384"), config)


def test_generated_key_round_trip_and_renderings() -> None:
    generated = generate_key(subject="ops")
    header = jwt.get_unverified_header(generated.token)
    assert header == {"alg": "ES384", "typ": "JWT"}
    jwk = json.loads(base64.urlsafe_b64decode(generated.public_key + "=" * (-len(generated.public_key) % 4)))
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and "d" not in jwk
    claims = verify(generated.token, MonitorApiKeyConfiguration("ops", generated.public_key))
    assert 6.9 * 86400 < claims.expires.timestamp() - time.time() <= 7 * 86400
    shell = generated.render("Shell")
    assert 'export Authentication__MonitorApiKey__Subject="ops"' in shell
    assert json.loads(generated.render("MachineJson"))["Authentication"]["MonitorApiKey"]["Subject"] == "ops"
    assert generated.render("Text").startswith(f"Authorization: Bearer {generated.token}")
    with pytest.raises(ValueError):
        generated.render("Xml")


def test_from_env_reads_dotnet_monitor_names() -> None:
    env = {"Authentication__MonitorApiKey__Subject": "s", "Authentication__MonitorApiKey__PublicKey": "pk"}
    config = MonitorApiKeyConfiguration.from_env(env)
    assert config == MonitorApiKeyConfiguration("s", "pk", DEFAULT_ISSUER)
    assert MonitorApiKeyConfiguration.from_env({}) is None
    with pytest.raises(ApiKeyConfigurationError):
        MonitorApiKeyConfiguration.from_env({"Authentication__MonitorApiKey__Subject": "s"})


# --- the authorizer ----------------------------------------------------------------------------


def _event(token: str | None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return {"type": "REQUEST", "methodArn": ARN, "headers": headers, "multiValueHeaders": {}}


class Context:
    function_name = "authorizer"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:authorizer"
    aws_request_id = "r"


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Any:
    generated = generate_key(subject="ops")
    monkeypatch.setenv("Authentication__MonitorApiKey__Subject", "ops")
    monkeypatch.setenv("Authentication__MonitorApiKey__PublicKey", generated.public_key)
    monkeypatch.delenv("DNMON_AUTH_DISABLED", raising=False)
    return generated


def test_authorizer_allows_the_whole_api(configured: Any) -> None:
    policy = authorizer.handler(_event(configured.token), Context())  # type: ignore[arg-type]
    statement = policy["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == "arn:aws:execute-api:us-east-1:123456789012:abc123/v1/*/*"
    assert policy["principalId"] == "ops" and policy["context"] == {"subject": "ops"}


@pytest.mark.parametrize("token", [None, "garbage", "a.b.c"])
def test_authorizer_unauthorized(configured: Any, token: str | None) -> None:
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer.handler(_event(token), Context())  # type: ignore[arg-type]


def test_authorizer_with_no_key_configured_refuses_all(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("Subject", "PublicKey", "Issuer"):
        monkeypatch.delenv(f"Authentication__MonitorApiKey__{name}", raising=False)
    monkeypatch.delenv("DNMON_AUTH_DISABLED", raising=False)
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer.handler(_event(generate_key().token), Context())  # type: ignore[arg-type]


def test_authorizer_disabled_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNMON_AUTH_DISABLED", "1")
    policy = authorizer.handler(_event(None), Context())  # type: ignore[arg-type]
    assert policy["principalId"] == "anonymous"
