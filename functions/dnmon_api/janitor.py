"""The janitor, run on a schedule: agents that stopped reporting leave the registry, and their
queues are deleted, so short-lived hosts (autoscaling, spot, CI runners) leak nothing.

- an agent silent for longer than ``DNMON_AGENT_RETIRE_SECONDS`` (default a day) is deregistered
  (its registry, liveness and process-index items) and its queue deleted;
- a queue under the agent prefix whose agent has no registry item any more (it deregistered on a
  graceful shutdown and never came back) is deleted once it is older than the same period. A
  queue is kept while its agent might restart: SQS refuses to re-create a name for 60 s after a
  delete, which would hold a restarting agent back.

The registry is walked page by page and queues are listed page by page: a run's cost grows with
the fleet, but it runs once an hour, not per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from dnmon_core.store import StoreError, map_aws_errors

from .services import Services, services

logger = Logger(service="dnmon-janitor")


@dataclass
class Sweep:
    retired_agents: list[str] = field(default_factory=list)
    deleted_queues: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep(svc: Services, *, now: float | None = None) -> Sweep:
    clock = time.time() if now is None else now
    retire = svc.settings.agent_retire_seconds
    result = Sweep()
    prefix = svc.settings.agent_queue_prefix
    token: str | None = None
    known: set[str] = set()
    while True:
        page = svc.registry.page(limit=100, token=token, alive_only=False)
        for agent in page.agents:
            known.add(agent.agent_id)
            if clock - agent.last_seen <= retire:
                continue
            try:
                _delete_queue(svc, agent.queue_url)
                svc.registry.deregister(agent.agent_id)
                result.retired_agents.append(agent.agent_id)
            except StoreError as exc:
                result.errors.append(f"{agent.agent_id}: {exc}")
        token = page.next_token
        if token is None:
            break
    for url in _queues(svc, prefix):
        agent_id = url.rsplit("/", 1)[-1].removeprefix(prefix)
        if agent_id in known:
            continue
        try:
            if svc.registry.get(agent_id, alive_only=False) is None and _age(svc, url, clock) > retire:
                _delete_queue(svc, url)
                result.deleted_queues.append(url)
        except StoreError as exc:
            result.errors.append(f"{url}: {exc}")
    return result


def _queues(svc: Services, prefix: str) -> list[str]:
    urls: list[str] = []
    kwargs: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
    while True:
        with map_aws_errors("listing agent queues"):
            response = svc.sqs.list_queues(**kwargs)
        urls.extend(response.get("QueueUrls", []))
        if not response.get("NextToken"):
            return urls
        kwargs["NextToken"] = response["NextToken"]


def _age(svc: Services, url: str, now: float) -> float:
    with map_aws_errors("reading a queue's age"):
        attributes = svc.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
    return now - float(attributes["Attributes"]["CreatedTimestamp"])


def _delete_queue(svc: Services, url: str) -> None:
    try:
        with map_aws_errors("deleting an agent queue"):
            svc.sqs.delete_queue(QueueUrl=url)
    except StoreError as exc:
        if exc.code not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = sweep(services())
    for error in result.errors:
        logger.error("janitor step failed", extra={"error": error})
    logger.info(
        "janitor swept",
        extra={"retiredAgents": len(result.retired_agents), "deletedQueues": len(result.deleted_queues)},
    )
    return {
        "retiredAgents": result.retired_agents,
        "deletedQueues": result.deleted_queues,
        "errors": result.errors,
    }
