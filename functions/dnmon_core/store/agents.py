"""The agent registry, read by key so that a request costs the same at 10 or 10,000 agents.

| item            | pk                          | sk                   | written                     |
|-----------------|-----------------------------|----------------------|-----------------------------|
| agent           | ``AGENT#<id>``              | META                 | registration, process change|
| liveness        | ``AGENT#<id>``              | LIVE                 | every few minutes (tiny)    |
| host name       | ``HOST#<host name>``        | ``<agent id>``       | registration                |
| process by pid  | ``PROC#PID#<pid>``          | ``<agent id>``       | process change              |
| process by uid  | ``PROC#UID#<uid>``          | ``<agent id>``       | process change              |
| process by name | ``PROC#NAME#<casefolded>``  | ``<agent id>#<pid>`` | process change              |

Only the agent item is in an index (gsi1 ``AGENTS``, sorted by host name, for paginated fleet
listings), and it changes only when the host's set of .NET processes changes: liveness is a
separate 1-write-unit item in no index. Resolving ``pid``, ``uid`` or ``name`` fleet-wide is one
Query of that value's own partition.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..models import SHORT_CONTAINER_ID, ProcessInfo, name_matches
from .errors import InvalidToken, map_aws_errors
from .items import Clock, decode_token, dynamo, encode_token, plain

AGENT_TTL_SECONDS = 30 * 24 * 3600  # the janitor removes dead agents long before this
CANDIDATE_LIMIT = 20  # a selector matching more processes than this is ambiguous anyway
_BATCH_GET = 100


@dataclass
class AgentRecord:
    agent_id: str
    host_name: str
    queue_url: str
    version: str
    processes: list[ProcessInfo]
    last_seen: float = 0.0

    def alive(self, now: float, max_silence: float) -> bool:
        return now - self.last_seen <= max_silence

    @classmethod
    def from_item(cls, item: dict[str, Any], last_seen: float) -> AgentRecord:
        data = plain(item)
        return cls(
            agent_id=data["agentId"],
            host_name=data["hostName"],
            queue_url=data["queueUrl"],
            version=data.get("version", ""),
            processes=[ProcessInfo.model_validate(p) for p in data.get("processes") or []],
            last_seen=last_seen,
        )


@dataclass(frozen=True)
class Candidate:
    """A process that matches a fleet-wide selector: which agent has it."""

    agent_id: str
    host_name: str
    pid: int
    uid: str
    name: str
    pod_name: str | None = None
    container_id: str | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Candidate:
        return cls(
            item["agentId"],
            item["hostName"],
            int(item["pid"]),
            item["uid"],
            item["name"],
            item.get("podName"),
            item.get("containerId"),
        )


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentRecord]
    next_token: str | None


def _meta(agent_id: str) -> dict[str, str]:
    return {"pk": f"AGENT#{agent_id}", "sk": "META"}


def _live(agent_id: str) -> dict[str, str]:
    return {"pk": f"AGENT#{agent_id}", "sk": "LIVE"}


def _index_keys(agent_id: str, process: ProcessInfo) -> list[dict[str, str]]:
    """pid, uid and every name a selector may use (process, pod, short container id)."""
    return [
        {"pk": f"PROC#PID#{process.pid}", "sk": agent_id},
        {"pk": f"PROC#UID#{process.uid}", "sk": agent_id},
        *(
            {"pk": f"PROC#NAME#{key}", "sk": f"{agent_id}#{process.pid}"}
            for key in sorted(process.name_keys())
        ),
    ]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class AgentRegistry:
    """Which agents exist, where their queues are, which processes they reported."""

    def __init__(self, table: Any, *, clock: Clock = time.time, max_silence: float = 1800.0) -> None:
        self.table = table
        self.clock = clock
        self.max_silence = max_silence

    # --- written for the agent -----------------------------------------------------------------

    def register(self, agent_id: str, host_name: str, queue_url: str, version: str) -> None:
        """Announce the agent (its process list is published separately, on change)."""
        now = self.clock()
        with map_aws_errors("registering the agent"):
            self.table.update_item(
                Key=_meta(agent_id),
                UpdateExpression="SET agentId = :id, hostName = :host, queueUrl = :queue, version = :v, "
                "gsi1pk = :agents, gsi1sk = :sort, registeredAt = :now, #ttl = :ttl, "
                "processes = if_not_exists(processes, :none)",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues=dynamo(
                    {
                        ":id": agent_id,
                        ":host": host_name,
                        ":queue": queue_url,
                        ":v": version,
                        ":agents": "AGENTS",
                        ":sort": f"{host_name}#{agent_id}",
                        ":now": now,
                        ":ttl": int(now + AGENT_TTL_SECONDS),
                        ":none": [],
                    }
                ),
            )
            self.table.put_item(
                Item={"pk": f"HOST#{host_name}", "sk": agent_id, "agentId": agent_id, "hostName": host_name}
            )
        self.touch(agent_id)

    def touch(self, agent_id: str) -> None:
        """Liveness: one small write, in no index."""
        now = self.clock()
        with map_aws_errors("recording liveness"):
            self.table.put_item(
                Item=dynamo({**_live(agent_id), "lastSeen": now, "ttl": int(now + AGENT_TTL_SECONDS)})
            )

    def publish_processes(
        self,
        agent_id: str,
        host_name: str,
        processes: Iterable[ProcessInfo],
        previous: Iterable[ProcessInfo] = (),
    ) -> None:
        """The host's process set changed: rewrite the agent item and the index items that differ."""
        current = list(processes)
        before = {(p.pid, str(p.uid), p.name) for p in previous}
        after = {(p.pid, str(p.uid), p.name) for p in current}
        now = self.clock()
        with map_aws_errors("publishing processes"):
            self.table.update_item(
                Key=_meta(agent_id),
                UpdateExpression="SET processes = :p, processesChanged = :now",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues=dynamo(
                    {":p": [p.model_dump(mode="json") for p in current], ":now": now}
                ),
            )
        puts: list[dict[str, Any]] = []
        for process in current:
            if (process.pid, str(process.uid), process.name) in before:
                continue
            entry = {
                "agentId": agent_id,
                "hostName": host_name,
                "pid": process.pid,
                "uid": str(process.uid),
                "name": process.name,
                "podName": process.pod_name,
                "containerId": process.container_id,
                "ttl": int(now + AGENT_TTL_SECONDS),
            }
            puts.extend({"PutRequest": {"Item": {**key, **entry}}} for key in _index_keys(agent_id, process))
        deletes = [
            {"DeleteRequest": {"Key": key}}
            for process in previous
            if (process.pid, str(process.uid), process.name) not in after
            for key in _index_keys(agent_id, process)
        ]
        self._batch_write(deletes + puts)

    def deregister(self, agent_id: str) -> None:
        """Remove the agent and every index item that names it (graceful shutdown, the janitor)."""
        record = self.get(agent_id, alive_only=False)
        keys = [_meta(agent_id), _live(agent_id)]
        if record is not None:
            keys.append({"pk": f"HOST#{record.host_name}", "sk": agent_id})
            keys.extend(key for p in record.processes for key in _index_keys(agent_id, p))
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys])

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        """boto3's batch writer: chunks of 25, unprocessed items re-sent; a key written twice
        (a pid reused by a new process) keeps its last request, the put."""
        if not requests:
            return
        with (
            map_aws_errors("writing the registry"),
            self.table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as batch,
        ):
            for request in requests:
                if "PutRequest" in request:
                    batch.put_item(Item=dynamo(request["PutRequest"]["Item"]))
                else:
                    batch.delete_item(Key=request["DeleteRequest"]["Key"])

    # --- read by the API ------------------------------------------------------------------------

    def get(self, agent_id: str, *, alive_only: bool = True) -> AgentRecord | None:
        found = self._records([agent_id], alive_only=alive_only)
        return found[0] if found else None

    def by_host(self, host: str, *, alive_only: bool = True) -> list[AgentRecord]:
        """Agents whose host name (or agent id) is ``host``: one Query and one BatchGetItem."""
        with map_aws_errors("finding the host"):
            response = self.table.query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": f"HOST#{host}"},
                Limit=CANDIDATE_LIMIT,
            )
        ids = [item["sk"] for item in response.get("Items", [])]
        if host not in ids:
            ids.append(host)  # an agent id names its host too
        return self._records(ids, alive_only=alive_only)

    def candidates(
        self, *, pid: int | None = None, uid: str | None = None, name: str | None = None
    ) -> list[Candidate]:
        """Processes that match, fleet-wide, from the most selective index (uid, pid, then name:
        a name may also be a pod name or a container id, indexed by its short form)."""
        if uid is not None:
            keys = [f"PROC#UID#{uid}"]
        elif pid is not None:
            keys = [f"PROC#PID#{pid}"]
        elif name is not None:
            folded = name.casefold()
            keys = list(
                dict.fromkeys([folded, folded[:SHORT_CONTAINER_ID]] if len(folded) > 12 else [folded])
            )
            keys = [f"PROC#NAME#{key}" for key in keys]
        else:
            raise ValueError("a selector needs pid, uid or name")
        found: dict[tuple[str, int], Candidate] = {}
        for pk in keys:
            with map_aws_errors("finding the process"):
                response = self.table.query(
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": pk},
                    Limit=CANDIDATE_LIMIT,
                )
            for item in response.get("Items", []):
                candidate = Candidate.from_item(item)
                found[(candidate.agent_id, candidate.pid)] = candidate
        return [
            c
            for c in found.values()
            if (pid is None or c.pid == pid)
            and (uid is None or c.uid == uid)
            and (name is None or name_matches(name, c.name, c.pod_name, c.container_id))
        ]

    def records(self, agent_ids: Iterable[str], *, alive_only: bool = True) -> list[AgentRecord]:
        """These agents (the live ones, by default): one BatchGetItem per 50."""
        return self._records(list(agent_ids), alive_only=alive_only)

    def alive_ids(self, agent_ids: Iterable[str]) -> set[str]:
        """Which of these agents reported within ``max_silence``: one BatchGetItem per 100."""
        now = self.clock()
        return {
            agent_id
            for agent_id, seen in self._last_seen(list(dict.fromkeys(agent_ids))).items()
            if now - seen <= self.max_silence
        }

    def page(self, *, limit: int = 100, token: str | None = None, alive_only: bool = True) -> AgentPage:
        """A page of agents sorted by host name (gsi1 ``AGENTS``)."""
        kwargs: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :agents",
            "ExpressionAttributeValues": {":agents": "AGENTS"},
            "Limit": limit,
        }
        if token is not None:
            start = decode_token(token)
            if start.get("gsi1pk") != "AGENTS":
                raise InvalidToken("the continuation token belongs to another listing")
            kwargs["ExclusiveStartKey"] = start
        with map_aws_errors("listing agents"):
            response = self.table.query(**kwargs)
        items = response.get("Items", [])
        seen = self._last_seen([item["agentId"] for item in items])
        now = self.clock()
        agents = [AgentRecord.from_item(item, seen.get(item["agentId"], 0.0)) for item in items]
        if alive_only:
            agents = [a for a in agents if a.alive(now, self.max_silence)]
        last = response.get("LastEvaluatedKey")
        return AgentPage(agents, encode_token(plain(dict(last))) if last else None)

    def stale(self, *, limit: int = 100, token: str | None = None) -> AgentPage:
        """Agents silent for longer than ``max_silence`` (the janitor's work list)."""
        page = self.page(limit=limit, token=token, alive_only=False)
        now = self.clock()
        return AgentPage([a for a in page.agents if not a.alive(now, self.max_silence)], page.next_token)

    def _records(self, agent_ids: list[str], *, alive_only: bool) -> list[AgentRecord]:
        ids = list(dict.fromkeys(agent_ids))
        if not ids:
            return []
        items = self._batch_get([k for agent_id in ids for k in (_meta(agent_id), _live(agent_id))])
        meta = {i["agentId"]: i for i in items if i["sk"] == "META"}
        seen = {i["pk"].removeprefix("AGENT#"): float(i["lastSeen"]) for i in items if i["sk"] == "LIVE"}
        now = self.clock()
        records = [AgentRecord.from_item(meta[a], seen.get(a, 0.0)) for a in ids if a in meta]
        return [r for r in records if not alive_only or r.alive(now, self.max_silence)]

    def _last_seen(self, agent_ids: list[str]) -> dict[str, float]:
        items = self._batch_get([_live(agent_id) for agent_id in agent_ids])
        return {i["pk"].removeprefix("AGENT#"): float(i["lastSeen"]) for i in items}

    def _batch_get(self, keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        # The resource's own client: it (de)serialises attribute values as the Table does.
        client = self.table.meta.client
        found: list[dict[str, Any]] = []
        for chunk in _chunks(keys, _BATCH_GET):
            pending: dict[str, Any] = {self.table.name: {"Keys": chunk, "ConsistentRead": True}}
            for attempt in range(8):
                with map_aws_errors("reading the registry"):
                    response = client.batch_get_item(RequestItems=pending)
                found.extend(response.get("Responses", {}).get(self.table.name, []))
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))
        return found
