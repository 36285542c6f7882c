"""Typed Python client for the gpt-grpc gateway.

>>> from gpt_grpc_client import Client
>>> with Client("127.0.0.1:50051") as gpt:  # doctest: +SKIP
...     print(gpt.chat_completion(system_message="Be brief.", user_message="Hi!"))
"""

from gptgrpc.v1 import gateway_pb2, gateway_pb2_grpc

from .balancing import LOAD_BALANCING_POLICIES
from .client import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    AsyncChatStream,
    AsyncClient,
    BudgetPeriodLike,
    CertificateSource,
    ChatStream,
    Client,
    MessageLike,
    MetadataPairs,
    Seconds,
    to_chat_message,
)
from .errors import ERROR_DOMAIN, STATUS_DETAILS_KEY, GatewayError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "ERROR_DOMAIN",
    "LOAD_BALANCING_POLICIES",
    "STATUS_DETAILS_KEY",
    "AsyncChatStream",
    "AsyncClient",
    "BudgetPeriodLike",
    "CertificateSource",
    "ChatStream",
    "Client",
    "GatewayError",
    "MessageLike",
    "MetadataPairs",
    "Seconds",
    "__version__",
    "gateway_pb2",
    "gateway_pb2_grpc",
    "to_chat_message",
]
