"""The ASGI app over real sockets: delivery of every size, HTTP download and upload,
auth, tenant isolation, health and metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from bus.db import as_utc, new_transaction_id
from daemon.client import Client, ClientError, RPCError
from daemon.tools import generate_json
from tests.daemon.support import (
    ONE_MIB,
    audit_rows,
    chunk_count,
    database_url,
    raw_client,
    refused_counts,
)
from tests.helpers import roles
from tests.helpers.daemon import ThreadDaemon, thread_daemon

MB = 1_000_000


# -- 1 KB, 5 MB, 60 MB --------------------------------------------------------------------
def test_results_of_every_size_arrive_byte_identical_and_audited(tmp_path: Path) -> None:
    sizes = [1_000, 5 * MB, 60 * MB]  # 60 MB: over WEBSOCKET_MAX_MESSAGE_MB=32
    with thread_daemon(tmp_path) as daemon:

        async def scenario() -> list[tuple[int, Any, bytes]]:
            async with await Client.connect(daemon.url) as client:
                out = []
                for size in sizes:
                    result = await client.call("generate", {"size": size, "seed": 7})
                    out.append((size, result, await client.result_bytes(result)))
                return out

        received = asyncio.run(scenario())
        daemon.runtime.audit.flush()
        rows = audit_rows(database_url(daemon))

    assert len(rows) == len(sizes), "one audit record per call"
    by_id = {str(r["id"]): r for r in rows}
    for size, result, data in received:
        expected = generate_json(size, 7).encode()
        assert data == expected
        assert hashlib.sha256(data).hexdigest() == result.checksum
        row = by_id[result.transaction_id]
        assert (row["size"], row["checksum"], row["tool"], row["daemon_id"]) == (
            len(expected),
            result.checksum,
            "generate",
            daemon.runtime.bus.daemon_id,
        )
        if size < ONE_MIB:
            assert result.route == row["route"] == "inline"
            assert row["status"] == "delivered" and row["delivered_at"] is not None
            assert result.meta == {
                "transaction_id": result.transaction_id,
                "route": "inline",
                "size": len(expected),
                "checksum": f"sha256:{row['checksum']}",
            }
        else:
            assert result.route == row["route"] == "store"
            assert row["status"] == "fetched"
            assert row["fetch_count"] == 1 and row["first_fetched_at"] is not None
            assert row["first_fetched_at"] >= row["stored_at"]
            assert result.meta["stored_size"] == row["stored_size"] < len(expected)
            _assert_claim_check(result, row, len(expected))


def _assert_claim_check(result: Any, row: dict[str, Any], size: int) -> None:
    """The whole ``_meta.bustrail`` of a stored result and its resource_link."""
    tx_id = str(row["id"])
    meta = dict(result.meta)
    expires_at = datetime.fromisoformat(meta.pop("expires_at"))
    assert as_utc(expires_at) == as_utc(row["expires_at"]) > row["stored_at"]
    assert meta == {
        "transaction_id": tx_id,
        "route": "store",
        "size": size,
        "stored_size": row["stored_size"],
        "compression": row["compression"],
        "checksum": f"sha256:{row['checksum']}",
        "download": f"/v1/transactions/{tx_id}",
        "preview": {"shape": "json-list", "truncated": True},
    }
    assert meta["compression"] == "zstd" and len(meta["checksum"]) == len("sha256:") + 64
    assert result.resource_link == {
        "type": "resource_link",
        "uri": f"bustrail://transactions/{tx_id}",
        "name": f"generate-{tx_id}",
        "mimeType": "application/json",
        "size": size,
        "description": "Stored result of generate",
    }


def test_the_daemons_own_ceiling_holds_whatever_the_client_accepts(tmp_path: Path) -> None:
    """A client declaring a 128 MiB cap, a threshold of 128 MiB: 5 MB goes inline, but
    40 MB is over WEBSOCKET_MAX_MESSAGE_MB (32 MiB) and is stored all the same."""
    big = 128 * ONE_MIB
    with thread_daemon(tmp_path, message_bus_threshold_bytes=big) as daemon:

        async def scenario() -> list[tuple[str | None, bytes]]:
            async with await Client.connect(daemon.url, max_message_bytes=big) as client:
                out = []
                for size in (5 * MB, 40 * MB):
                    result = await client.call("generate", {"size": size, "seed": 1})
                    out.append((result.route, await client.result_bytes(result)))
                return out

        (route_5, data_5), (route_40, data_40) = asyncio.run(scenario())
    assert (route_5, route_40) == ("inline", "store")
    assert data_5 == generate_json(5 * MB, 1).encode()
    assert data_40 == generate_json(40 * MB, 1).encode()


def test_echo_of_awkward_text_comes_back_byte_identical(daemon: ThreadDaemon) -> None:
    small = 'quote " backslash \\ newline \n tab \t é 中文 🙂 \x00 end' * 20
    large = ('"\n' * 500_000) + ("é中🙂" * 300_000)  # 5 MB of what JSON escapes or widens

    async def scenario() -> list[tuple[str | None, bytes]]:
        async with await Client.connect(daemon.url) as client:
            out = []
            for text in (small, large):
                result = await client.call("echo", {"text": text})
                assert not result.is_error, result.text
                out.append((result.route, await client.result_bytes(result)))
            return out

    (route_small, got_small), (route_large, got_large) = asyncio.run(scenario())
    assert (route_small, got_small) == ("inline", small.encode())
    assert (route_large, got_large) == ("store", large.encode())


# -- HTTP download ----------------------------------------------------------------------
@pytest.fixture
def stored(daemon: ThreadDaemon) -> tuple[str, bytes]:
    """A 5 MB stored result: its id and bytes."""

    async def scenario() -> tuple[str, bytes]:
        async with await Client.connect(daemon.url) as client:
            result = await client.call("generate", {"size": 5 * MB, "seed": 3})
            assert result.route == "store" and result.transaction_id
            return result.transaction_id, generate_json(5 * MB, 3).encode()

    return asyncio.run(scenario())


def test_download_sends_checksum_and_length_headers(
    daemon: ThreadDaemon, stored: tuple[str, bytes]
) -> None:
    tx_id, data = stored
    response = httpx.get(f"{daemon.http}/v1/transactions/{tx_id}", timeout=60)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["x-bustrail-checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-bustrail-transaction-id"] == tx_id


@pytest.mark.parametrize(
    ("header", "piece"),
    [
        ("bytes=0-99", slice(0, 100)),
        ("bytes=4999000-", slice(4_999_000, None)),
        ("bytes=-1234", slice(-1234, None)),
        ("bytes=1048570-3000000", slice(1_048_570, 3_000_001)),  # across chunk edges
        ("bytes=4999990-9999999", slice(4_999_990, None)),  # end clamped to the size
    ],
)
def test_range_requests_answer_206_with_the_exact_bytes(
    daemon: ThreadDaemon, stored: tuple[str, bytes], header: str, piece: slice
) -> None:
    tx_id, data = stored
    response = httpx.get(
        f"{daemon.http}/v1/transactions/{tx_id}", headers={"Range": header}, timeout=60
    )
    expected = data[piece]
    start = piece.indices(len(data))[0]
    assert response.status_code == 206
    assert response.content == expected
    assert response.headers["content-range"] == (
        f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    )
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers["x-bustrail-checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.mark.parametrize("header", ["bytes=5000048-", "bytes=9999999-", "bytes=10-5", "bytes=-0"])
def test_unsatisfiable_ranges_answer_416(
    daemon: ThreadDaemon, stored: tuple[str, bytes], header: str
) -> None:
    tx_id, data = stored
    response = httpx.get(
        f"{daemon.http}/v1/transactions/{tx_id}", headers={"Range": header}, timeout=60
    )
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_a_range_form_the_daemon_does_not_serve_gets_the_whole_payload(
    daemon: ThreadDaemon, stored: tuple[str, bytes]
) -> None:
    """RFC 9110: a server may ignore a Range it does not support (here: several ranges)
    and answer 200 with everything; 416 would wrongly say none is satisfiable."""
    tx_id, data = stored
    response = httpx.get(
        f"{daemon.http}/v1/transactions/{tx_id}",
        headers={"Range": "bytes=0-1,5-6"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.content == data


def test_a_download_records_the_fetch(daemon: ThreadDaemon, stored: tuple[str, bytes]) -> None:
    tx_id, data = stored
    daemon.runtime.audit.flush()
    (before,) = audit_rows(database_url(daemon), id=tx_id)
    assert (before["status"], before["fetch_count"], before["first_fetched_at"]) == (
        "stored",
        0,
        None,
    )
    for expected_count in (1, 2):
        assert httpx.get(f"{daemon.http}/v1/transactions/{tx_id}", timeout=60).content == data
        (after,) = audit_rows(database_url(daemon), id=tx_id)
        assert after["status"] == "fetched"
        assert after["fetch_count"] == expected_count
        assert after["first_fetched_at"] is not None


def test_unknown_and_malformed_ids_answer_404(daemon: ThreadDaemon) -> None:
    for tx_id in (new_transaction_id()[0], uuid.uuid4(), "not-a-uuid"):
        response = httpx.get(f"{daemon.http}/v1/transactions/{tx_id}", timeout=10)
        assert response.status_code == 404
        assert response.json() == {"error": "transaction not found"}


def test_an_inline_result_has_no_payload_to_download(daemon: ThreadDaemon) -> None:
    async def scenario() -> str:
        async with await Client.connect(daemon.url) as client:
            result = await client.call("echo", {"text": "hi"})
            assert result.route == "inline" and result.transaction_id
            return result.transaction_id

    tx_id = asyncio.run(scenario())
    daemon.runtime.audit.flush()
    response = httpx.get(f"{daemon.http}/v1/transactions/{tx_id}", timeout=10)
    assert response.status_code == 410
    assert response.json()["status"] == "delivered"


# -- HTTP upload ------------------------------------------------------------------------
def test_an_upload_is_stored_verified_and_audited(daemon: ThreadDaemon) -> None:
    payload = b"upload \x00\xff bytes " * 10_000
    response = httpx.post(
        f"{daemon.http}/v1/transactions",
        content=payload,
        headers={
            "x-bustrail-checksum": f"sha256:{hashlib.sha256(payload).hexdigest()}",
            "x-bustrail-tool": "digest",
        },
        timeout=60,
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["uri"] == f"bustrail://transactions/{answer['transaction_id']}"
    assert answer["size"] == len(payload)
    assert answer["checksum"] == f"sha256:{hashlib.sha256(payload).hexdigest()}"
    back = httpx.get(f"{daemon.http}/v1/transactions/{answer['transaction_id']}", timeout=60)
    assert back.content == payload
    daemon.runtime.audit.flush()
    (row,) = audit_rows(database_url(daemon), id=answer["transaction_id"])
    assert (row["direction"], row["route"], row["status"], row["size"], row["daemon_id"]) == (
        "upload",
        "store",
        "fetched",
        len(payload),
        daemon.runtime.bus.daemon_id,
    )


def test_a_damaged_upload_is_refused_and_not_kept(daemon: ThreadDaemon) -> None:
    payload = b"x" * 300_000
    wrong = hashlib.sha256(b"something else").hexdigest()
    response = httpx.post(
        f"{daemon.http}/v1/transactions",
        content=payload,
        headers={"x-bustrail-checksum": f"sha256:{wrong}"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "damaged" in response.json()["error"] and "not kept" in response.json()["error"]
    daemon.runtime.audit.flush()
    (row,) = audit_rows(database_url(daemon), direction="upload")
    assert chunk_count(database_url(daemon), row["id"]) == 0
    # Archived as refused, with why: not mistaken for an ordinary expiry.
    assert (row["status"], row["error_kind"]) == ("rejected", "upload_damaged")
    again = httpx.get(f"{daemon.http}/v1/transactions/{row['id']}", timeout=10)
    assert again.status_code in (404, 410)

    async def use_it() -> RPCError:
        async with await Client.connect(daemon.url) as client:
            with pytest.raises(RPCError) as refused:
                await client.call("echo", {"text": f"bustrail://transactions/{row['id']}"})
            await client.ping()  # the session is still fine
            return refused.value

    error = asyncio.run(use_it())
    assert error.code == -32602


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_upload_over_the_payload_limit_gets_413(tmp_path: Path, declared: bool) -> None:
    payload = b"y" * (2 * ONE_MIB)

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    with thread_daemon(tmp_path, message_bus_max_payload_mb=1) as daemon:
        response = httpx.post(
            f"{daemon.http}/v1/transactions",
            content=payload if declared else chunked(),
            timeout=60,
        )
        assert response.status_code == 413, response.text
        assert "MESSAGE_BUS_MAX_PAYLOAD_MB" in response.json()["error"]
        daemon.runtime.audit.flush()
        rows = audit_rows(database_url(daemon))
        # A declared Content-Length is refused at the door, before a byte is read; a
        # streamed body once it grows past the limit. Both leave one record saying so.
        (row,) = rows
        assert (row["direction"], row["status"]) == ("upload", "rejected")
        assert row["error_kind"] == "payload_too_large"
        assert row["size"] > ONE_MIB  # the declared length, or how far the stream got
        if declared:
            assert row["size"] == len(payload)
        assert chunk_count(database_url(daemon), row["id"]) == 0
        # The daemon still takes an upload under the limit.
        small = httpx.post(f"{daemon.http}/v1/transactions", content=b"ok" * 1000, timeout=60)
        assert small.status_code == 201


# -- auth and tenants -------------------------------------------------------------------
TOKENS = "tok-alice=alice,tok-bob=bob"
ORIGIN = "https://console.example"


@pytest.fixture
def tenant_daemon(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Auth on, two tenants; on PostgreSQL the daemon runs as a non-superuser role so
    row-level security is in force too."""
    settings = {
        "bustrail_auth_disabled": False,
        "bustrail_auth_tokens": TOKENS,
        "bustrail_allowed_origins": ORIGIN,
    }
    if db_url.startswith("sqlite"):
        with thread_daemon(tmp_path, database_url=db_url, **settings) as daemon:
            yield daemon
        return
    with (
        roles.app_role(db_url) as app_url,
        thread_daemon(tmp_path, database_url=app_url, **settings) as daemon,
    ):
        yield daemon


def _get(daemon: Any, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{daemon.http}{path}", headers=headers, timeout=30)


def test_another_tenants_ids_answer_exactly_like_unknown_ones(tenant_daemon: Any) -> None:
    daemon = tenant_daemon

    async def alice_stores() -> tuple[str, str, str]:
        async with await Client.connect(daemon.url, token="tok-alice") as alice:
            stored = await alice.call("generate", {"size": 2 * MB})
            inline = await alice.call("echo", {"text": "hello"})
            upload = await alice.upload(b"alice's secret input" * 100)
            assert stored.route == "store" and inline.route == "inline"
            assert stored.transaction_id and inline.transaction_id
            return stored.transaction_id, inline.transaction_id, upload["transaction_id"]

    stored_id, inline_id, upload_id = asyncio.run(alice_stores())
    daemon.runtime.audit.flush()
    random_ids = [str(new_transaction_id()[0]), str(uuid.uuid4())]

    # HTTP: the same answer, byte for byte, as an id that never existed.
    reference = _get(daemon, f"/v1/transactions/{random_ids[0]}", "tok-bob")
    assert reference.status_code == 404
    for tx_id in (stored_id, inline_id, upload_id, *random_ids):
        response = _get(daemon, f"/v1/transactions/{tx_id}", "tok-bob")
        assert (response.status_code, response.content) == (404, reference.content)
    assert _get(daemon, f"/v1/transactions/{stored_id}", "tok-alice").status_code == 200
    assert _get(daemon, f"/v1/transactions/{upload_id}", "tok-alice").status_code == 200

    # WebSocket: resources/read and upload references, same code, same message shape.
    async def bob_guesses() -> list[tuple[str, RPCError]]:
        errors = []
        async with await Client.connect(daemon.url, token="tok-bob") as bob:
            for tx_id in (stored_id, inline_id, upload_id, *random_ids):
                with pytest.raises(RPCError) as read:
                    await bob.read_resource(f"bustrail://transactions/{tx_id}")
                errors.append((tx_id, read.value))
                with pytest.raises(RPCError) as replay:
                    await bob.call("echo", {"text": f"bustrail://transactions/{tx_id}"})
                errors.append((tx_id, replay.value))
            assert (await bob.call("echo", {"text": "still here"})).text == "still here"
        return errors

    errors = asyncio.run(bob_guesses())
    shapes = {(e.code, e.message.replace(tx_id, "<id>"), repr(e.data)) for tx_id, e in errors}
    assert shapes == {
        (-32004, "transaction <id> not found", "None"),
        (-32602, "invalid params: argument 'text': transaction <id> not found", "None"),
    }


def test_missing_or_unknown_tokens_are_refused(tenant_daemon: Any) -> None:
    daemon = tenant_daemon
    before = refused_counts(daemon.http)

    async def connect(url: str, **kwargs: Any) -> websockets.ConnectionClosed:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with websockets.connect(url, open_timeout=10, **kwargs) as ws:
                await ws.recv()
        return closed.value

    async def scenario() -> list[websockets.ConnectionClosed]:
        return [
            await connect(daemon.url),
            await connect(daemon.url, additional_headers={"Authorization": "Bearer nope"}),
            await connect(daemon.url + "?token=nope"),
        ]

    for closed in asyncio.run(scenario()):
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        assert "token" in closed.rcvd.reason

    for token in (None, "nope"):
        got = _get(daemon, f"/v1/transactions/{new_transaction_id()[0]}", token)
        assert got.status_code == 401
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        posted = httpx.post(
            f"{daemon.http}/v1/transactions", content=b"x", headers=headers, timeout=10
        )
        assert posted.status_code == 401
    assert refused_counts(daemon.http).get("401", 0) - before.get("401", 0) == 3

    # Our client says why, in one line.
    async def client_connect() -> None:
        await Client.connect(daemon.url, token="nope")

    with pytest.raises(ClientError, match="token"):
        asyncio.run(client_connect())


def test_the_token_may_come_in_the_query_string(tenant_daemon: Any) -> None:
    async def scenario() -> dict[str, Any]:
        async with raw_client(tenant_daemon.url + "?token=tok-alice") as client:
            return await client.call("echo", {"text": "via query"})

    response = asyncio.run(scenario())
    assert response["result"]["content"][0]["text"] == "via query"


def test_a_disallowed_origin_is_refused(tenant_daemon: Any) -> None:
    daemon = tenant_daemon
    auth = {"Authorization": "Bearer tok-alice"}

    async def scenario() -> tuple[websockets.ConnectionClosed, dict[str, Any]]:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with websockets.connect(
                daemon.url, additional_headers=auth, origin="https://evil.example"
            ) as ws:
                await ws.recv()
        async with websockets.connect(daemon.url, additional_headers=auth, origin=ORIGIN) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            answer = json.loads(await ws.recv())
        return closed.value, answer

    closed, answer = asyncio.run(scenario())
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert "origin" in closed.rcvd.reason
    assert answer == {"jsonrpc": "2.0", "id": 1, "result": {}}


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(None, None), (["mcp"], "mcp"), (["graphql-ws", "mcp"], "mcp"), (["graphql-ws"], None)],
    ids=["none-offered", "mcp", "mcp-among-others", "mcp-not-offered"],
)
def test_the_mcp_subprotocol_is_chosen_when_offered(
    daemon: ThreadDaemon, offered: list[str] | None, chosen: str | None
) -> None:
    async def scenario() -> tuple[str | None, dict[str, Any]]:
        protocols = [Subprotocol(p) for p in offered] if offered is not None else None
        async with raw_client(daemon.url, subprotocols=protocols) as client:
            return client.ws.subprotocol, await client.request("ping")

    subprotocol, answer = asyncio.run(scenario())
    assert subprotocol == chosen
    assert answer["result"] == {}  # and the connection serves either way


# -- operations -------------------------------------------------------------------------
def test_health_readiness_and_metrics_answer(daemon: ThreadDaemon) -> None:
    assert httpx.get(f"{daemon.http}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{daemon.http}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    metrics = httpx.get(f"{daemon.http}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "bustrail_refused_frames_total" in metrics.text or "bustrail_refused_frames" in (
        metrics.text
    )
