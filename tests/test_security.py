"""Issue 9: what an attacker or a careless operator could do, and the guarantee that stops it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpt_grpc.server.app import MIN_ADMIN_TOKEN_CHARS, ConfigError, GatewayServer, ServerConfig


def test_a_short_admin_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"at least 32.*openssl rand -base64 32"):
        GatewayServer(ServerConfig(port=0, admin_token="x" * (MIN_ADMIN_TOKEN_CHARS - 1)))


def test_the_server_command_exits_2_on_a_short_admin_token() -> None:
    env = {"GPT_GRPC_ADMIN_TOKEN": "too-short", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--port", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "must have at least 32" in done.stderr
    assert "too-short" not in done.stderr + done.stdout  # the token itself is never echoed
