"""The store's error tree, and the one edge where AWS exceptions become it.

``StoreError`` is the base. ``StoreUnavailable``: AWS could not be reached or refused for a reason
that may pass (throttling, a timeout, connection refused) — callers back off and retry, the API
answers 503. ``NotFound`` and ``TransitionRejected`` are answers, not faults. ``InvalidToken``: a
continuation token that is not ours. Every boto3 call in this package runs inside
``map_aws_errors``, so neither ``ClientError`` nor ``BotoCoreError`` ever leaves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from ..operations import OperationState


class StoreError(Exception):
    """A store operation could not be done; ``code`` is the AWS error code if any."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """AWS did not answer, or answered with a fault that retrying may cure."""


class NotFound(StoreError):
    pass


class InvalidToken(StoreError):
    """A continuation token that this store did not hand out."""


class TransitionRejected(StoreError):
    """The operation is not in a state that allows this change (e.g. already finished)."""

    def __init__(self, operation_id: uuid.UUID, target: OperationState, current: str | None) -> None:
        super().__init__(f"operation {operation_id} cannot become {target} (it is {current or 'unknown'})")
        self.current = current


class ConditionFailed(StoreError):
    """A conditional write lost: callers decide what that means (a taken slot, a finished operation)."""

    def __init__(self, old_item: dict[str, object]) -> None:
        super().__init__("condition failed", "ConditionalCheckFailedException")
        self.old_item = old_item


# Client errors that are the service's trouble rather than the request's: worth a retry.
_TRANSIENT = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
}


@contextmanager
def map_aws_errors(what: str) -> Iterator[None]:
    """Translate every AWS exception raised inside into the store's family (``what`` names the step)."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code")
        if code == "ConditionalCheckFailedException":
            raise ConditionFailed(dict(exc.response.get("Item") or {})) from exc  # type: ignore[call-overload]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        kind = StoreUnavailable if code in _TRANSIENT or status >= 500 else StoreError
        raise kind(f"{what}: {code}: {error.get('Message')}", code) from exc
    except BotoCoreError as exc:  # connection refused, timeouts, bad credentials: nothing was decided
        raise StoreUnavailable(f"{what}: {exc}", type(exc).__name__) from exc
