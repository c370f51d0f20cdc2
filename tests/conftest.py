"""Shared fixtures: real .NET targets that are always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.dotnet import DotnetTarget

StartTarget = Callable[..., DotnetTarget]


@pytest.fixture
def dotnet_target() -> Iterator[StartTarget]:
    """Factory: ``dotnet_target("Target.cs", "metrics", runtime="net8")`` → a ready DotnetTarget."""
    started: list[DotnetTarget] = []

    def start(source: str, *args: str, **kwargs: object) -> DotnetTarget:
        target = DotnetTarget.start(source, *args, **kwargs)  # type: ignore[arg-type]
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()
