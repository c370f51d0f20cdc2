"""Where benchmarks leave their figures: ``benchmarks/out/<name>.json``, also printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def save(name: str, result: dict[str, Any], *, show: bool = True) -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    if show:
        print(json.dumps(result, indent=2))
    return result
