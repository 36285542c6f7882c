"""Typed Python client for the gpt-grpc gateway.

>>> from gpt_grpc_client import Client, image_part, user_message
>>> with Client("127.0.0.1:50051") as gpt:  # doctest: +SKIP
...     print(gpt.chat_completion(system_message="Be brief.", user_message="Hi!"))
...     print(gpt.chat_completion("gpt-4o", messages=[user_message("What is this?", image_part("photo.png"))]))
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
from .parts import MediaSource, audio_part, file_part, image_part, text_part, user_message

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
    "MediaSource",
    "MessageLike",
    "MetadataPairs",
    "Seconds",
    "__version__",
    "audio_part",
    "file_part",
    "gateway_pb2",
    "gateway_pb2_grpc",
    "image_part",
    "text_part",
    "to_chat_message",
    "user_message",
]
