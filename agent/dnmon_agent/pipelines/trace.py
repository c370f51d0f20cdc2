"""Trace requests → EventPipe session configuration."""

from __future__ import annotations

from dnmon_core.models import EventProvidersConfiguration

from ..diagnostics.ipc import EventPipeProvider, SessionConfiguration

# dotnet-trace's "cpu-sampling" profile, as in the seed's sample request.
CPU_PROFILE_PROVIDERS = [
    {"name": "Microsoft-DotNETCore-SampleProfiler", "eventLevel": "Informational", "keywords": "0x0"},
    {"name": "Microsoft-Windows-DotNETRuntime", "eventLevel": "Informational", "keywords": "0x14C14FCCBD"},
]
DEFAULT_TRACE_CONFIGURATION = EventProvidersConfiguration.model_validate({"providers": CPU_PROFILE_PROVIDERS})


def session_configuration(config: EventProvidersConfiguration) -> SessionConfiguration:
    return SessionConfiguration(
        providers=tuple(
            EventPipeProvider(
                p.name, p.keywords, int(p.event_level), dict(p.arguments) if p.arguments else None
            )
            for p in config.providers
        ),
        circular_buffer_mb=config.buffer_size_in_mb,
        request_rundown=config.request_rundown,
    )
