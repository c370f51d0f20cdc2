"""A compromised host reaches only its own host: the template's agent policy, plus the queue policy
the agent API gives each agent's queue, evaluated for two hosts over every action an agent needs
and every attack from the threat model (README, "Security")."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from dnmon_agent.local.template import read
from dnmon_api.agent_api import queue_policy
from tests.iam import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Request, Stack, evaluate

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
ACCOUNT, REGION = "123456789012", "eu-west-1"
BUCKET = "dnmon-artifacts"
FUNCTIONS = {name: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" for name in ("agent-api", "api")}
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dnmon-agent-{{}}"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/dnmon"
ARTIFACT = "20261130_101010_123_42.nettrace"


class Host:
    """An EC2 instance: its role session is named after the instance, as EC2 names it."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.user_id = f"AROAAGENTROLE:{instance}"
        self.arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/dnmon-agent/{instance}"
        self.queue = QUEUE.format(instance)


A, B = Host("i-0aaaaaaaaaaaaaaaa"), Host("i-0bbbbbbbbbbbbbbbb")


@pytest.fixture(scope="module")
def agent_policy() -> dict[str, Any]:
    template = read(TEMPLATE)
    stack = Stack(
        refs={"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
              "AgentQueuePrefix": "dnmon-agent-", "ArtifactBucket": BUCKET},
        attributes={"AgentApiFunction.Arn": FUNCTIONS["agent-api"], "SigningKey.Arn": KEY,
                    "ArtifactBucket.Arn": f"arn:aws:s3:::{BUCKET}", "Table.Arn": TABLE},
    )  # fmt: skip
    document: dict[str, Any] = stack.resolve(
        template["Resources"]["AgentHostPolicy"]["Properties"]["PolicyDocument"]
    )
    return document


def _decide(agent_policy: dict[str, Any], host: Host, action: str, resource: str, **context: str) -> str:
    keys = {"aws:userid": host.user_id, **{k.replace("__", ":").lower(): v for k, v in context.items()}}
    resource_policy = None
    if resource.startswith("arn:aws:sqs:"):
        owner = A if resource == A.queue else B if resource == B.queue else None
        resource_policy = queue_policy(resource, owner.user_id) if owner else None
    return evaluate(Request(host.arn, action, resource, keys), [agent_policy], resource_policy)


URL_CALL = {"lambda__FunctionUrlAuthType": "AWS_IAM", "lambda__InvokedViaFunctionUrl": "true"}


def _needs(host: Host) -> list[tuple[str, str, dict[str, str]]]:
    """Every call an agent makes in normal work, on its own things."""
    return [
        ("lambda:InvokeFunctionUrl", FUNCTIONS["agent-api"], URL_CALL),
        ("lambda:InvokeFunction", FUNCTIONS["agent-api"], URL_CALL),
        ("sqs:ReceiveMessage", host.queue, {}),
        ("sqs:DeleteMessage", host.queue, {}),
        ("sqs:ChangeMessageVisibility", host.queue, {}),
        ("kms:GetPublicKey", KEY, {}),
        (
            "s3:PutObject",
            f"arn:aws:s3:::{BUCKET}/artifacts/{host.user_id}/20261130_101010_123_42.nettrace",
            {},
        ),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/egress/{host.user_id}/{ARTIFACT}", {}),
        # The chunks of a streamed response (dnmon_core.chunks).
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/streams/{host.user_id}/{uuid.UUID(int=7)}/00000000", {}),
        ("s3:AbortMultipartUpload", f"arn:aws:s3:::{BUCKET}/artifacts/{host.user_id}/x.nettrace", {}),
    ]


def _attacks(host: Host, other: Host) -> list[tuple[str, str, dict[str, str], str]]:
    """What a compromised ``host`` might try against ``other`` or the control plane, and the
    decision that stops it."""
    return [
        ("sqs:ReceiveMessage", other.queue, {}, EXPLICIT_DENY),  # read another host's jobs
        ("sqs:DeleteMessage", other.queue, {}, EXPLICIT_DENY),  # drop another host's jobs
        ("sqs:SendMessage", other.queue, {}, IMPLICIT_DENY),  # inject jobs (unsigned anyway)
        ("sqs:SendMessage", host.queue, {}, IMPLICIT_DENY),
        ("sqs:SetQueueAttributes", host.queue, {}, IMPLICIT_DENY),  # rewrite its queue policy
        ("sqs:SetQueueAttributes", other.queue, {}, IMPLICIT_DENY),
        ("sqs:CreateQueue", QUEUE.format("i-0new"), {}, IMPLICIT_DENY),
        ("dynamodb:GetItem", TABLE, {}, IMPLICIT_DENY),  # read environments, operations
        ("dynamodb:PutItem", TABLE, {}, IMPLICIT_DENY),  # forge registry or operation state
        ("dynamodb:Query", f"{TABLE}/index/gsi1", {}, IMPLICIT_DENY),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/artifacts/{other.user_id}/x.nettrace", {}, IMPLICIT_DENY),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/egress/{other.user_id}/x.nettrace", {}, IMPLICIT_DENY),
        # Another host's stream cannot be written into (or read).
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/streams/{other.user_id}/x/00000000", {}, IMPLICIT_DENY),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/streams/{host.user_id}/x/00000000", {}, IMPLICIT_DENY),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/elsewhere/x", {}, IMPLICIT_DENY),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/artifacts/{other.user_id}/x.nettrace", {}, IMPLICIT_DENY),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/artifacts/{host.user_id}/x.nettrace", {}, IMPLICIT_DENY),
        # a direct Invoke would let the caller write the event, identity included
        ("lambda:InvokeFunction", FUNCTIONS["agent-api"], {}, IMPLICIT_DENY),
        ("lambda:InvokeFunction", FUNCTIONS["agent-api"], {"lambda__InvokedViaFunctionUrl": "false"},
         IMPLICIT_DENY),
        ("lambda:InvokeFunctionUrl", FUNCTIONS["agent-api"], {"lambda__FunctionUrlAuthType": "NONE"},
         IMPLICIT_DENY),
        ("lambda:InvokeFunction", FUNCTIONS["api"], URL_CALL, IMPLICIT_DENY),
        ("kms:Sign", KEY, {}, IMPLICIT_DENY),  # sign its own jobs
    ]  # fmt: skip


@pytest.mark.parametrize("host", [A, B], ids=["host-a", "host-b"])
def test_each_host_can_do_its_work(agent_policy: dict[str, Any], host: Host) -> None:
    for action, resource, context in _needs(host):
        assert _decide(agent_policy, host, action, resource, **context) == ALLOW, (action, resource)


@pytest.mark.parametrize(("host", "other"), [(A, B), (B, A)], ids=["a-attacks-b", "b-attacks-a"])
def test_a_compromised_host_reaches_only_its_own_things(
    agent_policy: dict[str, Any], host: Host, other: Host
) -> None:
    for action, resource, context, expected in _attacks(host, other):
        assert _decide(agent_policy, host, action, resource, **context) == expected, (action, resource)


def test_the_evaluator_is_not_a_rubber_stamp(agent_policy: dict[str, Any]) -> None:
    """The same matrix fails against a policy as loose as the one this replaced."""
    loose = {
        "Statement": [
            {"Effect": "Allow", "Action": ["sqs:*", "dynamodb:*", "s3:PutObject"], "Resource": "*"},
        ]
    }
    wrong = [
        (action, resource)
        for action, resource, context, expected in _attacks(A, B)
        if _decide(loose, A, action, resource, **context) != expected
    ]
    assert ("dynamodb:GetItem", TABLE) in wrong and any(a == "s3:PutObject" for a, _ in wrong)
