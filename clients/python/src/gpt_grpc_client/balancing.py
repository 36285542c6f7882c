"""Client-side load balancing over several gateway replicas, with gRPC's own policies.

gRPC resolves a target to a list of addresses (``dns:///gateway.internal:50051``: every A/AAAA
record, e.g. a Kubernetes headless Service; ``ipv4:10.0.0.1:50051,10.0.0.2:50051``: a fixed
list), then a load-balancing policy picks one address per call. Its default, ``pick_first``,
sends every call over one connection to the first address that answers; ``round_robin``
connects to every address and rotates calls over the connections that are ready.

The service config this module builds also turns on gRPC's client-side health checking
(``healthCheckConfig``): the channel watches ``grpc.health.v1.Health/Watch`` for the
gateway's service on each replica, so a replica that reports NOT_SERVING (it is draining
after SIGTERM) gets no new calls before it closes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["HEALTH_SERVICE", "LOAD_BALANCING_POLICIES", "balancing_options"]

#: The policies gRPC ships in every language: one connection, or calls rotated over all.
LOAD_BALANCING_POLICIES = ("pick_first", "round_robin")
#: The service the gateway reports in grpc.health.v1 (NOT_SERVING from the start of a drain).
HEALTH_SERVICE = "gptgrpc.v1.GPTService"
_SERVICE_CONFIG = "grpc.service_config"


def service_config(policy: str) -> dict[str, Any]:
    """The gRPC service config that selects policy and checks each replica's health."""
    if policy not in LOAD_BALANCING_POLICIES:
        raise ValueError(f"unknown load_balancing {policy!r}; use one of {', '.join(LOAD_BALANCING_POLICIES)}")
    return {"loadBalancingConfig": [{policy: {}}], "healthCheckConfig": {"serviceName": HEALTH_SERVICE}}


def balancing_options(policy: str | None, options: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The channel options with the service config of policy added (options unchanged when None)."""
    if policy is None:
        return tuple(options)
    if any(key == _SERVICE_CONFIG for key, _ in options):
        raise ValueError("give either load_balancing or a grpc.service_config option, not both")
    return (*options, (_SERVICE_CONFIG, json.dumps(service_config(policy))))
