"""Which calls the server takes: a limit on calls in flight, and draining on shutdown."""

from __future__ import annotations

import asyncio

from ..errors import GatewayError, Reason


class Admission:
    """Counts calls in flight; refuses beyond the limit or while draining."""

    def __init__(self, max_in_flight: int = 10_000) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.draining:
            raise GatewayError(Reason.SHUTTING_DOWN, "the server is shutting down; call another replica")
        if self.in_flight >= self.max_in_flight:
            raise GatewayError(
                Reason.OVERLOADED,
                f"the server has {self.in_flight} calls in flight (limit {self.max_in_flight})",
            )
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new calls and wait for those in flight; True if all finished in time."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
