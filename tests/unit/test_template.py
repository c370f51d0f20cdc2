"""infra/template.yaml, checked offline in three steps (aws-facts.md): cfn-lint on the SAM file,
the SAM transform, cfn-lint on the result; then what the template must say about dnmon."""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dnmon_agent.local.template import _CfnLoader, load
from dnmon_core.store import table_schema

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return document


@pytest.fixture(scope="module")
def transformed(sam: dict[str, Any]) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    document = copy.deepcopy(sam)
    document["Globals"]["Function"]["CodeUri"] = (
        "s3://placeholder/functions.zip"  # local paths are packaged by sam
    )

    class Loader:
        def load(self, *args: Any) -> dict[str, Any]:
            return {}

    result: dict[str, Any] = transform(document, {}, Loader())
    return result


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True, check=False)


def test_cfn_lint_on_the_sam_file() -> None:
    result = _lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_on_the_transformed_template(transformed: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "transformed.json"
    path.write_text(json.dumps(transformed))
    result = _lint(path)
    assert result.returncode == 0, result.stdout + result.stderr
    types = {r["Type"] for r in transformed["Resources"].values()}
    assert {"AWS::ApiGateway::RestApi", "AWS::Scheduler::Schedule", "AWS::IAM::ManagedPolicy"} <= types


def test_every_handler_exists(sam: dict[str, Any]) -> None:
    handlers = [
        r["Properties"]["Handler"]
        for r in sam["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    assert len(handlers) == 3
    for handler in handlers:
        module, function = handler.rsplit(".", 1)
        source = ROOT / "functions" / (module.replace(".", "/") + ".py")
        assert source.exists(), handler
        names = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert function in names, handler


def test_table_matches_the_store(sam: dict[str, Any]) -> None:
    table = sam["Resources"]["Table"]["Properties"]
    schema = table_schema()
    for key in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode"):
        assert table[key] == schema[key], key
    assert table["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


def test_bucket_is_private_and_encrypted(sam: dict[str, Any]) -> None:
    bucket = sam["Resources"]["ArtifactBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_every_route_is_behind_the_authorizer(transformed: dict[str, Any]) -> None:
    methods = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    body = methods[0]["Properties"]["Body"]
    authorizer = body["securityDefinitions"]["MonitorApiKey"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "request"
    assert authorizer["identitySource"] == "method.request.header.Authorization"
    paths = body["paths"]
    assert len(paths) == 10
    for path, operations in paths.items():
        for verb, operation in operations.items():
            assert operation.get("security") == [{"MonitorApiKey": []}], (path, verb)


def test_routes_are_what_the_local_stack_serves() -> None:
    api = load(TEMPLATE)
    assert api.authorizer_handler == "dnmon_api.authorizer.handler"
    assert ("POST", "/livemetrics") in {(r.method, r.path) for r in api.routes}
    resolved = api.resolve("GET", "/processes/env")
    assert resolved is not None and resolved[0].path == "/processes/env"


def test_agent_policy_is_least_privilege(sam: dict[str, Any]) -> None:
    statements = sam["Resources"]["AgentHostPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions), statement
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert "*" not in resources, statement
