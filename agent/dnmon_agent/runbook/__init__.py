"""The runbook client: ``dnmon ps|metrics|trace|ops`` against any dnmon API over HTTP.

It speaks only the public HTTP API (the same against ``dnmon up`` and a deployed API Gateway), so
it imports neither the functions package nor the agent's capture code. One module per command
group; ``commands.py`` wires them into the ``dnmon`` parser.
"""
