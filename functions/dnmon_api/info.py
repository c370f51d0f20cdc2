"""``GET /info``: what is answering, and which agents are alive."""

from __future__ import annotations

import json
from importlib import metadata

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from .services import services

router = APIGatewayRouter()


def _version() -> str:
    try:
        return metadata.version("dnmon")
    except metadata.PackageNotFoundError:  # deployed as a plain CodeUri, not a wheel
        return "0.1.0"


@router.get("/info")
def get_info() -> Response[str]:
    agents = services().agents(refresh=True)
    body = {
        "version": _version(),
        "diagnosticPortMode": "Listen",
        "agents": [
            {
                "agentId": a.agent_id,
                "hostName": a.host_name,
                "version": a.version,
                "processes": len(a.processes),
            }
            for a in agents
        ],
    }
    return Response(200, "application/json", json.dumps(body))
