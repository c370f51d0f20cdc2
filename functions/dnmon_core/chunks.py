"""Where a streamed artifact's chunks live: the one data path from agent to HTTP response.

The agent publishes the artifact, as it is produced, in small numbered S3 objects under its own
prefix (its IAM policy allows ``streams/<aws:userid>/`` and no other host's); the streaming function
tails them in order into the response. S3 reads its own writes at once, so the next chunk is
there as soon as its PutObject returns, and the chunks expire after a day (bucket lifecycle).
"""

from __future__ import annotations

import uuid

CHUNKS_PREFIX = "streams/"
LIVEMETRICS_FLUSH_SECONDS = 0.2  # each interval's records leave together, at once
TRACE_FLUSH_SECONDS = 1.0  # trace bytes reach the client at least every second...
CHUNK_BYTES = 1 << 20  # ...or every MiB


def chunk_prefix(owner: str, operation_id: uuid.UUID) -> str:
    """``owner`` is the agent's ``aws:userid``, recorded on the operation when the agent claims it."""
    return f"{CHUNKS_PREFIX}{owner}/{operation_id}/"


def chunk_key(owner: str, operation_id: uuid.UUID, sequence: int) -> str:
    return f"{chunk_prefix(owner, operation_id)}{sequence:08d}"
