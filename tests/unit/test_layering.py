"""The layering rules of DESIGN.md, checked rather than promised."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANS_IO = ["ipc.py", "nettrace.py", "payload.py", "framing.py", "events.py", "errors.py"]
IO_MODULES = {"socket", "asyncio", "boto3", "botocore", "select", "selectors", "subprocess", "threading"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", SANS_IO)
def test_codec_modules_do_no_io(module: str) -> None:
    path = ROOT / "agent" / "dnmon_agent" / "diagnostics" / module
    assert path.exists(), path
    assert not _imports(path) & IO_MODULES


def _python_files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


def test_agent_and_functions_never_import_each_other() -> None:
    agent_files = _python_files("agent")
    function_packages = {
        p.name for p in (ROOT / "functions").iterdir() if p.is_dir() and p.name != "dnmon_core"
    }
    for path in agent_files:
        assert not _imports(path) & function_packages, path
    for path in _python_files("functions"):
        assert "dnmon_agent" not in _imports(path), path


def test_the_agent_command_loads_no_runbook_client() -> None:
    """``dnmon agent`` is long-lived and its memory is a goal: httpx and rich stay unloaded."""
    import subprocess
    import sys

    code = (
        "import sys; from dnmon_agent import cli; cli.build_parser(['agent']).parse_args(['agent']); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'rich'}))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
    code = "import sys; from dnmon_agent import cli; cli.build_parser(['ps']); print('httpx' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "True"
