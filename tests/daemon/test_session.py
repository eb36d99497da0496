"""The JSON-RPC session over a real socket: frames sized to the client's cap, refusals
that leave the session usable, a fuzz of bad frames, concurrency, cancellation,
timeouts."""

from __future__ import annotations

import asyncio
import json
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as sync_connect

from daemon.client import Client, RPCError
from daemon.tools import generate_json
from tests.daemon.support import (
    ONE_MIB,
    TOOLS_FOR_TESTS,
    audit_rows,
    database_url,
    raw_client,
    refused_counts,
    wait_until,
)
from tests.helpers.daemon import ThreadDaemon, thread_daemon
from tests.helpers.tcpproxy import TCPProxy

TOO_LARGE = -32001


def _text_of(response: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in response["result"]["content"])


# -- every frame within the client's cap ------------------------------------------------
def _awkward_texts() -> dict[str, str]:
    """Results under the 1 MiB threshold whose encoded message is over it."""
    return {
        "plain, envelope pushes it over": "a" * (ONE_MIB - 100),
        "quotes and newlines double": '"\n' * (ONE_MIB // 4),
        "control characters grow sixfold": "\x01" * (ONE_MIB // 5),
        "non-ASCII near the threshold": "é" * (ONE_MIB // 2 - 20),
        "emoji near the threshold": "🙂" * (ONE_MIB // 4 - 10),
    }


@pytest.mark.parametrize("declared", [False, True], ids=["raw-no-initialize", "raw-declared"])
def test_a_raw_1mib_client_never_gets_a_larger_frame(daemon: ThreadDaemon, declared: bool) -> None:
    """A bare websockets client (max_size 1 MiB: a larger frame closes its connection)
    gets a claim check for each awkward result, and the stored bytes are intact."""
    initialize = (
        {"capabilities": {"experimental": {"bustrail": {"maxMessageBytes": ONE_MIB}}}}
        if declared
        else None
    )

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        out = []
        async with raw_client(daemon.url, initialize=initialize) as client:
            for name, text in _awkward_texts().items():
                out.append((name, await client.call("echo", {"text": text})))
            pong = await client.request("ping")
            assert pong["result"] == {}
        return out

    for name, response in asyncio.run(scenario()):
        meta = response["result"]["_meta"]["bustrail"]
        assert meta["route"] == "store", name
        stored = httpx.get(f"{daemon.http}{meta['download']}", timeout=60).content
        assert stored == _awkward_texts()[name].encode(), name


def test_the_inline_limit_is_exact_to_the_byte(daemon: ThreadDaemon) -> None:
    """The largest inline message is exactly the client's cap; one byte more is stored."""

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            # Measure the envelope once (same digit counts as the real calls below).
            probe_length = 1_000_000
            await client.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "a" * probe_length}},
                    }
                )
            )
            frame = await asyncio.wait_for(client.ws.recv(), 60)
            assert json.loads(frame)["result"]["_meta"]["bustrail"]["route"] == "inline"
            envelope = len(frame.encode()) - probe_length
            fits = ONE_MIB - envelope
            at_cap = await client.request(
                "tools/call", {"name": "echo", "arguments": {"text": "a" * fits}}, request_id=2
            )
            over = await client.request(
                "tools/call",
                {"name": "echo", "arguments": {"text": "a" * (fits + 1)}},
                request_id=3,
            )
            return fits, at_cap, over

    fits, at_cap, over = asyncio.run(scenario())
    assert at_cap["result"]["_meta"]["bustrail"]["route"] == "inline"
    assert len(json.dumps(at_cap, separators=(",", ":"), ensure_ascii=False).encode()) == ONE_MIB
    assert _text_of(at_cap) == "a" * fits
    assert over["result"]["_meta"]["bustrail"]["route"] == "store"


def test_a_preview_too_large_for_the_client_is_left_out(daemon: ThreadDaemon) -> None:
    """A client may ask for a large preview; the claim check must still fit its cap."""
    text = '"' * 1_000_000  # escaped, any preview of it doubles

    async def scenario() -> list[dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            answers = []
            for preview in ({"head": 1 << 20, "tail": 1 << 20}, {"head": 100, "tail": 50}):
                params = {
                    "name": "echo",
                    "arguments": {"text": text},
                    "_meta": {"bustrail": {"preview": preview}},
                }
                answers.append(await client.request("tools/call", params))
            return answers

    too_large, small = asyncio.run(scenario())
    for answer in (too_large, small):
        assert answer["result"]["_meta"]["bustrail"]["route"] == "store"
        assert any(c["type"] == "resource_link" for c in answer["result"]["content"])
    assert '""""' not in _text_of(too_large)  # no preview text
    assert '""""' in _text_of(small)  # the small preview is there


def test_the_smaller_of_threshold_and_cap_wins(tmp_path: Path) -> None:
    """A threshold of 8 MiB does not let a 2 MB result go inline to a 1 MiB client, but a
    client that declares 4 MiB gets it inline."""
    with thread_daemon(tmp_path, message_bus_threshold_bytes=8 * ONE_MIB) as daemon:

        async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
            async with raw_client(daemon.url) as small:
                a = await small.call("generate", {"size": 2_000_000})
            big_cap = {
                "capabilities": {"experimental": {"bustrail": {"maxMessageBytes": 4 * ONE_MIB}}}
            }
            async with raw_client(daemon.url, max_size=4 * ONE_MIB, initialize=big_cap) as big:
                b = await big.call("generate", {"size": 2_000_000})
            return a, b

        small, big = asyncio.run(scenario())
    assert small["result"]["_meta"]["bustrail"]["route"] == "store"
    assert big["result"]["_meta"]["bustrail"]["route"] == "inline"


@pytest.fixture
def low_threshold(tmp_path: Path) -> Iterator[ThreadDaemon]:
    """Threshold 64 KiB: results between it and the 1 MiB cap are stored, yet small
    enough for resources/read and for a fallback."""
    with thread_daemon(
        tmp_path, tool_modules=[TOOLS_FOR_TESTS], message_bus_threshold_bytes=64 * 1024
    ) as daemon:
        yield daemon


def test_resources_read_is_sized_against_the_cap(low_threshold: ThreadDaemon) -> None:
    daemon = low_threshold

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with raw_client(daemon.url) as client:
            fits = await client.call("echo", {"text": "f" * 200_000})
            escaped = await client.call("echo", {"text": '"' * 600_000})  # 1.2 MB escaped
            big = await client.call("generate", {"size": 3_000_000})
            for name, response in (("fits", fits), ("escaped", escaped), ("big", big)):
                assert response["result"]["_meta"]["bustrail"]["route"] == "store", name
                uri = f"bustrail://transactions/{response['result']['_meta']['bustrail']['transaction_id']}"
                out[name] = await client.request("resources/read", {"uri": uri})
                # The session is still usable after each answer.
                assert (await client.request("ping"))["result"] == {}
            out["after"] = await client.call("echo", {"text": "after"})
        return out

    out = asyncio.run(scenario())
    assert out["fits"]["result"]["contents"][0]["text"] == "f" * 200_000
    for name in ("escaped", "big"):
        error = out[name]["error"]
        assert error["code"] == TOO_LARGE, name
        assert "GET /v1/transactions/" in error["message"]
        assert error["data"]["download"].startswith("/v1/transactions/")
    assert _text_of(out["after"]) == "after"
    # A refused read is not a fetch.
    daemon.runtime.audit.flush()
    counts = {r["fetch_count"] for r in audit_rows(database_url(daemon), tool="generate")}
    assert counts == {0}


def test_our_client_gets_the_same_clean_refusals(low_threshold: ThreadDaemon) -> None:
    async def scenario() -> tuple[RPCError, str]:
        async with await Client.connect(low_threshold.url) as client:
            big = await client.call("generate", {"size": 3_000_000})
            assert big.resource_link is not None
            with pytest.raises(RPCError) as refused:
                await client.read_resource(big.resource_link["uri"])
            data = await client.result_bytes(big)  # the HTTP road works
            assert len(data) >= 3_000_000
            return refused.value, (await client.call("echo", {"text": "next"})).text

    error, text = asyncio.run(scenario())
    assert error.code == TOO_LARGE
    assert text == "next"


def test_errors_and_tool_failures_are_sized_against_the_cap_too(
    low_threshold: ThreadDaemon,
) -> None:
    """A tool error message or a refusal echoing what the client sent can be as large as
    the client's own frame: it must still reach a 1 MiB client whole-frame-safe."""
    huge = "x" * (2 * ONE_MIB)

    async def scenario() -> list[dict[str, Any]]:
        async with raw_client(low_threshold.url) as client:
            answers = [
                await client.call("fail", {"message": huge}),
                await client.call("boom", {"message": '"' * ONE_MIB}),
                await client.call(huge, {}),
                await client.request("resources/read", {"uri": huge}),
            ]
            answers.append(await client.call("echo", {"text": "still fine"}))
            return answers

    failed, boom, unknown, bad_uri, after = asyncio.run(scenario())
    assert failed["result"]["isError"] is True
    assert _text_of(failed).startswith("x" * 1000)
    assert boom["result"]["isError"] is True
    assert _text_of(boom).startswith('RuntimeError: """')
    assert unknown["error"]["code"] == -32602
    assert bad_uri["error"]["code"] == -32602
    assert _text_of(after) == "still fine"
    # The audit keeps the whole message, whatever the client was sent.
    low_threshold.runtime.audit.flush()
    (row,) = audit_rows(database_url(low_threshold), tool="fail")
    assert row["error"] == huge


# -- the store down: fallbacks ----------------------------------------------------------
@pytest.mark.postgres
def test_fallbacks_during_a_real_outage_respect_the_cap(pg_url: str, tmp_path: Path) -> None:
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    proxy = TCPProxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxied = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    try:
        with thread_daemon(
            tmp_path,
            database_url=proxied,
            message_bus_threshold_bytes=64 * 1024,
            bustrail_audit_flush_seconds=0.1,
        ) as daemon:

            async def scenario() -> dict[str, Any]:
                out: dict[str, Any] = {}
                async with (
                    raw_client(daemon.url) as raw,
                    await Client.connect(daemon.url) as client,
                ):
                    proxy.cut()
                    async with httpx.AsyncClient(base_url=daemon.http) as http:
                        out["readyz"] = (await http.get("/readyz", timeout=30)).status_code
                    out["fits"] = await raw.call("echo", {"text": "a" * 200_000})
                    out["escaped"] = await raw.call("echo", {"text": '"' * 600_000})
                    out["near"] = await raw.call("echo", {"text": "b" * (ONE_MIB - 100)})
                    out["raw_after"] = await raw.call("echo", {"text": "raw ok"})
                    fits = await client.call("generate", {"size": 300_000, "seed": 2})
                    out["client_fits"] = (fits.route, await client.result_bytes(fits))
                    with pytest.raises(RPCError) as refused:
                        await client.call("generate", {"size": 2_000_000})
                    out["client_refused"] = refused.value
                    out["client_after"] = (await client.call("echo", {"text": "ok"})).text
                    proxy.restore()
                return out

            out = asyncio.run(scenario())
            assert out["readyz"] == 503
            assert out["fits"]["result"]["_meta"]["bustrail"]["route"] == "fallback"
            assert _text_of(out["fits"]) == "a" * 200_000
            for name in ("escaped", "near"):
                error = out[name]["error"]
                assert error["code"] == TOO_LARGE, name
                assert error["data"]["error_kind"] == "fallback_oversize", name
            assert _text_of(out["raw_after"]) == "raw ok"
            assert out["client_fits"] == ("fallback", generate_json(300_000, 2).encode())
            assert out["client_refused"].code == TOO_LARGE
            assert out["client_after"] == "ok"

            # Once the database is back, the spooled audit records arrive.
            def settled() -> bool:
                daemon.runtime.audit.flush()
                stats = daemon.runtime.audit.stats()
                return stats.spooled == 0 and stats.queued == 0

            wait_until(settled, "the audit spool to drain")
            rows = audit_rows(pg_url, tool="echo") + audit_rows(pg_url, tool="generate")
    finally:
        proxy.close()
    outcomes = Counter((r["route"], r["status"], r["error_kind"]) for r in rows)
    assert outcomes == {
        ("fallback", "delivered", None): 2,
        ("fallback", "failed", "fallback_oversize"): 3,
        ("inline", "delivered", None): 2,
    }


# -- the fuzz ---------------------------------------------------------------------------
# The built-ins and the tools of tools_for_tests.
ALL_TOOLS = {"echo", "generate", "sleep", "fail", "read_file", "digest", "boom"}
ALL_TOOLS |= {"rendezvous", "wait_for_file"}
KNOWN_METHODS = {"initialize", "ping", "tools/list", "tools/call", "resources/read"}
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_not_objects = _json_values.filter(lambda v: not isinstance(v, dict) and v is not None)
_ids = st.one_of(st.integers(-(2**53), 2**53), st.text(min_size=1, max_size=40))
_letters = st.text(alphabet=string.ascii_letters + " -_", min_size=1, max_size=20)


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _parses(frame: str | bytes) -> bool:
    try:
        json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True


def _request(request_id: Any, method: Any, params: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
    if params is not None:
        message["params"] = params
    return message


@st.composite
def bad_frames(draw: st.DrawFn) -> tuple[str | bytes, str, Any, Any]:
    """(frame, kind, expected code, expected response id)."""
    rid = draw(_ids)
    kind = draw(
        st.sampled_from(
            [
                "malformed text",
                "malformed bytes",
                "not an object",
                "bad version",
                "bad id",
                "bad method",
                "unknown method",
                "params not an object",
                "tool name not a string",
                "unknown tool",
                "arguments not an object",
                "wrong argument type",
                "missing argument",
                "unexpected argument",
                "bad resource uri",
                "bad initialize cap",
                "tool raises",
            ]
        )
    )
    tools_call = "tools/call"
    if kind == "malformed text":
        return draw(st.text(min_size=1).filter(lambda t: not _parses(t))), kind, -32700, None
    if kind == "malformed bytes":
        return draw(st.binary(min_size=1).filter(lambda b: not _parses(b))), kind, -32700, None
    if kind == "not an object":
        return json.dumps(draw(_not_objects)), kind, -32600, None
    if kind == "bad version":
        version = draw(_json_values.filter(lambda v: v != "2.0"))
        return json.dumps(_request(rid, "ping", jsonrpc=version)), kind, -32600, rid
    if kind == "bad id":
        bad = draw(
            st.one_of(
                st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False).filter(
                    lambda f: not f.is_integer()
                ),
                st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                st.none(),
            )
        )
        return json.dumps(_request(bad, "ping")), kind, -32600, None
    if kind == "bad method":
        method = draw(st.one_of(st.just(""), _not_objects.filter(lambda v: not isinstance(v, str))))
        return json.dumps(_request(rid, method)), kind, -32600, rid
    if kind == "unknown method":
        method = draw(st.text(min_size=1, max_size=30).filter(lambda m: m not in KNOWN_METHODS))
        return json.dumps(_request(rid, method)), kind, -32601, rid
    if kind == "params not an object":
        method = draw(st.sampled_from(sorted(KNOWN_METHODS)))
        return json.dumps(_request(rid, method, draw(_not_objects))), kind, -32602, rid
    if kind == "tool name not a string":
        name = draw(_json_values.filter(lambda v: not isinstance(v, str)))
        return json.dumps(_request(rid, tools_call, {"name": name})), kind, -32602, rid
    if kind == "unknown tool":
        name = draw(st.text(max_size=30).filter(lambda n: n not in ALL_TOOLS))
        return (
            json.dumps(_request(rid, tools_call, {"name": name, "arguments": {}})),
            kind,
            -32602,
            rid,
        )
    if kind == "arguments not an object":
        arguments = draw(_not_objects)
        params = {"name": "echo", "arguments": arguments}
        return json.dumps(_request(rid, tools_call, params)), kind, -32602, rid
    if kind == "wrong argument type":
        tool, arguments = draw(
            st.one_of(
                st.tuples(
                    st.just("echo"),
                    st.fixed_dictionaries(
                        {
                            "text": st.one_of(
                                st.integers(),
                                st.floats(allow_nan=False),
                                st.lists(st.text(max_size=3), max_size=2),
                                st.dictionaries(
                                    st.text(max_size=3), st.text(max_size=3), max_size=2
                                ),
                                st.booleans(),
                                st.none(),
                            )
                        }
                    ),
                ),
                st.tuples(
                    st.just("generate"),
                    st.fixed_dictionaries(
                        {
                            "size": st.one_of(
                                _letters.filter(_not_a_number),
                                st.floats(allow_nan=False, allow_infinity=False).filter(
                                    lambda f: not f.is_integer()
                                ),
                                st.lists(st.integers(), max_size=2),
                                st.none(),
                            )
                        }
                    ),
                ),
                st.tuples(
                    st.just("sleep"),
                    st.fixed_dictionaries(
                        {
                            "seconds": st.one_of(
                                _letters.filter(_not_a_number),
                                st.lists(st.floats(), max_size=2),
                                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                                st.none(),
                            )
                        }
                    ),
                ),
            )
        )
        params = {"name": tool, "arguments": arguments}
        return json.dumps(_request(rid, tools_call, params)), kind, -32602, rid
    if kind == "missing argument":
        tool = draw(st.sampled_from(["echo", "generate", "sleep", "fail"]))
        return (
            json.dumps(_request(rid, tools_call, {"name": tool, "arguments": {}})),
            kind,
            -32602,
            rid,
        )
    if kind == "unexpected argument":
        extra = draw(st.text(min_size=1, max_size=10).filter(lambda k: k != "text"))
        arguments = {"text": "hi", extra: draw(_json_values)}
        return (
            json.dumps(_request(rid, tools_call, {"name": "echo", "arguments": arguments})),
            kind,
            -32602,
            rid,
        )
    if kind == "bad resource uri":
        uri = draw(
            _json_values.filter(lambda v: not (isinstance(v, str) and v.startswith("bustrail://")))
        )
        return json.dumps(_request(rid, "resources/read", {"uri": uri})), kind, -32602, rid
    if kind == "bad initialize cap":
        cap = draw(
            st.one_of(
                st.integers(max_value=16 * 1024 - 1),
                st.booleans(),
                st.text(max_size=5),
                st.floats(allow_nan=False),
            )
        )
        params = {"capabilities": {"experimental": {"bustrail": {"maxMessageBytes": cap}}}}
        return json.dumps(_request(rid, "initialize", params)), kind, -32602, rid
    # a tool that raises: an isError result with its message, not a refusal
    message = draw(st.text(max_size=200))
    tool = draw(st.sampled_from(["fail", "boom"]))
    params = {"name": tool, "arguments": {"message": message}}
    expected = message if tool == "fail" else f"RuntimeError: {message}"
    return json.dumps(_request(rid, tools_call, params)), kind, expected, rid


def test_fuzzed_bad_frames_are_refused_counted_and_never_stop_the_daemon(tmp_path: Path) -> None:
    with (
        thread_daemon(
            tmp_path, tool_modules=[TOOLS_FOR_TESTS], websocket_max_message_mb=1
        ) as daemon,
        sync_connect(daemon.url, max_size=ONE_MIB, open_timeout=10) as fuzz,
        sync_connect(daemon.url, max_size=ONE_MIB, open_timeout=10) as other,
    ):
        before = refused_counts(daemon.http)
        refused: Counter[str] = Counter()
        seen_kinds: Counter[str] = Counter()
        calls = iter(range(10**9))

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=bad_frames())
        def one_frame(case: tuple[str | bytes, str, Any, Any]) -> None:
            frame, kind, expected, rid = case
            seen_kinds[kind] += 1
            fuzz.send(frame)
            response = json.loads(fuzz.recv(timeout=30))
            assert response.get("jsonrpc") == "2.0"
            assert response.get("id") == rid, (kind, frame, response)
            if isinstance(expected, int):
                assert response["error"]["code"] == expected, (kind, frame, response)
                assert isinstance(response["error"]["message"], str)
                refused[str(expected)] += 1
            else:
                assert response["result"]["isError"] is True, (kind, frame, response)
                assert _text_of(response) == expected
            # Another client is served between any two bad frames.
            n = next(calls)
            other.send(
                json.dumps(
                    _request(n, "tools/call", {"name": "echo", "arguments": {"text": f"ok {n}"}})
                )
            )
            answer = json.loads(other.recv(timeout=30))
            assert answer["id"] == n and _text_of(answer) == f"ok {n}"

        one_frame()

        # A frame over WEBSOCKET_MAX_MESSAGE_MB (here 1 MB) closes that connection: 1009.
        with sync_connect(daemon.url, max_size=ONE_MIB, open_timeout=10) as victim:
            victim.send("x" * (ONE_MIB + 1))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                victim.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        refused["1009"] += 1
        # ... and the fuzzed connection and the other one still work.
        for conn, rid in ((fuzz, "after-fuzz"), (other, "after-other")):
            conn.send(json.dumps(_request(rid, "ping")))
            assert json.loads(conn.recv(timeout=30)) == {"jsonrpc": "2.0", "id": rid, "result": {}}

        def counted() -> dict[str, float]:
            after = refused_counts(daemon.http)
            return {code: after.get(code, 0) - before.get(code, 0) for code in after}

        wait_until(lambda: {k: v for k, v in counted().items() if v} == dict(refused), "counts")
    assert len(seen_kinds) >= 12, seen_kinds  # the fuzz reached most kinds of frame


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, -32700),  # deeper than the parser can go
        ('{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', -32600),  # unencodable id
        ('{"jsonrpc":"2.0","id":1,"method":"\\udfff"}', -32601),  # unencodable method
        (json.dumps(_request("i" * 10_000, "ping")), -32600),  # an id too long to echo
        (
            json.dumps(_request(1, "tools/call", {"name": "echo", "arguments": {"\ud800": 1}})),
            -32602,
        ),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}', -32602),
    ],
    ids=["deep", "surrogate-id", "surrogate-method", "long-id", "surrogate-key", "surrogate-tool"],
)
def test_frames_a_fuzzer_rarely_finds_are_refused_cleanly(
    daemon: ThreadDaemon, frame: str, code: int
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            await client.send(frame)
            answer = await client.receive()
            return answer, await client.request("ping")

    answer, pong = asyncio.run(scenario())
    assert answer["error"]["code"] == code
    assert pong["result"] == {}


# -- many calls, cancellation, timeouts ---------------------------------------------------
def test_many_calls_run_at_once_on_one_connection(daemon: ThreadDaemon) -> None:
    async def scenario() -> list[Any]:
        async with await Client.connect(daemon.url) as client:
            return list(
                await asyncio.gather(*(client.call("sleep", {"seconds": 1.0}) for _ in range(20)))
            )

    results = asyncio.run(scenario())
    assert [r.text for r in results] == ["slept 1.0s"] * 20
    daemon.runtime.audit.flush()
    rows = audit_rows(database_url(daemon), tool="sleep")
    assert len(rows) == 20 and {r["status"] for r in rows} == {"delivered"}
    # Every call started before any finished: all 20 were in flight together.
    assert max(r["created_at"] for r in rows) < min(r["delivered_at"] for r in rows)


def test_twenty_calls_meet_on_one_connection(tmp_path: Path) -> None:
    """Each call returns only once all 20 are running: run one after another, the first
    would wait until its timeout."""
    with thread_daemon(
        tmp_path, tool_modules=[TOOLS_FOR_TESTS], bustrail_tool_timeout_seconds=60
    ) as daemon:

        async def scenario() -> list[Any]:
            async with await Client.connect(daemon.url) as client:
                calls = [
                    client.call("rendezvous", {"key": "twenty", "count": 20}) for _ in range(20)
                ]
                return list(await asyncio.gather(*calls))

        results = asyncio.run(scenario())
    assert [r.is_error for r in results] == [False] * 20
    assert {r.text for r in results} == {"20"}


def test_a_cancelled_call_stops_and_is_audited(daemon: ThreadDaemon) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            await client.send(
                _request("slow", "tools/call", {"name": "sleep", "arguments": {"seconds": 120}})
            )
            await client.send(
                _request("quick", "tools/call", {"name": "echo", "arguments": {"text": "x"}})
            )
            assert (await client.receive())["id"] == "quick"  # "slow" is running by now
            await client.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": "slow", "reason": "test"},
                }
            )
            pong = await client.request("ping", request_id="after")
            assert pong["result"] == {}
            echo = await client.call("echo", {"text": "still here"})
            return [pong], echo

    _frames, echo = asyncio.run(scenario())
    assert _text_of(echo) == "still here"
    wait_until(lambda: not daemon.runtime.sessions, "the session to close")
    daemon.runtime.audit.flush()
    (row,) = audit_rows(database_url(daemon), tool="sleep")
    assert (row["status"], row["error_kind"]) == ("failed", "cancelled")
    assert row["request_id"] == "slow"


def test_our_client_cancels_when_it_gives_up(daemon: ThreadDaemon) -> None:
    async def scenario() -> str:
        async with await Client.connect(daemon.url) as client:
            with pytest.raises(TimeoutError):
                await client.call("sleep", {"seconds": 120}, timeout=0.5)
            return (await client.call("echo", {"text": "go on"})).text

    assert asyncio.run(scenario()) == "go on"

    def cancelled() -> bool:
        daemon.runtime.audit.flush()
        rows = audit_rows(database_url(daemon), tool="sleep")
        return bool(rows) and rows[0]["error_kind"] == "cancelled"

    wait_until(cancelled, "the call to be cancelled")


def _hang_up_during(url: str, seconds: float) -> None:
    """Call ``sleep(seconds)`` and close the connection while it runs."""

    async def scenario() -> None:
        async with raw_client(url) as client:
            await client.send(
                _request("slow", "tools/call", {"name": "sleep", "arguments": {"seconds": seconds}})
            )
            await client.send(
                _request("quick", "tools/call", {"name": "echo", "arguments": {"text": "x"}})
            )
            assert (await client.receive())["id"] == "quick"  # "slow" is running by now

    asyncio.run(scenario())


def test_a_call_whose_client_hung_up_runs_on_and_is_audited_as_not_delivered(
    daemon: ThreadDaemon,
) -> None:
    # MCP: a closed connection is not a cancellation. The call finishes, its answer
    # cannot be sent, and the audit says so (the lost_response detector reports it).
    _hang_up_during(daemon.url, 1.0)

    def settled() -> bool:
        daemon.runtime.audit.flush()
        rows = audit_rows(database_url(daemon), tool="sleep")
        return bool(rows) and rows[0]["status"] != "pending"

    wait_until(settled, "the call to end")
    (row,) = audit_rows(database_url(daemon), tool="sleep")
    assert (row["status"], row["error_kind"]) == ("failed", "send_failed")


def test_a_shutdown_drains_the_calls_of_connections_already_closed(
    daemon: ThreadDaemon,
) -> None:
    _hang_up_during(daemon.url, 120)
    wait_until(lambda: bool(daemon.runtime.detached_calls), "the call to outlive its connection")
    assert daemon.loop is not None
    # The drain waits (briefly here), then cancels it: it is audited, not lost with the loop.
    asyncio.run_coroutine_threadsafe(daemon.runtime.drain(0.2), daemon.loop).result(30)
    daemon.runtime.audit.flush()
    (row,) = audit_rows(database_url(daemon), tool="sleep")
    assert (row["status"], row["error_kind"]) == ("failed", "cancelled")
    assert row["error"] == "cancelled by the daemon is shutting down"


def test_a_call_past_the_tool_timeout_is_an_error_result(tmp_path: Path) -> None:
    with thread_daemon(tmp_path, bustrail_tool_timeout_seconds=0.5) as daemon:

        async def scenario() -> tuple[Any, str]:
            async with await Client.connect(daemon.url) as client:
                late = await client.call("sleep", {"seconds": 60})
                return late, (await client.call("echo", {"text": "next"})).text

        late, after = asyncio.run(scenario())
        daemon.runtime.audit.flush()
        (row,) = audit_rows(database_url(daemon), tool="sleep")
    assert late.is_error and "timed out after 0.5s" in late.text
    assert after == "next"
    assert (row["status"], row["error_kind"]) == ("failed", "timeout")


def test_a_request_id_already_in_flight_is_refused(daemon: ThreadDaemon) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            sleep = _request(7, "tools/call", {"name": "sleep", "arguments": {"seconds": 0.5}})
            await client.send(sleep)
            await client.send(sleep)
            first = await client.receive()
            second = await client.receive()
            return first, second

    first, second = asyncio.run(scenario())
    assert first["error"]["code"] == -32600 and "already in flight" in first["error"]["message"]
    assert _text_of(second) == "slept 0.5s"


def test_initialize_negotiates_the_version_and_announces_limits(daemon: ThreadDaemon) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with raw_client(daemon.url) as client:
            return [
                await client.request("initialize", {"protocolVersion": "2024-11-05"}),
                await client.request("initialize", {"protocolVersion": "1999-01-01"}),
                await client.request(
                    "initialize",
                    {
                        "capabilities": {
                            "experimental": {"bustrail": {"maxMessageBytes": 64 * ONE_MIB}}
                        }
                    },
                ),
                await client.request("tools/list"),
            ]

    old, unknown, big, tools = asyncio.run(scenario())
    assert old["result"]["protocolVersion"] == "2024-11-05"
    assert unknown["result"]["protocolVersion"] == "2025-06-18"
    announced = big["result"]["capabilities"]["experimental"]["bustrail"]
    assert announced["maxMessageBytes"] == 32 * ONE_MIB  # never above the daemon's ceiling
    names = {t["name"] for t in tools["result"]["tools"]}
    assert names >= {"echo", "generate", "sleep", "fail", "read_file"}
    assert all(t["inputSchema"]["type"] == "object" for t in tools["result"]["tools"])
