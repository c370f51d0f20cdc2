"""The /proc parsers behind container discovery, on the texts each runtime really writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnmon_agent.diagnostics import procfs
from dnmon_agent.diagnostics.procfs import ContainerRef, container_of

CID = "3f4e8c1a9b2d" + "0" * 52
TASK = "8c1d4e2f6a7b49c3a1e0f2d3c4b5a697"
POD = "pod5c9e1c4d-3f1b-4b7e-9d2a-0c6f1e2d3a4b"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        # Docker, cgroup v1 (cgroupfs driver) and v2 (systemd driver)
        (f"12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n", ContainerRef(CID, "docker")),
        (f"0::/system.slice/docker-{CID}.scope\n", ContainerRef(CID, "docker")),
        # Kubernetes with containerd: cgroupfs and systemd drivers
        (f"0::/kubepods/burstable/{POD}/{CID}\n", ContainerRef(CID)),
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD.replace('-', '_')}.slice/"
            f"cri-containerd-{CID}.scope\n",
            ContainerRef(CID, "containerd"),
        ),
        # CRI-O (OpenShift) and podman
        (f"0::/kubepods.slice/kubepods-besteffort.slice/crio-{CID}.scope\n", ContainerRef(CID, "crio")),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", ContainerRef(CID, "podman")),
        (f"0::/machine.slice/libpod-{CID}.scope\n", ContainerRef(CID, "podman")),
        # ECS on EC2: cgroup v1 /ecs/<task>/<container>, v2 ecstasks slices; Fargate's container ids
        (f"9:pids:/ecs/{TASK}/{CID}\n", ContainerRef(CID, "ecs", TASK)),
        (f"0::/ecs/{TASK}/{TASK}-1234567890\n", ContainerRef(f"{TASK}-1234567890", "ecs", TASK)),
        (f"0::/ecstasks.slice/ecstasks-{TASK}.slice/docker-{CID}.scope\n", ContainerRef(CID, "ecs", TASK)),
        # A container's own view through a private cgroup namespace still names the scope
        (f"0::/../../system.slice/docker-{CID}.scope\n", ContainerRef(CID, "docker")),
        # Plain hosts
        ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
        ("0::/system.slice/dnmon-agent.service\n", None),
        ("0::/\n", None),
    ],
)
def test_container_of_each_runtimes_cgroup(cgroup: str, expected: ContainerRef | None) -> None:
    assert container_of(cgroup) == expected


def test_nspid_innermost_is_last() -> None:
    status = b"Name:\tdotnet\nTgid:\t4242\nPid:\t4242\nNSpid:\t4242\t17\t1\nNStgid:\t4242\t17\t1\n"
    assert procfs.parse_nspid(status) == [4242, 17, 1]
    assert procfs.parse_nspid(b"Name:\told-kernel\n") is None


def test_start_ticks_survives_a_command_name_with_spaces_and_parens() -> None:
    fields = " ".join(str(n) for n in range(3, 30))  # field 22 holds 22
    assert procfs.parse_start_ticks(f"4242 (my (odd) app) {fields}".encode()) == 22
    assert procfs.parse_start_ticks(b"4242 (cut) S 1") is None


def test_environment_keeps_only_the_context_variables() -> None:
    raw = b"PATH=/usr/bin\0TMPDIR=/tmp/app\0HOSTNAME=web-1\0SECRET=x=y\0POD_NAMESPACE=shop\0broken\0"
    assert procfs.parse_environ(raw) == {"TMPDIR": "/tmp/app", "HOSTNAME": "web-1", "POD_NAMESPACE": "shop"}


def test_pod_namespace_falls_back_to_the_service_account_file(tmp_path: Path) -> None:
    root = tmp_path / "4242" / "root"
    namespace_file = root / procfs.SERVICE_ACCOUNT_NAMESPACE
    namespace_file.parent.mkdir(parents=True)
    namespace_file.write_text("payments\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": "api-0"}
    assert procfs.orchestration(4242, env, tmp_path) == procfs.Orchestration("api-0", "payments")
    downward = {**env, "POD_NAME": "api-0-real", "POD_NAMESPACE": "billing"}
    assert procfs.orchestration(4242, downward, tmp_path) == procfs.Orchestration("api-0-real", "billing")
    assert procfs.orchestration(4242, {"HOSTNAME": "laptop"}, tmp_path) == procfs.Orchestration()


def test_readers_on_this_process() -> None:
    pid = os.getpid()
    nspids = procfs.namespaced_pids(pid)
    assert nspids is not None and nspids[0] == pid
    assert procfs.start_ticks(pid) is not None
    assert procfs.mount_namespace(pid) == procfs.mount_namespace("self")
    assert procfs.namespaced_pids(2**22 + 1) is None  # beyond pid_max: "gone", never an exception
