"""The deployment recipes under deploy/, checked offline: Kubernetes schemas and cfn-lint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "kubernetes" / "dnmon-agent.yaml"
ECS = ROOT / "deploy" / "ecs" / "dnmon-agent.yaml"
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]  # EKS's oldest in extended support and a current one


def _manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(DAEMONSET.read_text())}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_daemonset_manifest_is_valid_kubernetes(version: str) -> None:
    for doc in _manifests().values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_daemonset_runs_in_the_host_pid_namespace_with_least_privilege() -> None:
    manifests = _manifests()
    assert "eks.amazonaws.com/role-arn" in manifests["ServiceAccount"]["metadata"]["annotations"]
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["serviceAccountName"] == "dnmon-agent"
    (agent,) = pod["containers"]
    assert agent["command"] == ["dnmon", "agent"]
    security = agent["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_OVERRIDE"]}
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    env = {e["name"] for e in agent["env"]}
    assert {"DNMON_TABLE", "DNMON_BUCKET", "DNMON_HOST_NAME", "DNMON_AGENT_ID"} <= env


def test_the_schema_check_is_not_vacuous() -> None:
    broken = copy.deepcopy(_manifests()["DaemonSet"])
    broken["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def _lint(text: str) -> list[str]:
    from cfnlint.api import ManualArgs, lint

    return [
        f"{m.rule.id} {m.rule.severity} line {m.linenumber}: {m.message}"
        for m in lint(text, config=ManualArgs(regions=["us-east-1"]))
        if m.rule.severity in ("error", "warning")
    ]


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, !GetAtt) as plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))  # type: ignore[arg-type]


def test_the_ecs_daemon_template_passes_cfn_lint() -> None:
    assert _lint(ECS.read_text()) == []
    resources = yaml.load(ECS.read_text(), Loader=_CfnLoader)["Resources"]
    task = resources["AgentTaskDefinition"]["Properties"]
    assert task["PidMode"] == "host" and task["RequiresCompatibilities"] == ["EC2"]
    assert task["ContainerDefinitions"][0]["LinuxParameters"]["Capabilities"]["Add"] == [
        "SYS_PTRACE",
        "DAC_OVERRIDE",
    ]
    assert resources["AgentService"]["Properties"]["SchedulingStrategy"] == "DAEMON"


def test_the_cfn_lint_check_is_not_vacuous() -> None:
    broken = ECS.read_text().replace("PidMode: host", "PidMode: vm")
    assert any("error" in finding for finding in _lint(broken))
