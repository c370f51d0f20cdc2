"""AWS resources the template creates, made the same way on moto (the local stack, tests, benchmarks)."""

from __future__ import annotations

from typing import Any


def create_signing_key(kms: Any) -> str:
    """An asymmetric signing key as the template's ``SigningKey``; returns its id."""
    response = kms.create_key(
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
        Description="dnmon: signs jobs and control messages for agents",
    )
    return str(response["KeyMetadata"]["KeyId"])
