"""The on-host agent, one module per job: ``agent`` (the loop and its messages), ``capture`` (one
capture, its lease and its last write), ``processes`` (the watched process list), ``identity``."""

from __future__ import annotations

from dnmon_core.config import AgentSettings

from .agent import Agent
from .capture import Capture, CaptureContext
from .identity import agent_id_from_arn

__all__ = ["Agent", "AgentSettings", "Capture", "CaptureContext", "agent_id_from_arn"]
