"""dnmon agent: captures from local .NET processes over the diagnostics IPC protocol."""

__version__ = "0.1.0"
