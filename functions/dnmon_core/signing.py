"""Signed queue messages: the control plane signs every job and control message, agents verify.

An agent's queue is reachable by more than the control plane (a mistaken policy, a compromised
host with send rights, an operator's script), so an agent acts on nothing it cannot verify. The
control plane signs with an asymmetric KMS key (ECC_NIST_P256, ECDSA_SHA_256): the private key
never leaves KMS, and an agent, holding only the public key, cannot forge a message for another
host. Agents verify locally with ``cryptography``, so verification costs no AWS request.

A sealed message is JSON: ``{"v": 1, "kid": <key id>, "payload": <JSON text>, "sig": <base64>}``.
The payload binds the message to one agent (``agentId``) and a deadline (``expires``); replay of
a job within that window is stopped by the operation's conditional claim.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

ENVELOPE_VERSION = 1
SIGNING_ALGORITHM = "ECDSA_SHA_256"
MAX_MESSAGE_BYTES = 256 * 1024  # SQS's own limit; anything longer is not ours


class MessageType(StrEnum):
    JOB = "job"
    CONTROL = "control"
    ENVIRONMENT = "environment"


class SignatureError(Exception):
    """A queue message that must not be acted on; ``reason`` says why (safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Signer(Protocol):
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


@dataclass
class KmsSigner:
    """Signs with KMS; ``client`` is a boto3 KMS client. Errors are the caller's to map."""

    client: Any
    key_id: str

    def sign(self, data: bytes) -> bytes:
        response = self.client.sign(
            KeyId=self.key_id, Message=data, MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM
        )
        return bytes(response["Signature"])


class Verifier:
    """Checks signatures with the signing key's public half (DER SubjectPublicKeyInfo, as KMS gives it)."""

    def __init__(self, public_key_der: bytes, key_id: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        key = load_der_public_key(public_key_der)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("the signing key is not an elliptic-curve key")
        self._key = key
        self.key_id = key_id

    def valid(self, data: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def seal(
    signer: Signer,
    kind: MessageType,
    agent_id: str,
    body: Mapping[str, Any],
    *,
    ttl_seconds: float,
    clock: Callable[[], float] = time.time,
) -> str:
    """The queue message for ``agent_id``: ``body`` signed, valid for ``ttl_seconds``."""
    now = clock()
    payload = json.dumps(
        {"type": str(kind), "agentId": agent_id, "issued": now, "expires": now + ttl_seconds, "body": body},
        separators=(",", ":"),
        sort_keys=True,
    )
    signature = signer.sign(payload.encode("utf-8"))
    envelope = {
        "v": ENVELOPE_VERSION,
        "kid": signer.key_id,
        "payload": payload,
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":"))


@dataclass(frozen=True)
class OpenedMessage:
    kind: MessageType
    body: dict[str, Any]
    expires: float


def unseal(
    verifier: Verifier, text: str, agent_id: str, *, clock: Callable[[], float] = time.time
) -> OpenedMessage:
    """The body of a message signed for this agent and not expired; else ``SignatureError``."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise SignatureError("the message is larger than any dnmon message")
    try:
        envelope = json.loads(text)
    except ValueError:
        raise SignatureError("the message is not JSON") from None
    if not isinstance(envelope, dict) or envelope.get("v") != ENVELOPE_VERSION:
        raise SignatureError("the message is not a signed dnmon envelope (version 1)")
    payload, signature = envelope.get("payload"), envelope.get("sig")
    if not isinstance(payload, str) or not isinstance(signature, str):
        raise SignatureError("the envelope lacks its payload or signature")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise SignatureError("the signature is not base64") from None
    if not verifier.valid(payload.encode("utf-8"), raw_signature):
        raise SignatureError("the signature does not verify with the control plane's key")
    try:
        data = json.loads(payload)
        kind = MessageType(data["type"])
        expires = float(data["expires"])
        body = data["body"]
        target = data["agentId"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("the signed payload is malformed") from None
    if target != agent_id:
        raise SignatureError(f"the message is for agent {target!r}, not this one")
    if clock() > expires:
        raise SignatureError("the message has expired")
    if not isinstance(body, dict):
        raise SignatureError("the signed payload's body is not an object")
    return OpenedMessage(kind, body, expires)
