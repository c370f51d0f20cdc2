"""MonitorApiKey verification and generation, checked against an independent JWT library (PyJWT).

Tokens are minted with PyJWT (or by hand where PyJWT refuses to make what dotnet-monitor accepts or
what an attacker would send), so these tests do not merely agree with our own encoder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from dnmon_core.apikey import (
    ALGORITHMS,
    AUDIENCE,
    DEFAULT_ISSUER,
    ApiKeyConfigurationError,
    ApiKeyError,
    GeneratedKey,
    MonitorApiKeyConfiguration,
    generate_key,
    verify,
)

SUBJECT = "ae5473b6-8dad-498d-b915-53b9c684000e"
CURVES = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def encoded_jwk(jwk: dict[str, Any]) -> str:
    return b64(json.dumps(jwk, separators=(",", ":")))


def public_jwk(private: Any) -> dict[str, Any]:
    """The public JWK as PyJWT writes it (standard lowercase members)."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))


def config_for(
    private: Any, subject: str = SUBJECT, issuer: str = DEFAULT_ISSUER
) -> MonitorApiKeyConfiguration:
    return MonitorApiKeyConfiguration(subject, encoded_jwk(public_jwk(private)), issuer)


def claims(**overrides: Any) -> dict[str, Any]:
    """dotnet-monitor's four claims; an override of None drops the claim."""
    values: dict[str, Any] = {
        "aud": AUDIENCE,
        "exp": int(time.time()) + 600,
        "iss": DEFAULT_ISSUER,
        "sub": SUBJECT,
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def pyjwt_token(private: Any, alg: str, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), private, algorithm=alg, headers={"typ": "JWT"})


def raw_token(private: Any, header: dict[str, Any], payload: dict[str, Any], hash_bits: str) -> str:
    """Signed by hand, for tokens PyJWT will not make (mismatched curves, .NET's alg names, ...)."""
    signed = (
        f"{b64(json.dumps(header, separators=(',', ':')))}.{b64(json.dumps(payload, separators=(',', ':')))}"
    )
    digest = HASHES[hash_bits]
    if isinstance(private, ec.EllipticCurvePrivateKey):
        size = (private.curve.key_size + 7) // 8
        r, s = utils.decode_dss_signature(private.sign(signed.encode(), ec.ECDSA(digest)))
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        signature = private.sign(signed.encode(), padding.PKCS1v15(), digest)
    return f"{signed}.{b64(signature)}"


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}.{b64(signature)}"


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {alg: ec.generate_private_key(curve) for alg, curve in CURVES.items()}


@pytest.fixture(scope="module")
def rsa_keys() -> dict[int, rsa.RSAPrivateKey]:
    return {
        bits: rsa.generate_private_key(public_exponent=65537, key_size=bits)
        for bits in (1024, 2048, 3072, 4096)
    }


@pytest.fixture(scope="module")
def key(ec_keys: dict[str, ec.EllipticCurvePrivateKey]) -> ec.EllipticCurvePrivateKey:
    return ec_keys["ES384"]


# --- accepted ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ec_keys_of_each_curve(ec_keys: dict[str, Any], alg: str) -> None:
    private = ec_keys[alg]
    verified = verify(pyjwt_token(private, alg), config_for(private))
    assert verified.subject == SUBJECT and verified.issuer == DEFAULT_ISSUER


@pytest.mark.parametrize(
    ("alg", "bits"), [("RS256", 1024), ("RS256", 2048), ("RS384", 3072), ("RS512", 4096)]
)
def test_rsa_keys_of_each_size(rsa_keys: dict[int, Any], alg: str, bits: int) -> None:
    private = rsa_keys[bits]
    assert verify(pyjwt_token(private, alg), config_for(private)).subject == SUBJECT


def test_a_token_made_the_way_dotnet_monitor_makes_it(key: Any) -> None:
    """generatekey's exact shape: .NET-cased JWK with computed members, exp as a string, ES384."""
    point = key.public_key().public_numbers()
    jwk = {  # JsonSerializer.Serialize(JsonWebKey) with nulls ignored, as in its api-key-format.md
        "AdditionalData": {},
        "Crv": "P-384",
        "KeyOps": [],
        "Kty": "EC",
        "X": b64(point.x.to_bytes(48, "big")),
        "X5c": [],
        "Y": b64(point.y.to_bytes(48, "big")),
        "KeySize": 384,
        "HasPrivateKey": False,
        "CryptoProviderFactory": {
            "CryptoProviderCache": {},
            "CacheSignatureProviders": True,
            "SignatureProviderObjectPoolCacheSize": 32,
        },
    }
    expires = int(time.time()) + 7 * 86400
    # new Claim("exp", seconds.ToString()) is a string claim, and JwtPayload writes it as one.
    token = jwt.encode(
        {"aud": AUDIENCE, "exp": str(expires), "iss": DEFAULT_ISSUER, "sub": SUBJECT},
        key,
        algorithm="ES384",
        headers={"typ": "JWT"},
    )
    assert jwt.get_unverified_header(token) == {"alg": "ES384", "typ": "JWT"}
    config = MonitorApiKeyConfiguration(SUBJECT, b64(json.dumps(jwk, separators=(",", ":"))))
    verified = verify(token, config)
    assert verified.subject == SUBJECT and verified.expires == datetime.fromtimestamp(expires, UTC)


def test_dotnet_cased_rsa_jwk(rsa_keys: dict[int, Any]) -> None:
    private = rsa_keys[2048]
    numbers = private.public_key().public_numbers()
    jwk = {"E": b64(numbers.e.to_bytes(3, "big")), "Kty": "RSA", "N": b64(numbers.n.to_bytes(256, "big"))}
    config = MonitorApiKeyConfiguration(SUBJECT, encoded_jwk({**jwk, "KeyOps": [], "Oth": [], "X5c": []}))
    assert verify(pyjwt_token(private, "RS256"), config).subject == SUBJECT


def test_dotnet_algorithm_names_are_the_same_algorithms(key: Any, rsa_keys: dict[int, Any]) -> None:
    """dotnet-monitor's ValidAlgorithms also lists SecurityAlgorithms.EcdsaSha384Signature etc."""
    xml = "http://www.w3.org/2001/04/xmldsig-more#"
    token = raw_token(key, {"alg": f"{xml}ecdsa-sha384", "typ": "JWT"}, claims(), "384")
    assert verify(token, config_for(key)).subject == SUBJECT
    private = rsa_keys[2048]
    token = raw_token(private, {"alg": f"{xml}rsa-sha512", "typ": "JWT"}, claims(), "512")
    assert verify(token, config_for(private)).subject == SUBJECT


def test_ecdsa_hash_and_curve_are_independent_as_in_identitymodel(ec_keys: dict[str, Any]) -> None:
    """IdentityModel takes the curve from the key and the hash from alg; PyJWT would refuse this pair."""
    private = ec_keys["ES384"]
    token = raw_token(private, {"alg": "ES256", "typ": "JWT"}, claims(), "256")
    assert verify(token, config_for(private)).subject == SUBJECT


def test_typ_and_kid_are_not_checked(key: Any) -> None:
    token = raw_token(key, {"alg": "ES384", "kid": "whatever"}, claims(), "384")
    assert verify(token, config_for(key))


@pytest.mark.parametrize(
    "audience",
    [AUDIENCE, f"{AUDIENCE}/", ["https://elsewhere", AUDIENCE]],
    ids=["exact", "trailing-slash", "one-of-several"],
)
def test_audience_forms_identitymodel_accepts(key: Any, audience: Any) -> None:
    assert verify(pyjwt_token(key, "ES384", aud=audience), config_for(key))


def test_numeric_date_forms(key: Any) -> None:
    soon = time.time() + 600
    for exp in (int(soon), soon, str(int(soon)), f"{soon:.3f}"):
        assert verify(raw_token(key, {"alg": "ES384"}, claims(exp=exp), "384"), config_for(key))


def test_clock_skew_is_five_minutes_both_ways(key: Any) -> None:
    config, now = config_for(key), datetime(2030, 1, 1, tzinfo=UTC)
    instant = int(now.timestamp())
    assert verify(pyjwt_token(key, "ES384", exp=instant - 300), config, now=now)
    with pytest.raises(ApiKeyError, match="expired"):
        verify(pyjwt_token(key, "ES384", exp=instant - 301), config, now=now)
    assert verify(pyjwt_token(key, "ES384", nbf=instant + 300, exp=instant + 900), config, now=now)
    with pytest.raises(ApiKeyError, match="not valid yet"):
        verify(pyjwt_token(key, "ES384", nbf=instant + 301, exp=instant + 900), config, now=now)


def test_custom_issuer(key: Any) -> None:
    config = config_for(key, issuer="MyOtherServiceMintingTokens")
    assert verify(pyjwt_token(key, "ES384", iss="MyOtherServiceMintingTokens"), config)
    with pytest.raises(ApiKeyError, match="issuer"):
        verify(pyjwt_token(key, "ES384"), config)


# --- refused ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 86400}, "expired"),
        ({"exp": None}, "no exp"),
        ({"exp": "tomorrow"}, "exp claim is not a number"),
        ({"exp": True}, "exp claim is not a number"),
        ({"nbf": int(time.time()) + 86400, "exp": int(time.time()) + 2 * 86400}, "not valid yet"),
        # both given: the default exp is computed when the test runs, maybe long after collection
        ({"nbf": int(time.time()) + 1200, "exp": int(time.time()) + 600}, "nbf is after its exp"),
        ({"aud": "SomeOtherAudience"}, "audience is not"),
        ({"aud": f"{AUDIENCE}//"}, "audience is not"),
        ({"aud": AUDIENCE.upper()}, "audience is not"),
        ({"aud": None}, "no aud"),
        ({"aud": []}, "no aud"),
        ({"iss": "MyOtherServiceMintingTokens"}, "issuer is not"),
        ({"iss": DEFAULT_ISSUER + "/"}, "issuer is not"),
        ({"iss": None}, "no iss"),
        ({"iss": " "}, "no iss"),
        ({"sub": "10253b7a-454d-41bb-a3f5-5f2e6b26ed93"}, "subject is not"),
        ({"sub": SUBJECT.upper()}, "subject is not"),
        ({"sub": ""}, "no sub"),
        ({"sub": None}, "no sub"),
        ({"sub": [SUBJECT]}, "no sub"),
    ],
)
def test_claims_are_checked(key: Any, overrides: dict[str, Any], reason: str) -> None:
    token = raw_token(key, {"alg": "ES384", "typ": "JWT"}, claims(**overrides), "384")
    with pytest.raises(ApiKeyError, match=reason):
        verify(token, config_for(key))


def test_alg_none_is_refused(key: Any) -> None:
    for alg in ("none", "None", "NONE", ""):
        with pytest.raises(ApiKeyError, match="is not accepted"):
            verify(unsigned({"alg": alg, "typ": "JWT"}, claims()), config_for(key))
    with pytest.raises(ApiKeyError, match="None is not accepted"):
        verify(unsigned({"typ": "JWT"}, claims()), config_for(key))
    with pytest.raises(ApiKeyError, match="is not accepted"):
        verify(unsigned({"alg": ["ES384"]}, claims()), config_for(key))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(key: Any, rsa_keys: dict[int, Any], alg: str) -> None:
    """Algorithm confusion: the public key is no secret, so HMAC over it proves nothing."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for private in (key, rsa_keys[2048]):
        config = config_for(private)
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        secrets = [config.public_key.encode(), base64.urlsafe_b64decode(config.public_key + "=="), pem]
        for secret in secrets:
            signed = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}))}.{b64(json.dumps(claims()))}"
            signature = hmac.new(secret, signed.encode(), digest).digest()
            with pytest.raises(ApiKeyError, match=f"'{alg}' is not accepted"):
                verify(f"{signed}.{b64(signature)}", config)


@pytest.mark.parametrize("alg", ["PS256", "EdDSA", "ES256K", "RS1", "es384"])
def test_other_algorithms_are_refused(key: Any, alg: str) -> None:
    with pytest.raises(ApiKeyError, match="is not accepted"):
        verify(unsigned({"alg": alg}, claims(), b"x" * 96), config_for(key))


def test_algorithm_family_must_match_the_key(key: Any, rsa_keys: dict[int, Any]) -> None:
    rsa_key = rsa_keys[2048]
    with pytest.raises(ApiKeyError, match="RS256 does not fit the configured EC key"):
        verify(pyjwt_token(rsa_key, "RS256"), config_for(key))
    with pytest.raises(ApiKeyError, match="ES384 does not fit the configured RSA key"):
        verify(pyjwt_token(key, "ES384"), config_for(rsa_key))


def test_wrong_key_is_refused(key: Any, rsa_keys: dict[int, Any]) -> None:
    """RejectsWrongSigningKey: same subject, another key of the same kind."""
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ApiKeyError, match="signature is not by the configured key"):
        verify(pyjwt_token(other, "ES384"), config_for(key))
    with pytest.raises(ApiKeyError, match="signature"):
        verify(pyjwt_token(rsa_keys[3072], "RS384"), config_for(rsa_keys[2048]))


def test_a_key_embedded_in_the_header_is_ignored(key: Any) -> None:
    attacker = ec.generate_private_key(ec.SECP384R1())
    header = {"alg": "ES384", "typ": "JWT", "jwk": public_jwk(attacker)}
    with pytest.raises(ApiKeyError, match="signature"):
        verify(raw_token(attacker, header, claims(), "384"), config_for(key))


def test_tampered_payload_is_refused(key: Any) -> None:
    head, _, signature = pyjwt_token(key, "ES384", sub="someone").split(".")
    forged = f"{head}.{b64(json.dumps(claims()))}.{signature}"
    with pytest.raises(ApiKeyError, match="signature"):
        verify(forged, config_for(key))


def test_ecdsa_signature_in_der_or_wrong_length_is_refused(key: Any) -> None:
    signed = f"{b64(json.dumps({'alg': 'ES384'}))}.{b64(json.dumps(claims()))}"
    der = key.sign(signed.encode(), ec.ECDSA(hashes.SHA384()))  # valid, but not the JWS encoding
    with pytest.raises(ApiKeyError, match="signature"):
        verify(f"{signed}.{b64(der)}", config_for(key))
    with pytest.raises(ApiKeyError, match="signature"):
        verify(f"{signed}.{b64(bytes(95))}", config_for(key))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d.e",  # a JWE's shape
        "a.b.c",
        "eyJhbGciOiJFUzM4NCJ9.e30.a+b/",
        "eyJhbGciOiJFUzM4NCJ9.e30=.AAAA",
        "eyJhbGciOiJFUzM4NCJ9.W10.AAAA",  # payload is a JSON array
        "WyJFUzM4NCJd.e30.AAAA",  # header is a JSON array
        "eyJhbGciOiJFUzM4NCJ9.e30.A",  # 4n+1 characters
        "eyJhbGciOiJFUzM4NCJ9.e30.AAAA é",
    ],
)
def test_malformed_tokens(key: Any, token: str) -> None:
    with pytest.raises(ApiKeyError, match=r"malformed token|signature") as raised:
        verify(token, config_for(key))
    assert type(raised.value) is ApiKeyError


def test_oversized_token_is_refused_before_parsing(key: Any) -> None:
    with pytest.raises(ApiKeyError, match="longer than"):
        verify("a" * (250 * 1024 + 1), config_for(key))


def test_reasons_never_quote_the_token(key: Any) -> None:
    long_alg = "X" * 300
    tokens = [
        pyjwt_token(key, "ES384", sub="wrong"),
        pyjwt_token(ec.generate_private_key(ec.SECP384R1()), "ES384"),
        pyjwt_token(key, "ES384", exp=1),
        unsigned({"alg": long_alg}, claims(), b"signature-bytes-here"),
        "not-a-token-at-all-but-secret-looking",
    ]
    for token in tokens:
        with pytest.raises(ApiKeyError) as raised:
            verify(token, config_for(key))
        message = str(raised.value)
        assert raised.value.reason == message
        assert len(message) < 120
        for part in token.split("."):
            assert len(part) < 8 or part not in message
        assert long_alg not in message


# --- configuration ----------------------------------------------------------------------------------


def test_a_jwk_with_private_parts_is_a_configuration_error(key: Any, rsa_keys: dict[int, Any]) -> None:
    ec_private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    rsa_private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_keys[2048]))
    assert "d" in ec_private and {"p", "q", "dp", "dq", "qi"} <= rsa_private.keys()
    dotnet_cased = {
        "Kty": "EC",
        "Crv": "P-384",
        "X": ec_private["x"],
        "Y": ec_private["y"],
        "D": ec_private["d"],
    }
    for jwk in (ec_private, rsa_private, dotnet_cased, {**public_jwk(key), "k": "c2VjcmV0"}):
        with pytest.raises(ApiKeyConfigurationError, match="private key material"):
            MonitorApiKeyConfiguration(SUBJECT, encoded_jwk(jwk))


@pytest.mark.parametrize(
    ("public_key", "reason"),
    [
        ("%%%", "base64url"),
        ("eyJrdHkiOiJFQyJ9==", "base64url"),  # padding: not in dotnet-monitor's [0-9a-zA-Z_-]+
        (b64("not json"), "base64url"),
        (b64("[1, 2]"), "JSON object"),
        (encoded_jwk({"kty": "oct", "k": ""}), "EC or RSA"),  # an HMAC key, as in ApiKeyAlgorithmTest
        (encoded_jwk({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}), "EC or RSA"),
        (encoded_jwk({"kty": "ec", "crv": "P-256"}), "EC or RSA"),
        (encoded_jwk({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}), "crv P-256"),
        (encoded_jwk({"kty": "EC", "crv": "P-256", "x": b64(bytes(32))}), "'y'"),
        (encoded_jwk({"kty": "EC", "crv": "P-256", "x": b64(bytes(31)), "y": b64(bytes(32))}), "32 bytes"),
        (encoded_jwk({"kty": "EC", "crv": "P-256", "x": b64(bytes(32)), "y": b64(bytes(32))}), "not a point"),
        (encoded_jwk({"kty": "RSA", "e": "AQAB"}), "'n'"),
        (encoded_jwk({"kty": "RSA", "n": b64((2**511 + 1).to_bytes(64, "big")), "e": "AQAB"}), "1024 bits"),
    ],
)
def test_unusable_public_keys(public_key: str, reason: str) -> None:
    with pytest.raises(ApiKeyConfigurationError, match=reason):
        MonitorApiKeyConfiguration(SUBJECT, public_key)


def test_subject_and_issuer_rules(key: Any) -> None:
    public_key = encoded_jwk(public_jwk(key))
    for subject in ("", "  "):  # [Required] on MonitorApiKeyOptions.Subject
        with pytest.raises(ApiKeyConfigurationError, match="Subject"):
            MonitorApiKeyConfiguration(subject, public_key)
    assert MonitorApiKeyConfiguration(SUBJECT, public_key, "").issuer == DEFAULT_ISSUER


def test_configuration_errors_are_api_key_errors() -> None:
    """One family: a caller that refuses on ApiKeyError refuses on a broken key too."""
    assert issubclass(ApiKeyConfigurationError, ApiKeyError)


def test_from_env_reads_dotnet_monitor_names(key: Any) -> None:
    public_key = encoded_jwk(public_jwk(key))
    plain = {
        "Authentication__MonitorApiKey__Subject": "s",
        "Authentication__MonitorApiKey__PublicKey": public_key,
    }
    assert MonitorApiKeyConfiguration.from_env(plain) == MonitorApiKeyConfiguration("s", public_key)
    colon = {
        "Authentication:MonitorApiKey:Subject": "s",
        "Authentication:MonitorApiKey:PublicKey": public_key,
    }
    assert MonitorApiKeyConfiguration.from_env(colon) == MonitorApiKeyConfiguration("s", public_key)
    upper = {name.upper(): value for name, value in plain.items()}
    assert MonitorApiKeyConfiguration.from_env(upper) == MonitorApiKeyConfiguration("s", public_key)
    prefixed = {**plain, "DotnetMonitor_Authentication__MonitorApiKey__Subject": "wins"}
    assert MonitorApiKeyConfiguration.from_env(prefixed).subject == "wins"  # type: ignore[union-attr]
    issued = {**plain, "Authentication__MonitorApiKey__Issuer": "https://mine"}
    assert MonitorApiKeyConfiguration.from_env(issued).issuer == "https://mine"  # type: ignore[union-attr]


def test_from_env_without_a_key() -> None:
    assert MonitorApiKeyConfiguration.from_env({}) is None
    assert MonitorApiKeyConfiguration.from_env({"Authentication__MonitorApiKey__Issuer": "x"}) is None
    assert MonitorApiKeyConfiguration.from_env({"Authentication__MonitorApiKey__Subject": ""}) is None
    with pytest.raises(ApiKeyConfigurationError, match="PublicKey is not set"):
        MonitorApiKeyConfiguration.from_env({"Authentication__MonitorApiKey__Subject": "s"})
    with pytest.raises(ApiKeyConfigurationError, match="Subject is not set"):
        MonitorApiKeyConfiguration.from_env({"Authentication__MonitorApiKey__PublicKey": "eyJ9"})


# --- generatekey ------------------------------------------------------------------------------------


def test_generated_key_is_a_standard_es384_jwt() -> None:
    generated = generate_key()
    assert str(uuid.UUID(generated.subject)) == generated.subject  # a GUID, "D" format
    assert jwt.get_unverified_header(generated.token) == {"alg": "ES384", "typ": "JWT"}
    jwk = json.loads(base64.urlsafe_b64decode(generated.public_key + "=" * (-len(generated.public_key) % 4)))
    assert set(jwk) == {"kty", "crv", "x", "y"} and jwk["crv"] == "P-384"
    # PyJWT, not our verifier, checks signature and claims here.
    decoded = jwt.decode(
        generated.token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES384"],
        audience=AUDIENCE,
        issuer=DEFAULT_ISSUER,
        options={"require": ["exp", "aud", "iss", "sub"]},
    )
    assert list(decoded) == ["aud", "exp", "iss", "sub"] and decoded["sub"] == generated.subject
    assert 7 * 86400 - 5 < decoded["exp"] - time.time() <= 7 * 86400
    assert generated.expires == datetime.fromtimestamp(decoded["exp"], UTC)


def test_generated_key_round_trip() -> None:
    generated = generate_key(subject="runbook", expiry=timedelta(hours=1))
    config = MonitorApiKeyConfiguration.from_env(generated.settings())
    assert config is not None
    claims = verify(generated.token, config)
    assert claims.subject == "runbook"
    assert 3590 < claims.expires.timestamp() - time.time() <= 3600
    assert generate_key().subject != generate_key().subject


def test_generate_key_arguments() -> None:
    for expiry in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(ValueError, match="positive"):
            generate_key(expiry=expiry)
    with pytest.raises(ValueError, match="subject"):
        generate_key(subject=" ")


@pytest.fixture(scope="module")
def generated() -> GeneratedKey:
    return generate_key(subject="ops")


def test_render_text_and_json(generated: GeneratedKey) -> None:
    text = generated.render("Text")
    assert f"Authorization: Bearer {generated.token}\n" in text
    assert text.endswith(f"Subject: ops\nPublic Key: {generated.public_key}")
    assert generated.render() == text and generated.render("text") == text
    json_output = generated.render("Json")
    settings = json.loads(json_output[json_output.index("{") :])
    assert settings == {
        "Authentication": {"MonitorApiKey": {"Subject": "ops", "PublicKey": generated.public_key}}
    }


def test_render_machine_json_is_one_document(generated: GeneratedKey) -> None:
    printed = json.loads(generated.render("MachineJson"))
    assert printed == {
        "Authentication": {"MonitorApiKey": {"Subject": "ops", "PublicKey": generated.public_key}},
        "AuthorizationHeader": f"Bearer {generated.token}",
    }


def test_render_environment_formats(generated: GeneratedKey) -> None:
    shell = generated.render("Shell")
    assert "export Authentication__MonitorApiKey__Subject=ops\n" in shell
    assert f"export Authentication__MonitorApiKey__PublicKey={generated.public_key}" in shell
    assert f'set "Authentication__MonitorApiKey__PublicKey={generated.public_key}"' in generated.render("Cmd")
    assert "$env:Authentication__MonitorApiKey__Subject='ops'" in generated.render("powershell")
    with pytest.raises(ValueError, match="Text, Json, Shell"):
        generated.render("Yaml")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_shell_output_survives_a_shell() -> None:
    """A subject with quotes and dollars comes back intact, and the key it configures works."""
    generated = generate_key(subject='o\'brien "$HOME" `x`')
    exports = "\n".join(line for line in generated.render("Shell").splitlines() if line.startswith("export "))
    script = f"{exports}\nenv"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, env={})
    environ = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    config = MonitorApiKeyConfiguration.from_env(environ)
    assert config is not None and config.subject == generated.subject
    assert verify(generated.token, config).subject == generated.subject


def test_algorithm_list_is_dotnet_monitors() -> None:
    assert ALGORITHMS == ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512")


def test_core_module_does_not_need_cryptography_to_import() -> None:
    """The agent imports dnmon_core; only verify/generate_key pull cryptography in."""
    code = "import sys, dnmon_core.apikey; assert 'cryptography' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "functions"), str(root / "agent")]),
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=environment)
