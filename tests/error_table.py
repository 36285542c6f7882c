"""The README's error table, read as data: what the gateway promises for each cause.

Tests that run a row (tests/test_aimock.py) take its status, RetryInfo and
reason from here, so a row the README states wrongly fails them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

README = Path(__file__).parent.parent / "README.md"
_HEADER = "| cause | retried by the gateway | status | reason |"


@dataclass(frozen=True)
class Row:
    cause: str
    retried: bool  # "yes", "yes, within the deadline"
    code: grpc.StatusCode
    retry_info: bool  # the status column says "+ RetryInfo"
    reasons: tuple[str | None, ...]  # "A / B" is two; "—" is None (no ErrorInfo reason)

    def reason(self, which: int = 0) -> str | None:
        return self.reasons[which]


def rows(readme: Path = README) -> list[Row]:
    lines = readme.read_text().splitlines()
    start = lines.index(_HEADER) + 2  # past the header and its |---| line
    out = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cause, retried, status, reason = (cell.strip() for cell in line.strip("|").split("|"))
        out.append(
            Row(
                cause=cause,
                retried=retried.startswith("yes"),
                code=grpc.StatusCode[status.split()[0]],
                retry_info="+ RetryInfo" in status,
                reasons=tuple(None if r.strip() in ("—", "-") else r.strip() for r in reason.split("/")),
            )
        )
    return out


def row(cause: str) -> Row:
    """The one row whose cause starts with `cause`."""
    found = [r for r in rows() if r.cause.startswith(cause)]
    assert len(found) == 1, f"{len(found)} README error-table rows start with {cause!r}"
    return found[0]
