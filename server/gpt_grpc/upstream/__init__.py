"""The way to the upstream: endpoints build requests, the transport sends them, sse.py reads streams.

Every failure on this path becomes a `GatewayError` in one place (failures.py),
with the upstream's texts scrubbed of every key the gateway holds.
"""
