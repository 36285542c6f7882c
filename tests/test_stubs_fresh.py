"""The committed Python stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = "proto"
STUBS = ROOT / "clients" / "python" / "src"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generated_files(base: Path) -> dict[str, bytes]:
    return {
        path.relative_to(base).as_posix(): path.read_bytes()
        for path in base.rglob("*")
        if path.is_file() and path.name.endswith(STUB_SUFFIXES)
    }


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    # The same command as the Makefile's `proto` target, run from the repository root
    # with the proto files in the same (sorted) order.
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / PROTO_DIR).rglob("*.proto"))
    assert protos, "no .proto files found"
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR,
        f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
        f"--mypy_out={tmp_path}", f"--mypy_grpc_out={tmp_path}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        *protos,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"

    fresh = _generated_files(tmp_path)
    committed = _generated_files(STUBS)
    assert fresh, "protoc generated nothing"
    missing = sorted(set(fresh) - set(committed))
    stale = sorted(set(committed) - set(fresh))
    changed = sorted(name for name in set(fresh) & set(committed) if fresh[name] != committed[name])
    problems = [f"missing: {n}" for n in missing] + [f"no proto any more: {n}" for n in stale]
    problems += [f"out of date: {n}" for n in changed]
    assert not problems, "the generated stubs are not up to date; run make proto\n" + "\n".join(problems)
