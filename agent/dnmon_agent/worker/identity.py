"""Who this agent is: its AWS identity, not its host name.

Host names collide (two clusters' ``ip-10-0-0-12``) and say nothing an attacker cannot choose. The
STS caller identity is what AWS vouches for: an EC2 instance profile's session is named after
the instance id, an ECS task role's after the task id. The agent id is that session name (or the
IAM user's name), made safe for a queue name. ``DNMON_AGENT_ID`` overrides it where one identity
runs several agents (the local stack, tests).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from dnmon_core.store import map_aws_errors

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


def caller_agent_id(sts: Any) -> str:
    """The agent id of the credentials this process runs with (one STS request)."""
    with map_aws_errors("asking STS who this agent is"):
        arn = sts.get_caller_identity()["Arn"]
    return agent_id_from_arn(str(arn))
