"""The on-host agent, one module per job: ``agent`` (the loop and its messages), ``capture`` (one
capture, its lease and its last write), ``processes`` (the watched process list), ``control_plane``
(the signed client of the agent API, the agent's only way to write)."""

from __future__ import annotations

from dnmon_core.config import AgentSettings

from .agent import Agent
from .capture import Capture, CaptureContext
from .control_plane import ControlPlane

__all__ = ["Agent", "AgentSettings", "Capture", "CaptureContext", "ControlPlane"]
