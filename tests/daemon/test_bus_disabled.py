"""MESSAGE_BUS_ENABLED=false end to end: a result over the threshold still goes inline
and is audited; one over the client's cap is a clear error, audited as such."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from daemon.client import CallResult, Client, RPCError
from daemon.jsonrpc import Code
from daemon.tools import generate_json
from tests.daemon.support import audit_rows, chunk_count, database_url
from tests.helpers.daemon import thread_daemon

THRESHOLD = 64 * 1024
SIZE = 200_000  # over the threshold: the bus, were it on, would store it
EXPECTED = generate_json(SIZE, 5).encode()


def test_a_result_over_the_threshold_comes_inline_and_is_audited(tmp_path: Path) -> None:
    assert len(EXPECTED) > THRESHOLD
    with thread_daemon(
        tmp_path, message_bus_enabled=False, message_bus_threshold_bytes=THRESHOLD
    ) as daemon:

        async def scenario() -> tuple[CallResult, bytes]:
            async with await Client.connect(daemon.url, max_message_bytes=512 * 1024) as client:
                result = await client.call("generate", {"size": SIZE, "seed": 5})
                return result, result.inline_bytes()

        result, data = asyncio.run(scenario())
        daemon.runtime.audit.flush()
        url = database_url(daemon)
        rows = audit_rows(url, tool="generate")
        chunks = chunk_count(url, rows[0]["id"]) if rows else None

    assert not result.is_error and result.route == "inline"
    assert data == EXPECTED
    checksum = hashlib.sha256(EXPECTED).hexdigest()
    assert result.checksum == checksum
    (row,) = rows
    assert str(row["id"]) == result.transaction_id
    assert (row["route"], row["status"], row["error_kind"]) == ("inline", "delivered", None)
    assert (row["size"], row["checksum"]) == (len(EXPECTED), checksum)
    assert row["delivered_at"] is not None
    assert chunks == 0  # nothing was stored


def test_a_result_over_the_clients_cap_is_a_clear_error_and_is_audited(tmp_path: Path) -> None:
    """No store to fall back on: a message the client cannot take is refused, naming
    the setting, and the session carries on."""
    cap = 128 * 1024  # under the 200 kB result
    with thread_daemon(
        tmp_path, message_bus_enabled=False, message_bus_threshold_bytes=THRESHOLD
    ) as daemon:

        async def scenario() -> tuple[RPCError, str]:
            async with await Client.connect(daemon.url, max_message_bytes=cap) as client:
                with pytest.raises(RPCError) as refused:
                    await client.call("generate", {"size": SIZE, "seed": 5})
                after = await client.call("echo", {"text": "still here"})
                return refused.value, after.text

        error, after = asyncio.run(scenario())
        daemon.runtime.audit.flush()
        url = database_url(daemon)
        rows = audit_rows(url, tool="generate")
        chunks = chunk_count(url, rows[0]["id"]) if rows else None

    assert error.code == Code.RESULT_TOO_LARGE
    assert f"over this client's limit of {cap:,} bytes" in error.message
    assert "MESSAGE_BUS_ENABLED" in error.message
    assert error.data["error_kind"] == "inline_oversize"
    assert after == "still here"
    (row,) = rows
    assert str(row["id"]) == error.data["transaction_id"]
    assert (row["route"], row["status"], row["error_kind"]) == (
        "inline",
        "failed",
        "inline_oversize",
    )
    assert row["error"] == error.message
    assert (row["size"], row["checksum"]) == (len(EXPECTED), hashlib.sha256(EXPECTED).hexdigest())
    assert row["delivered_at"] is None
    assert chunks == 0
