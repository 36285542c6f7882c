"""Which upstream serves each attempt of a call.

The engine asks its `Router` for the endpoint of every attempt (the first,
and each retry, told the error the previous one ended with), so failover
between upstreams, Azure deployments per model or a circuit breaker are a
router of their own. A router is built per settings snapshot
(`RouterFactory`), and registers the keys of its upstreams with `Secrets`
so that every endpoint's scrubber knows every key the gateway holds.

Today there is one upstream: `SingleUpstream`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import GatewayError, Reason
from ..models import ModelRecord
from ..settings import Settings
from .endpoints import Endpoint, openai_endpoint
from .scrub import Secrets


class Router(Protocol):
    """Chooses the upstream of each attempt."""

    def endpoint_for(self, model: ModelRecord, attempt: int, previous: GatewayError | None) -> Endpoint:
        """The endpoint of attempt `attempt` (1-based) of a call for `model`; `previous` is how the last
        attempt failed (None for the first). Raises GatewayError when no upstream can serve the call."""
        ...


RouterFactory = Callable[[Settings, Secrets], Router]


class SingleUpstream:
    """Every attempt goes to the one upstream of the settings snapshot."""

    def __init__(self, settings: Settings, secrets: Secrets) -> None:
        scrubber = secrets.add(settings.api_key)
        self._endpoint = openai_endpoint(settings, scrubber) if settings.api_key else None

    def endpoint_for(self, model: ModelRecord, attempt: int, previous: GatewayError | None) -> Endpoint:
        if self._endpoint is None:
            raise GatewayError(
                Reason.API_KEY_MISSING,
                "no upstream API key is configured (set OPENAI_API_KEY or call Configure)",
            )
        return self._endpoint
