"""Gateway mode: an MCP server written with the official SDK, put behind the daemon
unchanged, gains claim checks, previews, audit records, traces and restarts.

The upstream is ``upstream_server.py`` (FastMCP over stdio), launched by the daemon:
``bustrail serve --upstream up=...`` in a subprocess where the command line, the log
and crashes matter, a daemon in this process where spans are collected in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from analysis.detectors import run_detectors
from bus.db import Database
from bus.errors import SettingsError
from bus.settings import load_settings
from bus.telemetry import Telemetry, make_tracer_provider
from daemon.client import Client, RPCError
from daemon.gateway import UpstreamSpec
from daemon.server import upstream_specs
from tests.daemon.support import audit_rows, wait_until
from tests.gateway.support import (
    call,
    fetch,
    gateway_daemon,
    metric,
    readyz,
    texts,
    tool_names,
    upstream_command,
    upstream_spec,
)
from tests.gateway.upstream_server import STARTED, json_rows, png_bytes, text_of
from tests.helpers.daemon import DaemonProcess, ThreadDaemon, daemon_env

BIG = 20_000_000  # over MESSAGE_BUS_THRESHOLD_BYTES (1 MiB) many times over
SMALL = 10_000


def _one_row(db_url: str, transaction_id: str | None) -> dict[str, Any]:
    assert transaction_id is not None
    rows = audit_rows(db_url, id=transaction_id)
    assert len(rows) == 1, rows
    return rows[0]


def _row_when(
    db_url: str, transaction_id: str | None, what: str, **expected: Any
) -> dict[str, Any]:
    """The audit row of a subprocess daemon once it has been written (batches are async)."""
    assert transaction_id is not None

    def written() -> bool:
        rows = audit_rows(db_url, id=transaction_id)
        return len(rows) == 1 and all(rows[0][k] == v for k, v in expected.items())

    wait_until(written, what)
    return _one_row(db_url, transaction_id)


def _status(row: dict[str, Any]) -> str:
    return str(getattr(row["status"], "value", row["status"]))


# -- 1. through `bustrail serve --upstream`: inline, stored with a preview, fetched ---------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str]]:
    """``bustrail serve --upstream up="<python> upstream_server.py up"``, logging at info."""
    tmp = tmp_path_factory.mktemp("served")
    env = daemon_env(tmp, bustrail_audit_flush_seconds=0.05)
    daemon = DaemonProcess(env, "--upstream", f"up={upstream_command()}", "--log-level", "info")
    try:
        yield daemon, env["DATABASE_URL"]
    finally:
        daemon.stop()


def test_a_small_result_comes_back_inline_audited_as_the_upstreams_tool(
    served: tuple[DaemonProcess, str],
) -> None:
    daemon, db_url = served
    result = call(daemon.url, "text", {"size": SMALL})
    assert not result.is_error and result.route == "inline"
    assert result.inline_bytes() == text_of(SMALL).encode()  # checksum verified too
    row = _row_when(
        db_url, result.transaction_id, "the inline audit row", tool="up.text", status="delivered"
    )
    assert row["size"] == len(text_of(SMALL).encode())
    assert row["error_kind"] is None
    assert row["trace_id"] and len(row["trace_id"]) == 32


def test_a_huge_json_result_is_stored_with_a_json_preview_and_fetched_intact(
    served: tuple[DaemonProcess, str],
) -> None:
    daemon, db_url = served
    expected = json_rows(BIG).encode()
    result = call(daemon.url, "rows", {"size": BIG})
    assert not result.is_error and result.route == "store"
    tx = result.transaction_id
    assert tx is not None

    notice, preview = texts(result)
    assert notice.startswith("[bustrail] Result cut:")
    assert f"{len(expected):,} bytes in all" in notice
    assert f"GET /v1/transactions/{tx}" in notice
    assert f"resources/read bustrail://transactions/{tx}" in notice
    shown = json.loads(preview)  # the preview of a JSON list is JSON
    assert shown["total_items"] == len(json.loads(expected))
    assert shown["items"] == json.loads(expected)[: shown["shown"]] and shown["shown"] >= 1
    assert len(preview.encode()) <= 2048 + 1024  # BUSTRAIL_PREVIEW_HEAD/TAIL_BYTES defaults
    link = result.resource_link
    assert link is not None and link["uri"] == f"bustrail://transactions/{tx}"
    assert link["size"] == len(expected) and link["mimeType"] == "application/json"
    assert result.meta["preview"] == {"shape": "json-list", "truncated": True}

    data = fetch(daemon.url, tx)  # the client checks the SHA-256 the daemon announced ...
    assert result.checksum == hashlib.sha256(expected).hexdigest()  # ... which is the right one
    assert data == expected

    row = _row_when(db_url, tx, "the fetch in the audit row", status="fetched")
    assert row["tool"] == "up.rows" and row["fetch_count"] == 1
    assert row["size"] == len(expected)
    assert row["checksum"] == hashlib.sha256(expected).hexdigest()
    assert row["mime_type"] == "application/json"
    assert row["trace_id"] and len(row["trace_id"]) == 32


def test_the_upstreams_stderr_goes_to_the_daemons_log(served: tuple[DaemonProcess, str]) -> None:
    daemon, _db_url = served
    line = f"a line on stderr {os.urandom(4).hex()}"
    assert call(daemon.url, "shout", {"line": line}).text == "ok"
    wait_until(lambda: line in daemon.log_text(), "the upstream's stderr line in the log")
    logged = [ln for ln in daemon.log_text().splitlines() if line in ln]
    assert len(logged) == 1 and "bustrail.upstream.up" in logged[0]
    assert any(
        STARTED in ln and "bustrail.upstream.up" in ln for ln in daemon.log_text().splitlines()
    )


# -- 1. traces: the upstream call is a child span of the tools/call server span -------------
def _tracing() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    return exporter, make_tracer_provider(extra=SimpleSpanProcessor(exporter))


def test_the_upstream_call_is_a_child_span_of_the_server_span(tmp_path: Path) -> None:
    exporter, provider = _tracing()
    with gateway_daemon(tmp_path, [upstream_spec()], telemetry=Telemetry(provider)) as daemon:
        db_url = str(daemon.runtime.settings.database_url.get_secret_value())
        inline = call(daemon.url, "text", {"size": SMALL})
        stored = call(daemon.url, "rows", {"size": 2_000_000})
        failed = call(daemon.url, "boom", {"message": "no such thing"})
        daemon.runtime.audit.flush()
        rows = {r["tool"]: r for r in audit_rows(db_url)}
    assert (inline.route, stored.route) == ("inline", "store")
    assert failed.is_error

    spans = list(exporter.get_finished_spans())
    for tool, result in (("text", inline), ("rows", stored), ("boom", failed)):
        (server,) = [
            s for s in spans if s.name == f"tools/call {tool}" and s.kind is SpanKind.SERVER
        ]
        (upstream,) = [s for s in spans if s.name == f"upstream up tools/call {tool}"]
        assert server.context is not None and upstream.context is not None
        assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
        assert upstream.context.trace_id == server.context.trace_id
        assert (upstream.attributes or {})["bustrail.upstream"] == "up"
        assert (upstream.attributes or {})["gen_ai.tool.name"] == tool
        row = rows[f"up.{tool}"]
        assert str(row["id"]) == result.transaction_id
        assert row["trace_id"] == f"{server.context.trace_id:032x}"
        assert row["span_id"] == f"{server.context.span_id:016x}"
    boom = next(s for s in spans if s.name == "upstream up tools/call boom")
    assert boom.status.status_code is StatusCode.ERROR
    assert (boom.attributes or {})["error.type"] == "tool_error"


# -- 2. an upstream killed mid-call: a clear error, an honest audit, a restart ---------------
def test_an_upstream_killed_mid_call_fails_the_call_clearly_and_comes_back(
    tmp_path: Path,
) -> None:
    env = daemon_env(tmp_path, bustrail_audit_flush_seconds=0.05)
    daemon = DaemonProcess(env, "--upstream", f"up={upstream_command()}")
    try:
        assert readyz(daemon.http)[1]["checks"]["upstreams"]["up"]["restarts"] == 0
        assert metric(daemon.http, "bustrail_upstream_up", upstream="up") == 1
        restarts_before = metric(daemon.http, "bustrail_upstream_restarts_total", upstream="up")
        pid_file = tmp_path / "upstream.pid"

        async def killed_mid_call() -> Any:
            async with await Client.connect(daemon.url) as client:
                running = asyncio.ensure_future(
                    client.call("sleepy", {"seconds": 120, "pid_file": str(pid_file)})
                )
                while not pid_file.exists():  # the call has reached the upstream
                    assert not running.done(), running
                    await asyncio.sleep(0.05)
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return await asyncio.wait_for(running, 60)

        crashed = asyncio.run(killed_mid_call())
        assert crashed.is_error
        assert crashed.text == (
            "upstream 'up' closed while running 'sleepy' (it crashed or exited); "
            "it is being restarted"
        )
        row = _row_when(env["DATABASE_URL"], crashed.transaction_id, "the crash", status="failed")
        assert row["tool"] == "up.sleepy"
        assert row["error_kind"] == "upstream_crashed"
        assert "closed while running 'sleepy'" in row["error"]

        def ready_again() -> bool:
            status, body = readyz(daemon.http)
            up = body["checks"]["upstreams"]["up"]
            return status == 200 and up["state"] == "ready" and up["restarts"] == 1

        wait_until(ready_again, "/readyz to show the upstream restarted and ready")
        assert metric(daemon.http, "bustrail_upstream_restarts_total", upstream="up") == (
            (restarts_before or 0) + 1
        )
        assert metric(daemon.http, "bustrail_upstream_up", upstream="up") == 1
        assert (
            metric(daemon.http, "bustrail_upstream_calls_total", upstream="up", outcome="crashed")
            == 1
        )

        after = call(daemon.url, "text", {"size": 100})
        assert not after.is_error and after.inline_bytes() == text_of(100).encode()
        assert int(pid_file.read_text()) != call_pid(daemon.url, tmp_path)
    finally:
        daemon.stop()


def call_pid(url: str, tmp_path: Path) -> int:
    """The pid of the upstream running now (``sleepy`` writes it before it sleeps)."""
    pid_file = tmp_path / "now.pid"
    assert not call(url, "sleepy", {"seconds": 0, "pid_file": str(pid_file)}).is_error
    return int(pid_file.read_text())


def test_an_upstream_that_exits_mid_call_fails_that_call_only(tmp_path: Path) -> None:
    with gateway_daemon(tmp_path, [upstream_spec()]) as daemon:
        died = call(daemon.url, "die")
        assert died.is_error and "closed while running 'die'" in died.text
        upstream = daemon.runtime.gateway.upstreams[0]  # type: ignore[union-attr]
        wait_until(lambda: upstream.state == "ready" and upstream.restarts == 1, "a restart")
        assert call(daemon.url, "text", {"size": 10}).inline_bytes() == text_of(10).encode()
        daemon.runtime.audit.flush()
        (row,) = audit_rows(
            str(daemon.runtime.settings.database_url.get_secret_value()), tool="up.die"
        )
        assert (_status(row), row["error_kind"]) == ("failed", "upstream_crashed")


def test_a_call_the_client_cancels_is_cancelled_in_the_upstream_too(tmp_path: Path) -> None:
    marker = str(tmp_path / "waits")
    with gateway_daemon(tmp_path, [upstream_spec()]) as daemon:

        async def cancel_mid_call() -> None:
            async with await Client.connect(daemon.url) as client:
                running = asyncio.ensure_future(
                    client.call("waits", {"seconds": 120, "marker": marker})
                )
                while not Path(marker + ".started").exists():  # it runs upstream now
                    assert not running.done(), running
                    await asyncio.sleep(0.05)
                running.cancel()  # the client sends notifications/cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await running

        asyncio.run(cancel_mid_call())
        wait_until(lambda: Path(marker + ".cancelled").exists(), "the upstream to cancel the call")
        daemon.runtime.audit.flush()
        (row,) = audit_rows(
            str(daemon.runtime.settings.database_url.get_secret_value()), tool="up.waits"
        )
        assert (_status(row), row["error_kind"]) == ("failed", "cancelled")
        # The upstream is still there and answers.
        assert call(daemon.url, "text", {"size": 10}).inline_bytes() == text_of(10).encode()


def test_a_call_that_times_out_is_cancelled_in_the_upstream_too(tmp_path: Path) -> None:
    marker = str(tmp_path / "waits")
    with gateway_daemon(tmp_path, [upstream_spec()], bustrail_tool_timeout_seconds=1.0) as daemon:
        timed_out = call(daemon.url, "waits", {"seconds": 120, "marker": marker})
        assert timed_out.is_error and "timed out" in timed_out.text, timed_out.text
        assert Path(marker + ".started").exists()
        wait_until(lambda: Path(marker + ".cancelled").exists(), "the upstream to cancel the call")


def test_tools_the_upstream_adds_or_removes_appear_and_go(tmp_path: Path) -> None:
    with gateway_daemon(tmp_path, [upstream_spec()]) as daemon:
        assert "added" not in tool_names(daemon.url)
        assert texts(call(daemon.url, "grow")) == ["grown"]
        wait_until(lambda: "added" in tool_names(daemon.url), "the new tool to be listed")
        assert texts(call(daemon.url, "added")) == ["added"]

        assert texts(call(daemon.url, "shrink")) == ["shrunk"]
        wait_until(lambda: "added" not in tool_names(daemon.url), "the tool to go")
        with pytest.raises(RPCError, match="added"):
            call(daemon.url, "added")
        assert "text" in tool_names(daemon.url)  # the others stay


@pytest.mark.filterwarnings(
    "ignore:The WebSocket client transport is deprecated:DeprecationWarning"
)
def test_clients_connected_through_the_official_sdk_hear_that_the_tools_changed(
    tmp_path: Path,
) -> None:
    """The daemon says ``tools.listChanged`` in gateway mode and, when an upstream adds
    or removes a tool, sends ``notifications/tools/list_changed`` to every client that
    initialized: an MCP client (here the official SDK's) then lists them again."""
    from mcp import ClientSession
    from mcp import types as mcp_types
    from mcp.client.websocket import websocket_client

    async def scenario(url: str) -> tuple[bool, list[set[str]]]:
        heard = asyncio.Queue[None]()

        async def on_message(message: Any) -> None:
            if isinstance(message, mcp_types.ServerNotification) and isinstance(
                message.root, mcp_types.ToolListChangedNotification
            ):
                heard.put_nowait(None)

        seen = []
        async with (
            websocket_client(url) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            init = await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            seen.append(names)
            await session.call_tool("grow", {})
            await asyncio.wait_for(heard.get(), 30)
            seen.append({t.name for t in (await session.list_tools()).tools})
            await session.call_tool("shrink", {})
            await asyncio.wait_for(heard.get(), 30)
            seen.append({t.name for t in (await session.list_tools()).tools})
            assert heard.empty()  # one notice per change, none for nothing
            listed_changed = bool(init.capabilities.tools and init.capabilities.tools.listChanged)
            return listed_changed, seen

    with gateway_daemon(tmp_path, [upstream_spec()]) as daemon:
        listed_changed, (before, grown, shrunk) = asyncio.run(scenario(daemon.url))
    assert listed_changed
    assert "added" not in before and "text" in before
    assert grown == before | {"added"}
    assert shrunk == before


def test_without_upstreams_the_tool_list_is_said_not_to_change(tmp_path: Path) -> None:
    async def scenario(url: str) -> Any:
        async with await Client.connect(url) as client:
            return client.server["capabilities"]["tools"]

    with gateway_daemon(tmp_path, []) as daemon:
        assert asyncio.run(scenario(daemon.url)) == {"listChanged": False}


# -- 3. the detectors see gateway traffic like any other -----------------------------------
def test_empty_and_error_text_successes_are_found_as_empty_success(tmp_path: Path) -> None:
    with gateway_daemon(tmp_path, [upstream_spec()]) as daemon:
        empty = call(daemon.url, "empty")
        error_text = call(daemon.url, "error_text")
        fine = call(daemon.url, "text", {"size": 100})
        daemon.runtime.audit.flush()
        db_url = str(daemon.runtime.settings.database_url.get_secret_value())
    assert not empty.is_error and not error_text.is_error  # successes, as far as MCP goes
    assert empty.inline_bytes() == b""
    assert error_text.text.startswith("Error: rate limited")
    kinds = {r["tool"]: (_status(r), r["error_kind"]) for r in audit_rows(db_url)}
    assert kinds == {
        "up.empty": ("delivered", "empty_result"),
        "up.error_text": ("delivered", "error_text"),
        "up.text": ("delivered", None),
    }

    db = Database(db_url)
    try:
        result = run_detectors(db, timedelta(hours=1))
    finally:
        db.dispose()
    found = {(f.kind, f.tool): f for f in result.findings}
    assert set(found) == {("empty_success", "up.empty"), ("empty_success", "up.error_text")}
    assert found["empty_success", "up.empty"].transaction_ids == (empty.transaction_id,)
    assert found["empty_success", "up.error_text"].transaction_ids == (error_text.transaction_id,)
    assert fine.transaction_id not in {t for f in result.findings for t in f.transaction_ids}


# -- 4. previews as the caller asks for them -----------------------------------------------
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadDaemon]:
    """One upstream, in this process, with the default 1 MiB threshold."""
    with gateway_daemon(tmp_path_factory.mktemp("gateway"), [upstream_spec()]) as daemon:
        yield daemon


TEXT = 3_000_000  # stored, and its head and tail are text
ROWS = 3_000_000


def test_preview_false_leaves_the_preview_out(gateway: ThreadDaemon) -> None:
    result = call(gateway.url, "text", {"size": TEXT}, meta={"bustrail": {"preview": False}})
    assert result.route == "store"
    (notice,) = texts(result)
    assert "(no preview)" in notice and f"{TEXT:,} bytes" in notice
    assert [c["type"] for c in result.content] == ["text", "resource_link"]
    assert result.meta["preview"] == {"shape": "none", "truncated": True}


def test_a_preview_of_head_100_and_tail_50_is_that_long(gateway: ThreadDaemon) -> None:
    whole = text_of(TEXT).encode()
    result = call(
        gateway.url,
        "text",
        {"size": TEXT},
        meta={"bustrail": {"preview": {"head": 100, "tail": 50}}},
    )
    assert result.route == "store"
    _notice, preview = texts(result)
    head, _, rest = preview.partition("\n[... ")
    omitted, _, tail = rest.partition(" bytes omitted ...]\n")
    assert whole.startswith(head.encode()) and 97 <= len(head.encode()) <= 100
    assert whole.endswith(tail.encode()) and 47 <= len(tail.encode()) <= 50
    assert int(omitted.replace(",", "")) == TEXT - 150

    rows = call(
        gateway.url,
        "rows",
        {"size": ROWS},
        meta={"bustrail": {"preview": {"head": 100, "tail": 50}}},
    )
    _notice, preview = texts(rows)
    assert len(preview.encode()) <= 150
    shown = json.loads(preview)
    assert shown["items"] == json.loads(json_rows(ROWS))[: shown["shown"]]


@pytest.mark.parametrize(
    ("tool", "size", "max_chars"),
    [
        ("text", TEXT, 5000),
        ("rows", ROWS, 5000),
        ("text", 5_600, 5000),  # 5,600 bytes, 5,280 characters: its message fits 6 KB
        ("text", TEXT, 1500),
        ("rows", ROWS, 1500),
    ],
)
def test_max_result_size_chars_sends_longer_results_to_the_store_with_a_preview_that_fits(
    gateway: ThreadDaemon, tool: str, size: int, max_chars: int
) -> None:
    meta = {"anthropic/maxResultSizeChars": max_chars}
    whole = text_of(size) if tool == "text" else json_rows(size)
    assert len(whole) > max_chars  # characters, as the client counts them
    result = call(gateway.url, tool, {"size": size}, meta=meta)
    assert result.route == "store", "a result longer than maxResultSizeChars went inline"
    notice, preview = texts(result)
    assert len(notice) + len(preview) <= max_chars
    # The preview takes the room there is: the default 2048 + 1024 bytes, or less.
    room = min(2048 + 1024, max_chars - 512)
    assert room - 150 <= len(preview.encode()) <= room + 64
    if tool == "rows":
        assert json.loads(preview)["shown"] >= 1
    assert fetch(gateway.url, result.transaction_id or "") == whole.encode()


def test_max_result_size_chars_lets_shorter_results_through_inline(gateway: ThreadDaemon) -> None:
    meta = {"anthropic/maxResultSizeChars": 5000}
    result = call(gateway.url, "text", {"size": 4_900}, meta=meta)
    assert result.route == "inline" and result.inline_bytes() == text_of(4_900).encode()


def test_an_upstream_tool_error_is_an_error_result_with_its_text(gateway: ThreadDaemon) -> None:
    result = call(gateway.url, "boom", {"message": "the disk is on fire"})
    assert result.is_error
    assert "the disk is on fire" in result.text
    gateway.runtime.audit.flush()
    db_url = str(gateway.runtime.settings.database_url.get_secret_value())
    row = _one_row(db_url, result.transaction_id)
    assert (row["tool"], _status(row), row["error_kind"]) == ("up.boom", "failed", "tool_error")
    assert "the disk is on fire" in row["error"]


@pytest.mark.parametrize("size", [10_000, 3_000_000])
def test_an_image_comes_back_as_its_bytes(gateway: ThreadDaemon, size: int) -> None:
    result = call(gateway.url, "picture", {"size": size})
    assert not result.is_error
    if result.route == "inline":
        (block,) = result.content
        assert block["type"] == "resource" and block["resource"]["mimeType"] == "image/png"
        assert result.inline_bytes() == png_bytes(size)
    else:
        assert size > 1024 * 1024
        notice, *_ = texts(result)
        assert "(no preview)" in notice  # binary: nothing to show an agent
        assert fetch(gateway.url, result.transaction_id or "") == png_bytes(size)
    assert result.route == ("inline" if size < 1024 * 1024 else "store")


def test_one_upstream_keeps_its_tool_names(gateway: ThreadDaemon) -> None:
    names = tool_names(gateway.url)
    assert {"text", "rows", "whoami", "boom"} <= names
    assert "up.text" not in names
    # A tool named like a built-in cannot take its name: it is up.echo.
    assert "echo" in names and "up.echo" in names
    assert call(gateway.url, "echo", {"text": "hi"}).text == "hi"  # the built-in
    assert call(gateway.url, "up.echo", {"text": "hi"}).text == "hi"
    assert call(gateway.url, "whoami").text == "up"


def test_two_upstreams_are_told_apart_by_name(tmp_path: Path) -> None:
    with gateway_daemon(tmp_path, [upstream_spec("alpha"), upstream_spec("beta")]) as daemon:
        names = tool_names(daemon.url)
        answers = {n: call(daemon.url, f"{n}.whoami").text for n in ("alpha", "beta")}
        result = call(daemon.url, "beta.text", {"size": 10})
        daemon.runtime.audit.flush()
        db_url = str(daemon.runtime.settings.database_url.get_secret_value())
    assert {"alpha.text", "beta.text", "alpha.echo", "beta.echo"} <= names
    assert not {"text", "whoami", "rows"} & names
    assert answers == {"alpha": "alpha", "beta": "beta"}
    assert _one_row(db_url, result.transaction_id)["tool"] == "beta.text"


# -- 4. configuration: BUSTRAIL_UPSTREAMS, bad flags, a command that does not exist ---------
def test_bustrail_upstreams_works_like_the_flag(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        bustrail_upstreams=json.dumps({"up": upstream_command()}),
        bustrail_audit_flush_seconds=0.05,
    )
    daemon = DaemonProcess(env)
    try:
        assert readyz(daemon.http)[1]["checks"]["upstreams"]["up"]["state"] == "ready"
        result = call(daemon.url, "whoami")
        assert result.text == "up"
        row = _row_when(env["DATABASE_URL"], result.transaction_id, "the row", status="delivered")
        assert row["tool"] == "up.whoami"
    finally:
        daemon.stop()


def test_a_bad_upstream_flag_is_one_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--port", "0", "--upstream", "notes"],
        env=daemon_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "bustrail: invalid settings:",
        "  --upstream: expected NAME=COMMAND, got 'notes'",
    ]
    assert "listening" not in done.stdout


@pytest.mark.parametrize(
    ("flags", "variable", "says"),
    [
        (["up="], "", "--upstream: expected NAME=COMMAND, got 'up='"),
        (
            ['up=python "unclosed'],
            "",
            "--upstream: cannot split the command of 'up=python \"unclosed'",
        ),
        (["a b=python x.py"], "", "--upstream: upstream name 'a b' must be"),
        (["up=a", "up=b"], "", "--upstream: names must be unique, got ['up', 'up']"),
        (["up=a"], '{"up": "b"}', "--upstream: names must be unique, got ['up', 'up']"),
        ([], "not json", 'BUSTRAIL_UPSTREAMS: expected JSON like {"NAME": "COMMAND"}'),
        ([], '{"up": ""}', 'BUSTRAIL_UPSTREAMS: expected a JSON object {"NAME": "COMMAND"}'),
        ([], '["python x.py"]', 'BUSTRAIL_UPSTREAMS: expected a JSON object {"NAME": "COMMAND"}'),
    ],
)
def test_each_bad_upstream_is_named_in_its_error(
    tmp_path: Path, flags: list[str], variable: str, says: str
) -> None:
    """What ``bustrail serve`` prints (the test above) for other mistakes."""
    settings = load_settings(
        _env_file=None, database_url=f"sqlite:///{tmp_path / 'x.db'}", bustrail_upstreams=variable
    )
    with pytest.raises(SettingsError) as refused:
        upstream_specs(settings, flags)
    assert refused.value.problems == [refused.value.problems[0]]  # one problem, one line
    assert refused.value.problems[0].startswith(says)


def test_an_upstream_that_cannot_start_leaves_the_daemon_up_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-mcp-server"
    env = daemon_env(tmp_path)
    daemon = DaemonProcess(env, "--upstream", f"ghost={missing} --stdio")
    try:
        status, body = readyz(daemon.http)
        assert status == 503 and body["ready"] is False
        ghost = body["checks"]["upstreams"]["ghost"]
        assert ghost["state"] != "ready"
        assert "No such file or directory" in ghost["last_error"]
        assert str(missing) in ghost["last_error"]
        assert body["checks"]["database"] == "ok"

        assert call(daemon.url, "echo", {"text": "built-ins work"}).text == "built-ins work"
        with pytest.raises(RPCError) as refused:
            call(daemon.url, "read_notes", {"query": "x"})
        assert "upstream 'ghost'" in refused.value.message
        assert "No such file or directory" in refused.value.message
        assert metric(daemon.http, "bustrail_upstream_up", upstream="ghost") == 0
    finally:
        daemon.stop()


def test_upstreams_that_cannot_start_say_why_and_the_others_work(tmp_path: Path) -> None:
    quits = "import sys; print('ModuleNotFoundError: notes_db', file=sys.stderr); sys.exit(3)"
    specs = [
        upstream_spec("alpha"),
        UpstreamSpec("ghost", str(tmp_path / "no-such-server")),
        UpstreamSpec("quitter", sys.executable, ("-c", quits)),
    ]
    with gateway_daemon(tmp_path, specs) as daemon:
        status, body = readyz(daemon.http)
        assert call(daemon.url, "alpha.whoami").text == "alpha"
        refusals = {}
        for name in ("ghost.search", "quitter.search"):
            with pytest.raises(RPCError) as refused:
                call(daemon.url, name)
            refusals[name] = refused.value.message
    upstreams = body["checks"]["upstreams"]
    assert status == 503 and upstreams["alpha"]["state"] == "ready"
    assert "No such file or directory" in upstreams["ghost"]["last_error"]
    assert "its stderr said: ModuleNotFoundError: notes_db" in upstreams["quitter"]["last_error"]
    assert "upstream 'ghost' is" in refusals["ghost.search"]
    assert "No such file or directory" in refusals["ghost.search"]
    assert "ModuleNotFoundError: notes_db" in refusals["quitter.search"]
