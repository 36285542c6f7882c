"""Settings survive a restart: atomic state file, kill -9 at any moment, clear start-up errors."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from gpt_grpc.settings import Settings, SettingsUpdate, apply
from gpt_grpc.state import StateFile, StateFileError
from tests.conftest import ADMIN, TEST_KEY
from tests.standin import Standin
from tests.test_lifecycle import ServerProcess, wait_serving


def test_round_trip_and_mode(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "sub" / "state.json")
    assert state.load() is None
    settings = apply(Settings(), SettingsUpdate(api_key=TEST_KEY, default_model="gpt-4.1", max_attempts=5))
    state.save(settings)
    assert state.load() == settings
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    assert [p.name for p in state.path.parent.iterdir()] == ["state.json"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"version": 99, "settings": {}}', b'{"version": 1}', b'{"version": 1, "settings": []}'],
)
def test_corrupt_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="state file"):
        StateFile(path).load()


def _start(standin: Standin, state: Path) -> ServerProcess:
    return ServerProcess(standin, "--state-file", str(state))


async def _configure_storm(target: str, acked: list[int], stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GPTServiceStub(channel)
        i = acked[-1] if acked else 0
        while not stop.is_set() and i < 10_000:
            i += 1
            try:
                await stub.Configure(pb.ConfigureRequest(default_model=f"model-{i}"), metadata=ADMIN, timeout=5)
            except grpc.aio.AioRpcError:
                return  # the server died under us
            acked.append(i)


@pytest.mark.timeout(120)
async def test_kill_9_at_any_moment_leaves_old_or_new(standin: Standin, tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    rng = random.Random(7)
    acked: list[int] = []
    for _ in range(5):
        server = _start(standin, state_path)
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                await wait_serving(channel)
                stub = pb_grpc.GPTServiceStub(channel)
                conf = (await stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
                if acked:  # the restart came back with the last applied settings (or the one in flight)
                    assert conf.default_model in (f"model-{acked[-1]}", f"model-{acked[-1] + 1}")
                    acked.append(int(conf.default_model.split("-")[1]))
                stop = asyncio.Event()
                storm = asyncio.ensure_future(_configure_storm(server.target, acked, stop))
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(timeout=10)
                stop.set()
                await storm
        finally:
            server.close()
        saved = StateFile(state_path).load()  # never a broken file
        assert saved is not None and saved.api_key == TEST_KEY
        assert saved.default_model in (f"model-{acked[-1]}", f"model-{acked[-1] + 1}")
    assert len(acked) > 5


def test_corrupt_state_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "settings": {"endpoint": 3')
    proc = subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--port", "0", "--state-file", str(path)],
        capture_output=True,
        timeout=30,
        env={**os.environ, "OPENAI_API_KEY": TEST_KEY},
    )
    assert proc.returncode == 2
    assert b"is corrupt" in proc.stderr and str(path).encode() in proc.stderr


def test_edited_state_file_with_invalid_settings_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    StateFile(path).save(Settings(api_key=TEST_KEY, endpoint="ftp://example.com"))
    proc = subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--port", "0", "--state-file", str(path)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"invalid settings" in proc.stderr
    assert TEST_KEY.encode() not in proc.stderr
