"""A fleet on one machine: API latency and AWS requests at 10, 1,000 and 10,000 agents; jobs reach
the right host; what an idle agent costs in requests.

    .venv/bin/python -m benchmarks.bench_fleet [--real-agents 200] [--fleet 10,1000,10000]
        [--requests 40] [--idle-seconds 600]

* moto runs in server mode in a child process; the agent API runs here behind the local AWS_IAM
  function URL (real SigV4 checks, ``DNMON_ALLOW_AGENT_ID_OVERRIDE=1``);
* ``--real-agents`` real ``dnmon_agent.worker.Agent`` objects (own ``DNMON_AGENT_ID`` and
  ``DNMON_HOST_NAME``, production defaults: 20 s long poll, liveness 600 s, scan 1 s) poll their own
  queues from threads of this process. Discovery is ``DNMON_DISCOVERY=tmpdir`` with ``TMPDIR`` an
  empty directory, so each watcher's 1 s scan reads that empty directory and finds nothing; after
  registering, each agent publishes a synthetic process list through its own control plane
  (``agent.control.publish_processes``: pid 7, common to every host, and a pid unique in the fleet).
  The watcher never overwrites it: it publishes only when its scan changes, and it never does;
* the rest of the fleet is written directly with ``AgentRegistry.register`` + ``publish_processes``
  (which also touches liveness), same two processes, a shared sink queue nobody reads;
* at each fleet size: ``POST /trace`` naming a host (``?host=…&pid=7``) and naming only a pid that
  is unique in the fleet (``?pid=…``), ``GET /processes`` (one page of 100 agents) and
  ``GET /processes?host=…``, each ``--requests`` times, the API handler called in-process on API
  Gateway events (as ``bench_api``); latency is wall time including moto (≈5 ms a request) and the
  GIL shared with the agents; every AWS request each one makes is counted (``benchmarks.counting``);
* every job posted is checked: claimed by the agent of the host it was posted for, and no other
  agent sent anything about it. Captures end ``Failed`` (no .NET process behind the synthetic list);
* idle window: requests per agent per minute to SQS, to the agent API, and the AWS requests the
  agent API made for them.

Writes ``benchmarks/out/fleet.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks._results import save
from benchmarks._stack import Stack, call_api, percentile, stack
from benchmarks.counting import AGENT, Frame, Meter, route_of, tally

BODY = {"Providers": [{"Name": "Microsoft-Windows-DotNETRuntime", "Keywords": "0x1"}]}
COMMON_PID = 7
REAL_PID_BASE = 200_000
SEED_PID_BASE = 300_000


def _processes(unique_pid: int) -> list[Any]:
    from dnmon_core.models import ProcessInfo

    def one(pid: int, name: str) -> ProcessInfo:
        return ProcessInfo.model_validate(
            {
                "pid": pid,
                "uid": str(uuid.uuid4()),
                "name": name,
                "commandLine": f"dotnet {name}.dll",
                "operatingSystem": "Linux",
                "processArchitecture": "x64",
            }
        )

    return [one(COMMON_PID, "Gateway"), one(unique_pid, "Orders")]


class Fleet:
    def __init__(self, st: Stack, meter: Meter, workers: int) -> None:
        import boto3

        from dnmon_core.store import AgentRegistry

        self.stack = st
        self.meter = meter
        self.workers = workers
        self.session = boto3.Session()
        self.registry = AgentRegistry(st.table)
        self.sink = self.session.client("sqs").create_queue(QueueName=f"sink-{uuid.uuid4().hex[:8]}")[
            "QueueUrl"
        ]
        self.agents: list[Any] = []  # real agents, index = host number
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.seeded = 0

    @property
    def size(self) -> int:
        return len(self.agents) + self.seeded

    def start_agents(self, count: int) -> None:
        from dnmon_agent.worker import Agent, AgentSettings

        first = len(self.agents)
        new: list[Any] = []
        for i in range(first, first + count):
            env = {**self.stack.env, "DNMON_AGENT_ID": f"agent-{i:03d}", "DNMON_HOST_NAME": f"host-{i:03d}"}
            new.append(Agent(AgentSettings.from_env(env), session=self.session))

        def register(pair: tuple[int, Any]) -> None:
            i, agent = pair
            agent.register()
            agent.control.publish_processes(_processes(REAL_PID_BASE + i))

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(register, enumerate(new, start=first)))
        for agent in new:
            thread = threading.Thread(target=agent.run, args=(self.stop,), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.agents.extend(new)

    def seed(self, count: int) -> None:
        first = self.seeded

        def one(i: int) -> None:
            with self.meter.acting("seed"):
                agent_id, host = f"seed-{i:05d}", f"seed-host-{i:05d}"
                self.registry.register(agent_id, host, self.sink, "0.1.0")
                self.registry.publish_processes(agent_id, host, _processes(SEED_PID_BASE + i))

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(one, range(first, first + count)))
        self.seeded += count

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)


def _summary(seconds: list[float], frames: list[Frame], statuses: list[int]) -> dict[str, Any]:
    calls = [f.calls for f in frames]
    counts = [len(c) for c in calls]
    own = [s - f.aws_seconds for s, f in zip(seconds, frames, strict=True)]
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
        "own_code_p50_ms": round(percentile(own, 50) * 1000, 2),
        "own_code_p99_ms": round(percentile(own, 99) * 1000, 2),
        "aws_p50_ms": round(percentile([f.aws_seconds for f in frames], 50) * 1000, 2),
        "aws_requests_median": statistics.median(counts),
        "aws_requests_max": max(counts),
        "aws_requests_min": min(counts),
        "aws_operations": tally(op for c in calls for op in c),
        "statuses": tally(str(s) for s in statuses),
    }


def measure(fleet: Fleet, requests: int, posted: list[tuple[str, str]]) -> dict[str, Any]:
    """Latency and AWS requests of the four request kinds at the current fleet size."""
    from tests.apigw import header

    meter = fleet.meter
    real = len(fleet.agents)
    kinds = ("POST /trace?host=&pid=7", "POST /trace?pid=<unique>", "GET /processes", "GET /processes?host=")
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    calls: dict[str, list[Frame]] = {k: [] for k in kinds}
    statuses: dict[str, list[int]] = {k: [] for k in kinds}
    call_api(meter, "GET", "/processes", {"limit": "1"})  # warm (first Services, clients)
    for n in range(requests):
        k = n % real
        host, agent_id = f"host-{k:03d}", f"agent-{k:03d}"
        query = {"durationSeconds": "60", "egressProvider": "s3"}
        requests_of = [
            ("POST", "/trace", {**query, "host": host, "pid": str(COMMON_PID)}, BODY),
            ("POST", "/trace", {**query, "pid": str(REAL_PID_BASE + (real - 1 - k))}, BODY),
            ("GET", "/processes", None, None),
            ("GET", "/processes", {"host": host}, None),
        ]
        for kind, (method, path, params, body) in zip(kinds, requests_of, strict=True):
            response, took, aws = call_api(meter, method, path, params, body)
            seconds[kind].append(took)
            calls[kind].append(aws)
            statuses[kind].append(int(response["statusCode"]))
            if method == "POST" and response["statusCode"] == 202:
                op = str(header(response, "Location")).rsplit("/", 1)[1]
                target = agent_id if "host" in (params or {}) else f"agent-{real - 1 - k:03d}"
                posted.append((op, target))
        time.sleep(0.01)
    return {kind: _summary(seconds[kind], calls[kind], statuses[kind]) for kind in kinds}


def janitor_run(fleet: Fleet) -> dict[str, Any]:
    """One hourly janitor sweep over the whole fleet (nobody is silent: it retires nothing)."""
    from dnmon_api.janitor import sweep
    from dnmon_api.services import services

    with fleet.meter.acting("janitor") as frame:
        start = time.perf_counter()
        result = sweep(services())
        seconds = time.perf_counter() - start
    return {
        "aws_requests": len(frame.calls),
        "aws_operations": tally(frame.calls),
        "seconds": round(seconds, 2),
        "retired": len(result.retired_agents),
        "deleted_queues": len(result.deleted_queues),
    }


def deliver_round(fleet: Fleet, posted: list[tuple[str, str]]) -> int:
    """One job for every real agent, posted by host name."""
    from tests.apigw import header

    accepted = 0
    for k in range(len(fleet.agents)):
        query = {
            "durationSeconds": "60",
            "egressProvider": "s3",
            "host": f"host-{k:03d}",
            "pid": str(COMMON_PID),
        }
        response, _, _ = call_api(fleet.meter, "POST", "/trace", query, BODY)
        if response["statusCode"] == 202:
            posted.append((str(header(response, "Location")).rsplit("/", 1)[1], f"agent-{k:03d}"))
            accepted += 1
    return accepted


def check_delivery(fleet: Fleet, posted: list[tuple[str, str]], timeout: float) -> dict[str, Any]:
    """Every posted job: claimed by its host's agent only, and ended."""
    from dnmon_core.operations import is_terminal
    from dnmon_core.store import OperationStore

    store = OperationStore(fleet.stack.table)
    deadline = time.monotonic() + timeout
    records: dict[str, Any] = {}
    with fleet.meter.acting("check"):
        while time.monotonic() < deadline:
            for op, _ in posted:
                if op not in records or not is_terminal(records[op].status):
                    records[op] = store.get(uuid.UUID(op))
            if all(is_terminal(r.status) for r in records.values()):
                break
            time.sleep(1.0)
    expected = dict(posted)
    senders: dict[str, set[str | None]] = {}
    for call in list(fleet.meter.agent_api):
        parts = call.path.split("/")
        if len(parts) > 2 and parts[1] == "operations" and parts[2] in expected:
            senders.setdefault(parts[2], set()).add(call.agent)
    wrong_claim = [op for op, agent in posted if records[op].claimed_by != agent]
    foreign = [op for op, agent in posted if senders.get(op, set()) - {agent}]
    return {
        "jobs_posted": len(posted),
        "claimed_by_their_hosts_agent": len(posted) - len(wrong_claim),
        "claimed_by_another_or_unclaimed": wrong_claim[:10],
        "jobs_another_agent_touched": foreign[:10],
        "final_states": tally(str(records[op].status) for op, _ in posted),
        "error_codes": tally(str(records[op].error.code) if records[op].error else "-" for op, _ in posted),
    }


def idle(fleet: Fleet, seconds: float) -> dict[str, Any]:
    """Requests per real agent per minute over an idle window."""
    meter = fleet.meter
    mark = meter.mark()
    start = time.time()
    time.sleep(seconds)
    aws, agent_api, invocations = meter.since(mark)
    minutes = (time.time() - start) / 60
    ids = [a.settings.agent_id for a in fleet.agents]
    prefix = fleet.stack.env["DNMON_AGENT_QUEUE_PREFIX"]
    sqs: dict[str, int] = dict.fromkeys(ids, 0)
    for call in aws:
        if call.actor == AGENT and call.service == "sqs" and call.queue:
            agent = call.queue.rsplit("/", 1)[-1].removeprefix(prefix)
            if agent in sqs:
                sqs[agent] += 1
    api_calls: dict[str, int] = dict.fromkeys(ids, 0)
    for c in agent_api:
        if c.agent in api_calls:
            api_calls[c.agent] += 1
    behind: dict[str, int] = dict.fromkeys(ids, 0)
    for inv in invocations:
        if inv.agent in behind:
            behind[inv.agent] += len(inv.aws)
    other_agent_aws = [c for c in aws if c.actor == AGENT and c.service != "sqs"]

    def rate(counts: dict[str, int]) -> dict[str, float]:
        values = [v / minutes for v in counts.values()]
        return {
            "mean": round(statistics.mean(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    return {
        "window_seconds": round(minutes * 60, 1),
        "agents": len(ids),
        "sqs_per_agent_per_minute": rate(sqs),
        "sqs_operations": tally(c.operation for c in aws if c.actor == AGENT and c.service == "sqs"),
        "agent_api_per_agent_per_minute": rate(api_calls),
        "agent_api_routes": tally(route_of(c.path) for c in agent_api),
        "aws_behind_agent_api_per_agent_per_minute": rate(behind),
        "aws_behind_agent_api_operations": tally(op for inv in invocations for op in inv.aws),
        "agent_other_aws_calls": tally(f"{c.service}:{c.operation}" for c in other_agent_aws),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-agents", type=int, default=200)
    parser.add_argument("--fleet", default="10,1000,10000", help="fleet sizes, comma-separated, ascending")
    parser.add_argument("--requests", type=int, default=20, help="requests of each kind per fleet size")
    parser.add_argument(
        "--requests-large", type=int, default=8, help="requests of each kind above --janitor-max agents"
    )
    parser.add_argument("--janitor-max", type=int, default=1000, help="sweep with the janitor up to here")
    parser.add_argument("--idle-seconds", type=float, default=240.0)
    parser.add_argument("--workers", type=int, default=8, help="threads registering agents")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.fleet.split(",")]

    # Discovery must not scan the real machine 200 times a second: an empty TMPDIR, tmpdir mode.
    empty = tempfile.mkdtemp(prefix="dnmon-bench-fleet-")
    os.environ.update({"TMPDIR": empty, "DNMON_DISCOVERY": "tmpdir"})
    tempfile.tempdir = None

    meter = Meter()
    started = time.time()
    result: dict[str, Any] = {
        "real_agents": 0,
        "fleet_sizes": sizes,
        "discovery": "DNMON_DISCOVERY=tmpdir, empty TMPDIR; synthetic processes published via agent.control",
        "api_by_fleet_size": {},
        "setup_seconds": {},
    }
    levels, setup = result["api_by_fleet_size"], result["setup_seconds"]
    posted: list[tuple[str, str]] = []
    posted_before = 0
    with meter.installed(), stack(meter) as st:
        fleet = Fleet(st, meter, args.workers)
        try:
            for size in sizes:
                t = time.perf_counter()
                fleet.start_agents(max(0, min(args.real_agents, size) - len(fleet.agents)))
                setup[f"start_agents_to_{size}"] = round(time.perf_counter() - t, 1)
                t = time.perf_counter()
                fleet.seed(max(0, size - fleet.size))
                setup[f"seed_to_{size}"] = round(time.perf_counter() - t, 1)
                result["real_agents"] = len(fleet.agents)
                print(f"fleet of {fleet.size} ({len(fleet.agents)} polling): measuring", flush=True)
                large = fleet.size > args.janitor_max
                level = measure(fleet, args.requests_large if large else args.requests, posted)
                if not large:
                    level["janitor sweep"] = janitor_run(fleet)
                levels[str(fleet.size)] = level
                if len(fleet.agents) == args.real_agents and "delivery" not in result:
                    # Every real agent is up: one job each, all jobs so far checked, then the idle
                    # window (per-agent requests do not depend on how many agents are registered).
                    accepted = deliver_round(fleet, posted)
                    result["delivery"] = {"round_accepted": accepted, **check_delivery(fleet, posted, 120)}
                    delivery = result["delivery"]
                    print(f"delivery: {delivery['claimed_by_their_hosts_agent']}/{len(posted)}", flush=True)
                    time.sleep(5)
                    result["idle"] = idle(fleet, args.idle_seconds)
                    result["idle"]["registered_agents"] = fleet.size
                    posted_before = len(posted)
                save("fleet", result, show=False)
            later = posted[posted_before:]
            result["delivery_after_last_size"] = check_delivery(fleet, later, 120) if later else None
        finally:
            fleet.shutdown()
    result["total_seconds"] = round(time.time() - started, 1)
    return save("fleet", result)


if __name__ == "__main__":
    main()
