"""The Python client against a real daemon: large arguments go up by themselves, every
download is verified, and nothing wrong is ever handed over or left on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bus.db import Database
from bus.store import chunks
from daemon.client import Client, ClientError, http_base
from daemon.tools import generate_json
from tests.daemon.support import TOOLS_FOR_TESTS, audit_rows, database_url
from tests.helpers.daemon import ThreadDaemon, thread_daemon

MB = 1_000_000


@pytest.fixture
def with_test_tools(tmp_path: Path) -> Iterator[ThreadDaemon]:
    with thread_daemon(tmp_path, tool_modules=[TOOLS_FOR_TESTS]) as daemon:
        yield daemon


def test_a_50mb_argument_goes_up_as_an_upload_and_arrives_byte_identical(
    with_test_tools: ThreadDaemon,
) -> None:
    daemon = with_test_tools
    data = os.urandom(50 * MB)

    async def scenario() -> Any:
        async with await Client.connect(daemon.url) as client:
            return await client.call("digest", {"data": data})

    result = asyncio.run(scenario())
    assert not result.is_error, result.text
    assert result.raw["content"][0]["type"] == "text"
    assert json.loads(result.text) == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "length": len(data),
    }
    daemon.runtime.audit.flush()
    (upload,) = audit_rows(database_url(daemon), direction="upload")
    assert (upload["size"], upload["checksum"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert upload["status"] == "fetched"  # the tool's read counts
    (call,) = audit_rows(database_url(daemon), tool="digest")
    assert (call["route"], call["status"]) == ("inline", "delivered")


def test_a_file_streams_up_and_its_uri_is_an_argument(
    with_test_tools: ThreadDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "input.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(12):
            f.write(block[i:] + block[:i])
    expected = hashlib.sha256(path.read_bytes()).hexdigest()

    async def scenario() -> tuple[dict[str, Any], Any]:
        async with await Client.connect(with_test_tools.url) as client:
            upload = await client.upload(path)
            return upload, await client.call("digest", {"data": upload["uri"]})

    upload, result = asyncio.run(scenario())
    assert upload["checksum"] == f"sha256:{expected}"
    assert f'"sha256": "{expected}"' in result.text


def test_long_text_arguments_go_up_too_and_short_ones_inline(daemon: ThreadDaemon) -> None:
    text = "ü" * 400_000  # 800 KB of UTF-8: over half the threshold

    async def scenario() -> tuple[Any, Any]:
        async with await Client.connect(daemon.url) as client:
            long = await client.call("echo", {"text": text})
            short = await client.call("echo", {"text": "short"})
            return (long.route, await client.result_bytes(long)), short

    (route, echoed), short = asyncio.run(scenario())
    assert echoed == text.encode() and route == "inline"  # 800 KB fits the 1 MiB cap
    assert short.text == "short"
    daemon.runtime.audit.flush()
    uploads = audit_rows(database_url(daemon), direction="upload")
    assert [u["size"] for u in uploads] == [len(text.encode())]


def test_fetch_to_a_file_is_verified(daemon: ThreadDaemon, tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()

    async def scenario() -> Path:
        async with await Client.connect(daemon.url) as client:
            result = await client.call("generate", {"size": 3 * MB, "seed": 5})
            assert result.transaction_id is not None
            written = await client.fetch(result.transaction_id, to_file=target)
            assert isinstance(written, Path)
            return written

    assert asyncio.run(scenario()) == target
    assert target.read_bytes() == generate_json(3 * MB, 5).encode()
    assert not list(target.parent.glob("*.part"))


def _corrupt_first_chunk(db_url: str, tx_id: str) -> None:
    """Damage the stored bytes the way a disk would: flip one, checksum untouched."""
    import uuid

    db = Database(db_url)
    try:
        with db.begin() as conn:
            key = (chunks.c.transaction_id == uuid.UUID(tx_id), chunks.c.seq == 0)
            data = bytearray(conn.execute(sa.select(chunks.c.data).where(*key)).scalar_one())
            data[len(data) // 2] ^= 0xFF
            conn.execute(chunks.update().where(*key).values(data=bytes(data)))
    finally:
        db.dispose()


def test_corrupted_stored_bytes_are_never_handed_over(daemon: ThreadDaemon, tmp_path: Path) -> None:
    target = tmp_path / "result.json"

    async def store() -> str:
        async with await Client.connect(daemon.url) as client:
            result = await client.call("generate", {"size": 3 * MB})
            assert result.transaction_id is not None
            return result.transaction_id

    tx_id = asyncio.run(store())
    daemon.runtime.audit.flush()
    _corrupt_first_chunk(database_url(daemon), tx_id)

    async def fetch_twice() -> list[ClientError]:
        errors = []
        async with await Client.connect(daemon.url) as client:
            for _ in range(2):
                with pytest.raises(ClientError) as failed:
                    await client.fetch(tx_id, to_file=target)
                errors.append(failed.value)
            await client.ping()
        return errors

    first, second = asyncio.run(fetch_twice())
    assert "nothing kept" in str(first) or "SHA-256" in str(first)
    assert "409" in str(second) and "corrupted" in str(second)
    assert not target.exists() and not list(tmp_path.glob("*.part"))
    (row,) = audit_rows(database_url(daemon), id=tx_id)
    assert (row["status"], row["fetch_count"]) == ("corrupted", 0)


def test_connecting_to_nothing_is_a_client_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        await Client.connect(f"ws://127.0.0.1:{port}/ws")

    with pytest.raises(ClientError, match="cannot connect"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("ws://127.0.0.1:8765/ws", "http://127.0.0.1:8765"),
        ("wss://bus.example/prefix/ws", "https://bus.example/prefix"),
    ],
)
def test_http_base_follows_the_websocket_url(url: str, base: str) -> None:
    assert http_base(url) == base
