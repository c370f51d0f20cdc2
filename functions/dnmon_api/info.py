"""``GET /info``: what is answering, and one page of the agents that are alive."""

from __future__ import annotations

import json
from importlib import metadata

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from dnmon_core.queries import InfoQuery

from .http import base_url, bind, next_link, query
from .services import services

router = APIGatewayRouter()


def _version() -> str:
    try:
        return metadata.version("dnmon")
    except metadata.PackageNotFoundError:  # deployed as a plain CodeUri, not a wheel
        return "0.1.0"


@router.get("/info")
def get_info() -> Response[str]:
    params = bind(router, InfoQuery)
    page = services().registry.page(limit=params.limit, token=params.next)
    agents = page.agents
    body = {
        "version": _version(),
        # The agent connects to each runtime's own listening socket: dotnet-monitor calls that Connect.
        "diagnosticPortMode": "Connect",
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
    headers = (
        {"Link": next_link(base_url(router), "/info", query(router), page.next_token)}
        if page.next_token
        else None
    )
    return Response(200, "application/json", json.dumps(body), headers=headers)
