"""Item plumbing shared by the stores: number types, clocks and continuation tokens."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from .errors import InvalidToken

Clock = Callable[[], float]


def plain(value: Any) -> Any:
    """DynamoDB's Decimals back to int/float, recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def dynamo(value: Any) -> Any:
    """Floats to Decimals and ``None`` members dropped, as DynamoDB wants them."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [dynamo(v) for v in value]
    return value


def low_level_string(value: object) -> str | None:
    """An attribute of ``ReturnValuesOnConditionCheckFailure``: low-level shape even from a Table."""
    if isinstance(value, dict):
        found = value.get("S")
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) else None


# Continuation tokens are LastEvaluatedKey, made opaque. Only string key attributes of the names we
# use are accepted back, so a forged token can at most start a listing somewhere else in the same
# partition, which the caller was allowed to list anyway.
_KEY_NAMES = frozenset({"pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"})


def encode_token(position: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, sort_keys=True).encode()).rstrip(b"=").decode()


def decode_token(token: str, *, extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken("the continuation token is not one this API handed out") from exc
    allowed = _KEY_NAMES | extra
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(k, str) and k in allowed and isinstance(v, str) for k, v in raw.items())
    ):
        raise InvalidToken("the continuation token is not one this API handed out")
    return raw
