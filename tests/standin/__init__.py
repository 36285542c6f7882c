"""Stand-in upstream: an OpenAI-compatible chat server on loopback with programmable faults."""

from .app import RecordedRequest, Standin
from .faults import FAULT_KINDS, Fault

__all__ = ["FAULT_KINDS", "Fault", "RecordedRequest", "Standin"]
