"""Who an agent is: its AWS identity, not its host name.

Host names collide (two clusters' ``ip-10-0-0-12``) and say nothing an attacker cannot choose. The
identity AWS vouches for is the caller of the agent API (a SigV4-signed Function URL request): an
EC2 instance profile's session is named after the instance id, an ECS task role's after the task.
The agent id is that session name (or the IAM user's name), made safe for a queue name. Where one
identity runs several agents (the local stack, tests) a deployment may allow an explicit override.
"""

from __future__ import annotations

import hashlib
import re

MAX_ID_LENGTH = 40  # the queue prefix (≤ 40) plus the id stays within SQS's 80 characters
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def agent_id_from_arn(arn: str) -> str:
    """``…:assumed-role/Role/i-0abc`` → ``i-0abc``; ``arn:aws:iam::1:user/ops`` → ``user-ops``."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ValueError(f"not an ARN: {arn!r}")
    kind, _, rest = parts[5].partition("/")
    if kind == "assumed-role" and "/" in rest:
        name = rest.split("/", 1)[1]
    elif kind == "user":
        name = "user-" + rest.rsplit("/", 1)[-1]
    else:
        name = f"{kind}-{rest}" if rest else kind
    return safe_id(name)


def safe_id(name: str) -> str:
    """Queue-name characters only; a long name keeps a hash of the whole so distinct names stay distinct."""
    safe = _UNSAFE.sub("-", name) or "agent"
    if len(safe) <= MAX_ID_LENGTH:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe[: MAX_ID_LENGTH - 9]}-{digest}"
