"""Secrets kept in a store: sealed with AES-GCM under a key derived from the operator's secret.

The operator gives any secret of at least MIN_SECRET_CHARS characters
(`GPT_GRPC_SECRET_KEY` or `GPT_GRPC_SECRET_KEY_FILE`; `openssl rand -base64 32`
output works as it is). HKDF-SHA256 derives the 256-bit AES key from it, so
the secret's format does not matter, only its entropy. A sealed value is
`v1.<base64url(nonce || ciphertext+tag)>`, with the purpose ("upstream
api_key") bound as associated data: a sealed key cannot be replayed as
another field. Authenticated: a wrong secret or a changed byte fails to
open, never decrypts to garbage.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SECRET_CHARS = 32
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per seal (2^32 seals per key stay safe)
_VERSION = "v1."
_SALT = b"gpt-grpc store secrets"
_INFO = b"gpt-grpc aes-256-gcm v1"


class SecretKeyError(Exception):
    """The secret key is unusable, or cannot open a sealed value."""


class Sealer:
    """Seals and opens secrets with the operator's secret key."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise SecretKeyError(
                f"the secret key has {len(secret)} characters; it must have at least {MIN_SECRET_CHARS}. "
                "Make one with: openssl rand -base64 32"
            )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(secret.encode())
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, purpose: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), purpose.encode())
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, purpose: str) -> str:
        if not sealed.startswith(_VERSION):
            raise SecretKeyError("the stored secret has an unknown format")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :])
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], purpose.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretKeyError(
                "the secret key cannot decrypt the stored upstream key: this replica's GPT_GRPC_SECRET_KEY "
                "differs from the one that stored it (give every replica the same secret key, or Configure "
                "the api_key again)"
            ) from exc

    def __repr__(self) -> str:
        return "Sealer(<secret>)"


def sealer_from_env(env: dict[str, str] | os._Environ[str], key_file: str | None = None) -> Sealer | None:
    """The Sealer of GPT_GRPC_SECRET_KEY_FILE (or `key_file`) or GPT_GRPC_SECRET_KEY; None when neither is set."""
    path = key_file or env.get("GPT_GRPC_SECRET_KEY_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise SecretKeyError(f"cannot read the secret key file {path}: {exc.strerror}") from None
        return Sealer(secret)
    value = env.get("GPT_GRPC_SECRET_KEY")
    return Sealer(value.strip()) if value else None
