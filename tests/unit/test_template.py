"""infra/template.yaml, checked offline.

First the three steps of aws-facts.md (cfn-lint 1.x no longer runs the SAM transform, so linting the
SAM file alone misses errors): cfn-lint on the SAM file, the SAM transform, cfn-lint on the result.
Then what the rest of dnmon expects the template to say: handlers that exist, the store's table,
a private bucket, every route behind the MonitorApiKey authorizer, least-privilege policies.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dnmon_agent.local.template import load as load_local_routes
from dnmon_core.config import ServiceSettings
from dnmon_core.models import EventProvidersConfiguration
from dnmon_core.profiles import TraceProfile, profile_configuration
from dnmon_core.store import table_schema

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
FUNCTIONS = ROOT / "functions"

HANDLERS = {
    "ApiFunction": "dnmon_api.app.handler",
    "AuthorizerFunction": "dnmon_api.authorizer.handler",
    "ScheduleFunction": "dnmon_api.schedule.handler",
    "AgentApiFunction": "dnmon_api.agent_api.handler",
    "JanitorFunction": "dnmon_api.janitor.handler",
    "StreamFunction": "dnmon_api.streaming.handler",
}
# The capture routes stream (responseTransferMode: STREAM) from StreamFunction; the rest are ApiFunction's.
STREAMING_ROUTES = {
    ("POST", "/livemetrics"),
    ("GET", "/livemetrics"),
    ("POST", "/trace"),
    ("GET", "/trace"),
}
ROUTES = {
    ("POST", "/livemetrics"),
    ("GET", "/livemetrics"),
    ("POST", "/trace"),
    ("GET", "/trace"),
    ("GET", "/processes"),
    ("GET", "/processes/{pid}"),
    ("GET", "/processes/env"),
    ("GET", "/env"),
    ("GET", "/process"),
    ("GET", "/operations"),
    ("GET", "/operations/{operationId}"),
    ("DELETE", "/operations/{operationId}"),
    ("GET", "/operations/{operationId}/artifact"),
    ("GET", "/info"),
    ("GET", "/openapi.json"),
}
AGENT_ACTIONS = {
    "lambda:InvokeFunctionUrl",
    "lambda:InvokeFunction",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "kms:GetPublicKey",
}
PROBLEM_JSON = "'application/problem+json'"


# --- loading, transforming, linting ----------------------------------------------------------


def _parse(text: str) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse  # the parser sam-cli itself uses

    document: dict[str, Any] = yaml_parse(text)
    return document


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return _parse(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def transformed(sam: dict[str, Any]) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    document = copy.deepcopy(sam)
    # `sam build` packages local code; the translator only accepts S3 locations.
    for resource in _functions(document).values():
        resource["Properties"].pop("CodeUri", None)
    document["Globals"]["Function"]["CodeUri"] = "s3://placeholder-bucket/functions.zip"

    class NoManagedPolicies:  # the loader is asked for AWS managed policy ARNs by name
        def load(self, *args: Any) -> dict[str, str]:
            return {}

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        result: dict[str, Any] = transform(document, {}, NoManagedPolicies())
    return result


def _lint(text: str) -> list[str]:
    """cfn-lint's findings of level error or warning (informational ones are advice)."""
    from cfnlint.api import ManualArgs, lint

    matches = lint(text, config=ManualArgs(regions=["us-east-1"]))
    return [
        f"{m.rule.id} {m.rule.severity} line {m.linenumber}: {m.message}"
        for m in matches
        if m.rule.severity in ("error", "warning")
    ]


def _functions(document: dict[str, Any]) -> dict[str, Any]:
    return {name: r for name, r in document["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def _rest_api_body(transformed: dict[str, Any]) -> dict[str, Any]:
    apis = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    assert len(apis) == 1
    body: dict[str, Any] = apis[0]["Properties"]["Body"]
    return body


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_on_the_sam_file() -> None:
    assert _lint(TEMPLATE.read_text()) == []


def test_sam_transform_then_cfn_lint(transformed: dict[str, Any]) -> None:
    assert _lint(json.dumps(transformed)) == []
    types = {r["Type"] for r in transformed["Resources"].values()}
    assert {
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::Stage",
        "AWS::Lambda::Function",
        "AWS::Scheduler::Schedule",
        "AWS::IAM::ManagedPolicy",
        "AWS::DynamoDB::Table",
        "AWS::S3::Bucket",
        "AWS::SQS::Queue",
    } <= types


def test_the_lint_step_catches_a_broken_template() -> None:
    """The check is not vacuous: a billing mode DynamoDB does not have is an error."""
    broken = """
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_AS_YOU_GO
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
"""
    assert any("E3030 error" in finding for finding in _lint(broken))


# --- handlers --------------------------------------------------------------------------------


def handler_problems(handlers: Iterable[str], source_root: Path) -> list[str]:
    """What keeps each ``package.module.function`` handler from loading out of ``source_root``.

    Read with ``ast``, never imported: the module must exist as a file, every package on the way
    must have its ``__init__.py``, and the module must define a top-level function of that name.
    """
    problems: list[str] = []
    for handler in handlers:
        module, _, function = handler.rpartition(".")
        if not module or not function:
            problems.append(f"{handler}: not of the form module.function")
            continue
        parts = module.split(".")
        for depth in range(1, len(parts)):
            init = source_root.joinpath(*parts[:depth], "__init__.py")
            if not init.is_file():
                problems.append(f"{handler}: {init} does not exist")
        source = source_root.joinpath(*parts).with_suffix(".py")
        if not source.is_file():
            problems.append(f"{handler}: {source} does not exist")
            continue
        tree = ast.parse(source.read_text(), filename=str(source))
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        if function not in functions:
            problems.append(f"{handler}: {source} defines no top-level function {function!r}")
    return problems


def test_functions_and_their_handlers(sam: dict[str, Any]) -> None:
    functions = _functions(sam)
    assert {name: f["Properties"]["Handler"] for name, f in functions.items()} == HANDLERS
    assert handler_problems(HANDLERS.values(), FUNCTIONS) == []


def test_code_uri_is_the_functions_source_root(sam: dict[str, Any]) -> None:
    """One root holding dnmon_core and dnmon_api side by side, itself not a package."""
    code_uri = sam["Globals"]["Function"]["CodeUri"]
    assert (TEMPLATE.parent / code_uri).resolve() == FUNCTIONS
    assert not any("CodeUri" in f["Properties"] for f in _functions(sam).values())
    assert not (FUNCTIONS / "__init__.py").exists()
    for package in ("dnmon_core", "dnmon_api"):
        assert (FUNCTIONS / package / "__init__.py").is_file(), package


def _stub_root(root: Path) -> Path:
    """Throwaway sources: app.py as it should be, authorizer.py without a handler, no schedule.py."""
    package = root / "dnmon_api"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("def handler(event, context):\n    return {}\n")
    (package / "authorizer.py").write_text("def authorize(event, context):\n    return {}\n\nhandler = 1\n")
    (package / "agent_api.py").write_text("def handler(event, context):\n    return {}\n")
    (package / "janitor.py").write_text("def handler(event, context):\n    return {}\n")
    (package / "streaming.py").write_text("def handler(event, context, stream):\n    return None\n")
    return root


def test_the_handler_check_reports_what_is_missing(tmp_path: Path) -> None:
    problems = handler_problems(HANDLERS.values(), _stub_root(tmp_path / "functions"))
    assert len(problems) == 2, problems
    assert "dnmon_api.authorizer.handler" in problems[0] and "no top-level function" in problems[0]
    assert "dnmon_api.schedule.handler" in problems[1] and "does not exist" in problems[1]
    assert handler_problems(["nomodule"], tmp_path) == ["nomodule: not of the form module.function"]
    missing_init = handler_problems(["pkg.mod.handler"], tmp_path)
    assert any("__init__.py does not exist" in p for p in missing_init)


# --- configuration ---------------------------------------------------------------------------


def test_parameters(sam: dict[str, Any]) -> None:
    parameters = sam["Parameters"]
    defaults = {name: p.get("Default") for name, p in parameters.items()}
    assert defaults == {
        "StageName": "v1",
        "TraceLimit": 3,
        "LiveMetricsLimit": 3,
        "FleetTraceLimit": "",
        "FleetLiveMetricsLimit": "",
        "ArtifactRetentionDays": 30,
        "AuthSubject": None,
        "AuthPublicKey": None,
        "AuthIssuer": "https://github.com/dotnet/dotnet-monitor/generatekey+MonitorApiKey",
        "StreamMaxSeconds": 840,
        "AgentQueuePrefix": "dnmon-agent-",
    }
    assert parameters["AuthPublicKey"]["NoEcho"] is True


def _resolve(value: Any, sam: dict[str, Any]) -> str:
    """An environment value as a string: parameters take their defaults, resources their names."""
    parameters = sam["Parameters"]
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        return str(parameters[name].get("Default", f"<{name}>")) if name in parameters else f"res-{name}"
    if isinstance(value, dict) and "Fn::Sub" in value:
        return re.sub(r"\$\{([^}]+)\}", lambda m: _resolve({"Ref": m.group(1)}, sam), value["Fn::Sub"])
    return str(value)


def _environment(sam: dict[str, Any], function: str) -> dict[str, str]:
    merged = dict(sam["Globals"]["Function"]["Environment"]["Variables"])
    merged.update(_functions(sam)[function]["Properties"].get("Environment", {}).get("Variables", {}))
    return {name: _resolve(value, sam) for name, value in merged.items()}


def test_globals(sam: dict[str, Any]) -> None:
    function = sam["Globals"]["Function"]
    assert function["Runtime"] == "python3.12"  # Amazon Linux 2023; python3.11 runs on AL2 (EOL)
    assert function["Architectures"] in (["arm64"], ["x86_64"])
    assert function["Timeout"] <= 29  # API Gateway's integration timeout
    variables = function["Environment"]["Variables"]
    assert variables["POWERTOOLS_SERVICE_NAME"] == "dnmon"
    assert variables["DNMON_TABLE"] == {"Ref": "Table"}
    assert variables["DNMON_BUCKET"] == {"Ref": "ArtifactBucket"}
    assert variables["DNMON_TRACE_LIMIT"] == {"Ref": "TraceLimit"}
    assert variables["DNMON_LIVEMETRICS_LIMIT"] == {"Ref": "LiveMetricsLimit"}
    assert variables["DNMON_STREAM_MAX_SECONDS"] == {"Ref": "StreamMaxSeconds"}
    assert variables["DNMON_AGENT_QUEUE_PREFIX"] == {"Ref": "AgentQueuePrefix"}
    assert variables["DNMON_SIGNING_KEY"] == {"Fn::GetAtt": ["SigningKey", "Arn"]}
    assert variables["DNMON_FLEET_TRACE_LIMIT"] == {"Ref": "FleetTraceLimit"}


def test_the_environment_configures_the_service(sam: dict[str, Any]) -> None:
    """What the template sets is what dnmon_core.config reads, and it parses."""
    settings = ServiceSettings.from_env(_environment(sam, "ApiFunction"))
    assert settings.table == "res-Table"
    assert settings.bucket == "res-ArtifactBucket"
    assert settings.stream_max_seconds == 840
    assert set(settings.limits.values()) == {3}
    assert settings.fleet_limits == {}  # no fleet cap unless one is configured
    assert settings.egress_providers["s3"].bucket == "res-ArtifactBucket"


def test_only_the_authorizer_holds_the_api_key_configuration(sam: dict[str, Any]) -> None:
    auth = {
        "Authentication__MonitorApiKey__Subject": "<AuthSubject>",
        "Authentication__MonitorApiKey__PublicKey": "<AuthPublicKey>",
        "Authentication__MonitorApiKey__Issuer": sam["Parameters"]["AuthIssuer"]["Default"],
    }
    environment = _environment(sam, "AuthorizerFunction")
    assert {name: environment[name] for name in auth} == auth
    for function in ("ApiFunction", "ScheduleFunction"):
        assert not auth.keys() & _environment(sam, function).keys(), function


# --- API --------------------------------------------------------------------------------------


def test_api_is_rest_and_the_capture_routes_stream(sam: dict[str, Any], transformed: dict[str, Any]) -> None:
    """The four capture routes go to StreamFunction through InvokeWithResponseStream; nothing is
    base64-encoded any more, so the API declares no binary media types (docs/streaming.md)."""
    api = sam["Resources"]["Api"]
    assert api["Type"] == "AWS::Serverless::Api"
    assert api["Properties"]["StageName"] == {"Ref": "StageName"}
    body = _rest_api_body(transformed)
    assert "x-amazon-apigateway-binary-media-types" not in body
    streamed = {
        (verb, path)
        for verb, path, operation in _operations(body)
        if operation["x-amazon-apigateway-integration"].get("responseTransferMode") == "STREAM"
    }
    assert streamed == {
        ("GET", "/livemetrics"),
        ("POST", "/livemetrics"),
        ("GET", "/trace"),
        ("POST", "/trace"),
    }
    for verb, path in streamed:
        integration = body["paths"][path][verb.lower()]["x-amazon-apigateway-integration"]
        uri = json.dumps(integration["uri"])
        assert "2021-11-15/functions/${StreamFunction.Arn}/response-streaming-invocations" in uri
        assert integration["type"] == "aws_proxy" and integration["httpMethod"] == "POST"
        assert integration["timeoutInMillis"] == 900000
    stream = _functions(sam)["StreamFunction"]["Properties"]
    assert stream["Timeout"] == 900
    wrapper = stream["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"]
    assert wrapper == "/var/task/dnmon_api/stream_bootstrap"
    script = ROOT / "functions" / wrapper.removeprefix("/var/task/")
    assert os.access(script, os.X_OK), "Lambda runs the wrapper only if it is executable"
    permission = sam["Resources"]["StreamInvokePermission"]["Properties"]
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["FunctionName"] == {"Fn::GetAtt": ["StreamFunction", "Arn"]}


def _operations(body: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in body["paths"].items():
        for verb, operation in methods.items():
            yield verb.upper(), path, operation


def test_every_route_is_behind_the_default_authorizer(
    sam: dict[str, Any], transformed: dict[str, Any]
) -> None:
    auth = sam["Resources"]["Api"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "MonitorApiKey"
    authorizer = auth["Authorizers"]["MonitorApiKey"]
    assert authorizer["FunctionPayloadType"] == "REQUEST"
    assert authorizer["FunctionArn"] == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    for event in _functions(sam)["ApiFunction"]["Properties"]["Events"].values():
        assert "Auth" not in event["Properties"], event  # nobody opts out

    body = _rest_api_body(transformed)
    schemes = body.get("components", {}).get("securitySchemes") or body["securityDefinitions"]
    deployed = schemes["MonitorApiKey"]["x-amazon-apigateway-authorizer"]
    assert deployed["type"] == "request"
    assert deployed["identitySource"] == "method.request.header.Authorization"
    assert deployed["authorizerResultTtlInSeconds"] == 300
    assert "AuthorizerFunction" in json.dumps(deployed["authorizerUri"])

    operations = list(_operations(body))
    assert {(verb, path) for verb, path, _ in operations} == ROUTES
    for verb, path, operation in operations:
        assert operation["security"] == [{"MonitorApiKey": []}], (verb, path)
        integration = operation["x-amazon-apigateway-integration"]
        if (verb, path) in STREAMING_ROUTES:
            assert "${StreamFunction.Arn}/response-streaming-invocations" in json.dumps(integration["uri"])
            assert integration["responseTransferMode"] == "STREAM"
        else:
            assert "ApiFunction.Arn" in json.dumps(integration["uri"]), (verb, path)


def test_routes_are_what_the_local_stack_serves() -> None:
    api = load_local_routes(TEMPLATE)
    assert api.authorizer_handler == HANDLERS["AuthorizerFunction"]
    assert {(r.method, r.path) for r in api.routes} == ROUTES
    for route in api.routes:
        streaming = (route.method, route.path) in STREAMING_ROUTES
        assert route.streaming is streaming, route
        expected = "StreamFunction" if streaming else "ApiFunction"
        assert (route.function, route.handler) == (expected, HANDLERS[expected]), route
    stream = api.function("StreamFunction")
    assert stream.timeout_seconds == 900  # API Gateway's streaming limit: 15 minutes
    assert stream.exec_wrapper == "/var/task/dnmon_api/stream_bootstrap"
    assert (FUNCTIONS / "dnmon_api" / "stream_bootstrap").is_file()
    resolved = api.resolve("GET", "/processes/env")
    assert resolved is not None and resolved[0].path == "/processes/env"


def _filled(template: str) -> str:
    """A gateway response template as API Gateway fills it ($context.error.messageString is quoted)."""
    template = template.replace("$context.error.messageString", '"Unauthorized"')
    return re.sub(r"\$context\.[A-Za-z.]+", "value", template)


def test_gateway_answers_are_problem_json(transformed: dict[str, Any]) -> None:
    responses = _rest_api_body(transformed)["x-amazon-apigateway-gateway-responses"]
    assert {"UNAUTHORIZED", "ACCESS_DENIED", "DEFAULT_4XX", "DEFAULT_5XX"} <= responses.keys()
    for kind, response in responses.items():
        assert response["responseParameters"]["gatewayresponse.header.Content-Type"] == PROBLEM_JSON, kind
        for template in response["responseTemplates"].values():
            problem = json.loads(_filled(template))
            assert {"type", "title", "detail"} <= problem.keys(), kind
            if "statusCode" in response:
                assert problem["status"] == int(response["statusCode"]), kind
    assert responses["UNAUTHORIZED"]["statusCode"] == "401"
    assert responses["UNAUTHORIZED"]["responseParameters"]["gatewayresponse.header.WWW-Authenticate"] == (
        "'Bearer'"
    )
    assert responses["ACCESS_DENIED"]["statusCode"] == "403"


# --- state -------------------------------------------------------------------------------------


def test_table_matches_the_store(sam: dict[str, Any]) -> None:
    table = sam["Resources"]["Table"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    properties = table["Properties"]
    schema = table_schema()
    for key, value in schema.items():
        assert properties[key] == value, key
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True


def test_bucket_is_private_encrypted_and_expires_artifacts(sam: dict[str, Any]) -> None:
    resources = sam["Resources"]
    bucket = resources["ArtifactBucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert all(rule["Status"] == "Enabled" for rule in rules)
    assert {"Ref": "ArtifactRetentionDays"} in [rule.get("ExpirationInDays") for rule in rules]
    assert {"DaysAfterInitiation": 1} in [rule.get("AbortIncompleteMultipartUpload") for rule in rules]

    policies = [r for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy"]
    assert [p["Properties"]["Bucket"] for p in policies] == [{"Ref": "ArtifactBucket"}]
    tls_only = [
        s
        for s in policies[0]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(tls_only) == 1
    assert tls_only[0]["Principal"] == "*" and tls_only[0]["Action"] == "s3:*"
    assert len(_as_list(tls_only[0]["Resource"])) == 2  # the bucket and its objects


def test_dead_letter_queue_and_outputs(sam: dict[str, Any]) -> None:
    assert sam["Resources"]["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    outputs = sam["Outputs"]
    assert set(outputs) == {
        "ApiUrl",
        "TableName",
        "BucketName",
        "AgentHostPolicyArn",
        "DeadLetterQueueArn",
        "SigningKeyArn",
        "AgentApiUrl",
        "ScheduleDeadLetterQueueUrl",
        "ScheduleFunctionDeadLetterQueueUrl",
    }
    assert outputs["DeadLetterQueueArn"]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert outputs["AgentHostPolicyArn"]["Value"] == {"Ref": "AgentHostPolicy"}
    assert "${StageName}" in outputs["ApiUrl"]["Value"]["Fn::Sub"]


# --- schedule ----------------------------------------------------------------------------------


def _sample_schedule(sam: dict[str, Any]) -> dict[str, Any]:
    (event,) = _functions(sam)["ScheduleFunction"]["Properties"]["Events"].values()
    schedule: dict[str, Any] = event
    return schedule


def _deployed_sample_schedule(transformed: dict[str, Any]) -> dict[str, Any]:
    schedules = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Scheduler::Schedule"]
    (schedule,) = [
        s for s in schedules if s["Properties"]["Target"]["Arn"] != {"Fn::GetAtt": ["JanitorFunction", "Arn"]}
    ]
    return schedule


def test_sample_schedule_is_a_disabled_nightly_30s_cpu_trace_of_a_named_host(
    sam: dict[str, Any], transformed: dict[str, Any]
) -> None:
    event = _sample_schedule(sam)
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["State"] == "DISABLED"
    assert event["Properties"]["ScheduleExpression"] == "cron(0 3 * * ? *)"  # nightly

    payload = json.loads(event["Properties"]["Input"])
    assert payload["route"] == "/trace"
    assert payload["query"] == {
        "host": "web-1",
        "name": "dotnet",
        "durationSeconds": "30",
        "egressProvider": "s3",
    }
    body = EventProvidersConfiguration.model_validate(payload["body"])
    assert body == profile_configuration(TraceProfile.Cpu)
    settings = ServiceSettings.from_env(_environment(sam, "ScheduleFunction"))
    assert payload["query"]["egressProvider"] in settings.egress_providers

    schedule = _deployed_sample_schedule(transformed)
    assert schedule["Properties"]["State"] == "DISABLED"
    assert schedule["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": ["ScheduleFunction", "Arn"]}
    assert json.loads(schedule["Properties"]["Target"]["Input"]) == payload


def _queue_arn(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


def test_failed_scheduled_captures_are_dead_lettered(
    sam: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """Scheduler's own DLQ for events that never reached the function; the function's DLQ for
    invocations that still failed (the handler raises) after Lambda's asynchronous retries."""
    resources = transformed["Resources"]
    for name in ("ScheduleDeadLetterQueue", "ScheduleFunctionDeadLetterQueue"):
        queue = sam["Resources"][name]
        assert queue["Type"] == "AWS::SQS::Queue", name
        assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600, name
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name
        assert sam["Outputs"][f"{name}Url"]["Value"] == {"Ref": name}

    # Scheduler: retries, then its DLQ, which the schedule's role may send to.
    target = _deployed_sample_schedule(transformed)["Properties"]["Target"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 300}
    assert target["DeadLetterConfig"] == {"Arn": _queue_arn("ScheduleDeadLetterQueue")}
    scheduler_role = resources[target["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    granted = [s for p in scheduler_role["Policies"] for s in _as_list(p["PolicyDocument"]["Statement"])]
    assert {
        "Action": "sqs:SendMessage",
        "Effect": "Allow",
        "Resource": _queue_arn("ScheduleDeadLetterQueue"),
    } in granted

    # Lambda: two retries within five minutes, then the function's DLQ.
    function = resources["ScheduleFunction"]["Properties"]
    assert function["DeadLetterConfig"] == {"TargetArn": _queue_arn("ScheduleFunctionDeadLetterQueue")}
    (invoke_config,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventInvokeConfig"
        and r["Properties"]["FunctionName"] == {"Ref": "ScheduleFunction"}
    ]
    assert invoke_config["MaximumRetryAttempts"] == 2
    assert invoke_config["MaximumEventAgeInSeconds"] == 300
    assert invoke_config["Qualifier"] == "$LATEST"  # what the schedule invokes: the unqualified ARN


# --- least privilege ---------------------------------------------------------------------------


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = _as_list(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _assert_no_wildcards(statements: list[dict[str, Any]]) -> None:
    for statement in statements:
        assert statement["Effect"] == "Allow", statement
        assert not any("*" in action for action in _as_list(statement["Action"])), statement
        assert "*" not in _as_list(statement["Resource"]), statement
        assert "NotAction" not in statement and "NotResource" not in statement, statement


def test_agent_host_policy_is_least_privilege(sam: dict[str, Any]) -> None:
    policy = sam["Resources"]["AgentHostPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    statements = _statements(policy)
    _assert_no_wildcards(statements)
    actions = {action for s in statements for action in _as_list(s["Action"])}
    assert actions == AGENT_ACTIONS  # no DynamoDB, no queue attributes (tests/unit/test_agent_policy.py)
    resources = json.dumps([s["Resource"] for s in statements])
    assert "${AgentQueuePrefix}*" in resources
    assert "${ArtifactBucket.Arn}/artifacts/${!aws:userid}/*" in resources
    assert "Table" not in resources


def test_function_roles_are_least_privilege(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    basic = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    # The authorizer: logs, nothing more.
    authorizer = resources["AuthorizerFunctionRole"]["Properties"]
    assert authorizer["ManagedPolicyArns"] == [basic]
    assert "Policies" not in authorizer
    # The API, streaming and schedule functions: logs plus the one control-plane policy; the
    # schedule function may also send to its dead-letter queue (SAM's policy for DeadLetterQueue).
    for role in ("ApiFunctionRole", "StreamFunctionRole", "ScheduleFunctionRole"):
        properties = resources[role]["Properties"]
        assert properties["ManagedPolicyArns"] == [basic, {"Ref": "ControlPlanePolicy"}], role
    assert "Policies" not in resources["ApiFunctionRole"]["Properties"]
    assert "Policies" not in resources["StreamFunctionRole"]["Properties"]
    (dead_letter,) = resources["ScheduleFunctionRole"]["Properties"]["Policies"]
    assert _statements({"Properties": dead_letter}) == [
        {
            "Action": "sqs:SendMessage",
            "Effect": "Allow",
            "Resource": _queue_arn("ScheduleFunctionDeadLetterQueue"),
        }
    ]
    statements = _statements(resources["ControlPlanePolicy"])
    _assert_no_wildcards(statements)
    by_service: dict[str, set[str]] = {}
    for statement in statements:
        for action in _as_list(statement["Action"]):
            by_service.setdefault(action.split(":")[0], set()).add(action)
    assert set(by_service) == {"dynamodb", "s3", "sqs", "kms"}
    assert by_service["kms"] == {"kms:Sign"}
    assert by_service["s3"] == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
    (listing,) = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing["Resource"] == {"Fn::GetAtt": ["ArtifactBucket", "Arn"]}  # 404 for a chunk to come
    assert by_service["sqs"] == {"sqs:SendMessage", "sqs:GetQueueUrl"}
    assert "${AgentQueuePrefix}*" in json.dumps(statements)
