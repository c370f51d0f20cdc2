"""``dnmon up``: the whole system on this machine, on loopback only.

moto in server mode stands in for S3, SQS and DynamoDB (with the resources the SAM template
declares), the local gateway serves the template's routes through the real authorizer and API
handlers, and one real agent captures from this host's .NET processes. The same code runs in AWS.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import boto3

from dnmon_core.apikey import generate_key
from dnmon_core.store import table_schema

from ..diagnostics.discovery import find_sockets
from ..worker import Agent, AgentSettings
from . import dotnet, template
from .function_url import start_agent_api
from .gateway import GatewayServer, GatewaySettings, wait_until_serving
from .resources import create_signing_key
from .runtime_api import LocalFunction, RuntimeApiError
from .sigv4 import Identity

log = logging.getLogger("dnmon.local")

DEFAULT_PORT = 52323  # dotnet-monitor's
ROOT_MARKERS = ("infra/template.yaml",)


# The seed pages' sample requests (the meter example joined to the EventCounter one).
SEED_LIVEMETRICS_BODY: dict[str, Any] = {
    "includeDefaultProviders": False,
    "providers": [{"providerName": "CustomProvider", "counterNames": ["counter1", "counter2"]}],
    "meters": [{"meterName": "CustomMeter", "instrumentNames": ["myHistogram"]}],
}
SEED_TRACE_BODY: dict[str, Any] = {
    "Providers": [
        {"Name": "Microsoft-DotNETCore-SampleProfiler", "EventLevel": "Informational"},
        {
            "Name": "Microsoft-Windows-DotNETRuntime",
            "EventLevel": "Informational",
            "Keywords": "0x14C14FCCBD",
        },
    ],
    "BufferSizeInMB": 1024,
}


LOCAL_USER_ID = "AIDADNMONLOCALAGENT"  # what aws:userid is for the stack's one identity


class UpError(Exception):
    """``dnmon up`` cannot start; the message says why and what to do."""


def project_root(start: Path | None = None) -> Path:
    """The checkout holding infra/template.yaml (the cwd or one of its parents, else the package's)."""
    candidates = [start or Path.cwd(), Path(__file__).resolve()]
    for candidate in candidates:
        for folder in (candidate, *candidate.parents):
            if all((folder / marker).exists() for marker in ROOT_MARKERS):
                return folder
    raise UpError("infra/template.yaml not found: run dnmon up from the dnmon checkout")


@dataclass
class StackOptions:
    port: int = DEFAULT_PORT
    auth: bool = True
    sample_app: bool = False
    artifacts: Path = Path("artifacts")
    interval_seconds: float = 5.0


@dataclass
class LocalStack:
    options: StackOptions
    root: Path = field(default_factory=project_root)
    token: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    _cleanup: list[Callable[[], None]] = field(default_factory=list)
    _lock_file: IO[str] | None = None
    sample_app_pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    # --- start -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._take_lock()
            self._start_moto()
            self._create_resources()
            self._configure_auth()
            self._start_gateway()
            self._start_agent_api()
            self._start_agent()
            if self.options.sample_app:
                self._start_sample_app()
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        """One ``up`` per port: a second one says so instead of failing half-way."""
        path = Path(tempfile.gettempdir()) / f"dnmon-up-{self.options.port}.lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UpError(f"dnmon up is already running on port {self.options.port} ({owner})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock_file = handle

        def release() -> None:
            handle.close()
            path.unlink(missing_ok=True)

        self._cleanup.append(release)

    def _start_moto(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._cleanup.append(server.stop)
        host, port = server.get_host_and_port()
        suffix = uuid.uuid4().hex[:8]
        self.env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "dnmon-local",
            "AWS_SECRET_ACCESS_KEY": "dnmon-local",
            "DNMON_TABLE": f"dnmon-local-{suffix}",
            "DNMON_BUCKET": f"dnmon-local-{suffix}",
            "DNMON_AGENT_QUEUE_PREFIX": "dnmon-agent-",
            "DNMON_COUNTER_INTERVAL_SECONDS": str(self.options.interval_seconds),
            "DNMON_PUBLIC_URL": self.url,  # Location headers name the API as configured
            "DNMON_EGRESS_PROVIDERS": json.dumps(
                {
                    "s3": {"type": "s3", "bucketName": f"dnmon-local-{suffix}", "prefix": "egress/"},
                    "local": {"type": "filesystem", "directoryPath": str(self.options.artifacts.resolve())},
                }
            ),
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
        }
        os.environ.update(self.env)  # the handlers and the agent read the process environment

    def _create_resources(self) -> None:
        boto3.client("dynamodb").create_table(TableName=self.env["DNMON_TABLE"], **table_schema())
        boto3.client("s3").create_bucket(Bucket=self.env["DNMON_BUCKET"])
        dlq = boto3.client("sqs").create_queue(QueueName="dnmon-agent-dlq")["QueueUrl"]
        attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        self.env["DNMON_DEAD_LETTER_ARN"] = attributes["Attributes"]["QueueArn"]
        # The key that signs every job, as the template's SigningKey: the agent verifies with its public half.
        self.env["DNMON_SIGNING_KEY"] = create_signing_key(boto3.client("kms"))
        self.options.artifacts.mkdir(parents=True, exist_ok=True)
        self.env["DNMON_EGRESS_DIRECTORIES"] = str(self.options.artifacts.resolve())
        os.environ.update(self.env)

    def _configure_auth(self) -> None:
        if not self.options.auth:
            os.environ["DNMON_AUTH_DISABLED"] = "1"
            return
        key = generate_key(expiry=timedelta(days=1))
        self.token = key.token
        os.environ.update(
            {
                "Authentication__MonitorApiKey__Subject": key.subject,
                "Authentication__MonitorApiKey__PublicKey": key.public_key,
            }
        )
        os.environ.pop("DNMON_AUTH_DISABLED", None)

    def _start_gateway(self) -> None:
        """The template's routes: buffered ones in-process, streaming ones through the Runtime API."""
        try:
            api = template.load(self.root / "infra" / "template.yaml")
        except template.TemplateError as exc:
            raise UpError(str(exc)) from exc
        functions: dict[str, LocalFunction] = {}
        try:
            for function in api.streaming_functions():
                local = LocalFunction(function, self.root / "functions")
                self._cleanup.append(local.close)
                local.start(warm=1)
                functions[function.logical_id] = local
        except RuntimeApiError as exc:
            raise UpError(f"cannot run the streaming functions: {exc}") from exc
        settings = GatewaySettings(public_url=self.url, auth_enabled=self.options.auth)
        try:
            gateway = GatewayServer(api, functions, port=self.options.port, settings=settings)
        except OSError as exc:
            raise UpError(
                f"port {self.options.port} is taken ({exc.strerror}); choose another with --port"
            ) from exc
        gateway.start()
        self._cleanup.append(gateway.stop)
        wait_until_serving(f"{self.url}/info")

    def _start_agent_api(self) -> None:
        """The agent API behind a local AWS_IAM function URL: the agent signs with the stack's key."""
        key = self.env["AWS_ACCESS_KEY_ID"]
        identity = Identity(
            self.env["AWS_SECRET_ACCESS_KEY"], f"arn:aws:iam::123456789012:user/{key}", LOCAL_USER_ID
        )
        try:
            server = start_agent_api(self.root / "infra" / "template.yaml", {key: identity})
        except template.TemplateError as exc:
            raise UpError(str(exc)) from exc

        def stop_server() -> None:
            server.shutdown()
            server.server_close()

        self._cleanup.append(stop_server)
        self.env["DNMON_AGENT_API_URL"] = os.environ["DNMON_AGENT_API_URL"] = server.url

    def _start_agent(self) -> None:
        settings = AgentSettings.from_env(os.environ)
        settings.poll_seconds = 2  # a quick Ctrl-C; long polling on moto is real
        agent = Agent(settings)
        agent.register()
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
        thread.start()

        def stop_agent() -> None:
            stop.set()
            thread.join(timeout=150)

        self._cleanup.append(stop_agent)
        self.agent = agent

    def _start_sample_app(self) -> None:
        source = self.root / "examples" / "DemoApp.cs"
        dll = dotnet.build_app(source, self.root / ".dnmon-cache" / "apps")
        command, env = dotnet.launch(dll, "demo")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sample_app_pid = process.pid

        def stop_app() -> None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        self._cleanup.append(stop_app)  # stopped first: the agent then ends its captures quickly
        deadline = time.monotonic() + 30
        while process.pid not in find_sockets():
            if process.poll() is not None or time.monotonic() > deadline:
                raise UpError(f"the sample app did not start (exit code {process.poll()})")
            time.sleep(0.1)
        self.agent.refresh_processes()  # announce it now rather than at the next scan

    # --- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        while self._cleanup:
            step = self._cleanup.pop()
            try:
                step()
            except Exception:  # keep stopping the rest
                log.exception("stopping %s failed", step)


def banner(stack: LocalStack) -> str:
    """What ``dnmon up`` prints: how to call it, with both seed requests ready to paste."""
    auth = f' -H "Authorization: Bearer {stack.token}"' if stack.token else ""
    lines = [
        f"dnmon is up on {stack.url} (moto {stack.env['AWS_ENDPOINT_URL']}, agent {stack.agent.agent_id!r})."
    ]
    if stack.token:
        lines += ["Temporary API key (valid 1 day, this run only):", f"Authorization: Bearer {stack.token}"]
    else:
        lines += [
            "",
            "WARNING: authentication is OFF (--no-auth): anyone who can reach this port can capture.",
            "",
        ]
    if stack.sample_app_pid:
        lines.append(f"Sample app: pid {stack.sample_app_pid} (examples/DemoApp.cs)")
    pid = stack.sample_app_pid or "<pid>"
    metrics = json.dumps(SEED_LIVEMETRICS_BODY, separators=(",", ":"))
    trace = json.dumps(SEED_TRACE_BODY, separators=(",", ":"))
    lines += [
        "",
        "Processes:",
        f"  curl -s{auth} {stack.url}/processes",
        "Live metrics (json-seq as it is produced):",
        f"  curl -s --no-buffer{auth} -H 'Content-Type: application/json' -X POST "
        f"'{stack.url}/livemetrics?pid={pid}&durationSeconds=60' -d '{metrics}' | jq --seq .",
        "CPU trace to a file:",
        f"  curl -s{auth} -H 'Content-Type: application/json' -X POST "
        f"'{stack.url}/trace?pid={pid}&durationSeconds=10' -d '{trace}' -o app.nettrace",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run(options: StackOptions, out: IO[str] = sys.stdout) -> int:
    stack = LocalStack(options)
    stop = threading.Event()
    import signal

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    stack.start()
    try:
        print(banner(stack), file=out, flush=True)
        # Wake up regularly: a signal that lands on another thread only sets a flag, and Python
        # runs the handler when the main thread next runs bytecode — never, in an endless wait.
        while not stop.wait(0.5):
            pass
        print("dnmon up: stopping…", file=out, flush=True)
    finally:
        stack.stop()
    print("dnmon up: stopped.", file=out, flush=True)
    return 0
