"""Tools: the registry, schemas and validation, the built-ins, and read_file's root,
checked through a real daemon where the behaviour is the daemon's."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.client import Client
from daemon.tools import (
    Tool,
    ToolError,
    ToolRegistry,
    ToolResult,
    builtin_registry,
    generate_json,
    invoke_within,
    tool,
)
from tests.daemon.support import raw_client
from tests.helpers.daemon import thread_daemon


# -- the registry -----------------------------------------------------------------------
def test_type_hints_become_the_schema_and_the_validation() -> None:
    registry = ToolRegistry()

    @tool(description="Add up.")
    def add(a: int, b: float = 1.5, label: str | None = None) -> dict[str, Any]:
        return {"sum": a + b, "label": label}

    entry = registry.add(add)
    assert entry.describe()["description"] == "Add up."
    schema = entry.input_schema
    assert schema["required"] == ["a"]
    assert schema["properties"]["a"] == {"type": "integer"}
    assert schema["additionalProperties"] is False
    assert entry.validate({"a": 2}) == {"a": 2, "b": 1.5, "label": None}
    for bad in ({}, {"a": "two"}, {"a": 1, "c": 3}, {"a": 1.5}):
        with pytest.raises(ValueError, match="invalid arguments for tool 'add'"):
            entry.validate(bad)
    assert asyncio.run(entry.invoke({"a": 2, "b": 1.0, "label": "x"})) == ToolResult(
        b'{"sum": 3.0, "label": "x"}', "application/json"
    )


def test_a_name_is_registered_once_and_varargs_are_refused() -> None:
    registry = ToolRegistry()

    def one(x: int) -> int:
        return x

    def many(*args: int) -> int:
        return len(args)

    registry.add(one)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(one)
    with pytest.raises(TypeError, match=r"\*args"):
        registry.add(many)


def test_a_module_without_tools_or_missing_is_an_import_error() -> None:
    registry = ToolRegistry()
    with pytest.raises(ImportError, match="no_such_module"):
        registry.load_module("tests.daemon.no_such_module")
    with pytest.raises(ImportError, match="no function marked with @tool"):
        registry.load_module("tests.daemon.support")
    loaded = registry.load_module("tests.daemon.tools_for_tests")
    assert sorted(t.name for t in loaded) == ["boom", "digest", "rendezvous", "wait_for_file"]


def _plain(text: str, count: int, ratio: float, flag: bool, note: str = "n", seed: int = 0) -> str:
    return text


_json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)


@given(
    st.dictionaries(
        st.sampled_from(["text", "count", "ratio", "flag", "note", "seed", "other"]),
        _json_values | st.lists(st.integers(), max_size=2),
        max_size=7,
    )
)
def test_plain_parameters_validate_exactly_as_the_model_does(arguments: dict[str, Any]) -> None:
    entry = ToolRegistry().add(_plain)
    assert entry.plain_parameters is not None  # the fast path applies to this tool
    model = Tool(entry.name, "", entry.fn, entry.input_model)  # validated by the model only
    try:
        expected: Any = model.validate(arguments)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: Any = entry.validate(arguments)
    except ValueError as exc:
        got = str(exc)
    assert got == expected
    if isinstance(expected, dict):
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_parameters_that_are_not_plain_go_through_the_model() -> None:
    def constrained(a: int | None, b: list[int]) -> int:
        return 0

    def mutable_default(a: int, b: tuple[int, ...] = ()) -> int:
        return 0

    registry = ToolRegistry()
    assert registry.add(constrained).plain_parameters is None
    assert registry.add(mutable_default).plain_parameters is None


# -- running a call with its timeout ------------------------------------------------------
def _async_tool(fn: Any) -> Tool:
    return ToolRegistry().add(fn)


def test_a_call_that_waits_for_nothing_returns_its_result() -> None:
    async def quick(text: str) -> str:
        return text

    result = asyncio.run(invoke_within(_async_tool(quick), {"text": "hi"}, 10.0))
    assert result == ToolResult(b"hi", "text/plain")


def test_a_call_that_waits_gets_what_it_waited_for_and_can_fail() -> None:
    async def waits(text: str) -> str:
        await asyncio.sleep(0)
        value = await asyncio.get_running_loop().run_in_executor(None, str.upper, text)
        if value == "BAD":
            raise ToolError("bad input")
        return value

    entry = _async_tool(waits)
    assert asyncio.run(invoke_within(entry, {"text": "ok"}, 10.0)).data == b"OK"
    with pytest.raises(ToolError, match="bad input"):
        asyncio.run(invoke_within(entry, {"text": "bad"}, 10.0))


def test_a_call_past_its_deadline_is_cancelled_with_a_timeout_error() -> None:
    cleaned: list[str] = []

    async def slow(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        finally:
            cleaned.append("finally")
        return "done"

    with pytest.raises(TimeoutError):
        asyncio.run(invoke_within(_async_tool(slow), {"seconds": 60.0}, 0.05))
    assert cleaned == ["finally"]


def test_the_deadline_counts_from_the_start_of_the_call() -> None:
    async def busy_then_waits(seconds: float) -> str:
        time.sleep(seconds)  # holds the loop past the deadline before its first wait
        await asyncio.sleep(0)
        return "late"

    with pytest.raises(TimeoutError):
        asyncio.run(invoke_within(_async_tool(busy_then_waits), {"seconds": 0.05}, 0.01))


def test_a_cancelled_call_is_cancelled_inside_the_tool() -> None:
    seen: list[str] = []

    async def waits_forever(text: str) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return text

    async def scenario() -> None:
        call = asyncio.ensure_future(invoke_within(_async_tool(waits_forever), {"text": "x"}, 60))
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(scenario())
    assert seen == ["cancelled"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", ToolResult(b"text", "text/plain")),
        (b"\x00\x01", ToolResult(b"\x00\x01", "application/octet-stream")),
        ([1, "é"], ToolResult('[1, "é"]'.encode(), "application/json")),
    ],
)
def test_return_values_become_bytes_with_a_mime_type(value: Any, expected: ToolResult) -> None:
    assert ToolResult.of(value) == expected


def test_a_value_that_is_not_json_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="not JSON"):
        ToolResult.of({1, 2})


# -- the built-ins ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 100, 10_000, 1_000_000])
def test_generate_is_valid_json_of_about_the_size_and_the_same_for_a_seed(size: int) -> None:
    text = generate_json(size, seed=3)
    assert isinstance(json.loads(text), list)
    assert size - 1 <= len(text.encode()) <= max(size, 2) + 400
    assert text == generate_json(size, seed=3)
    if size >= 1000:
        assert text != generate_json(size, seed=4)


def test_builtins_are_all_there(tmp_path: Path) -> None:
    names = {t.name for t in builtin_registry(tmp_path).list()}
    assert names == {"echo", "generate", "sleep", "fail", "read_file"}


# -- generate through the daemon ----------------------------------------------------------
def test_generate_is_json_wherever_its_stored_result_is_seen(tmp_path: Path) -> None:
    """Its resource_link, resources/read and the HTTP download all say application/json."""
    with thread_daemon(tmp_path, message_bus_threshold_bytes=64 * 1024) as daemon:

        async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
            async with raw_client(daemon.url) as raw:
                called = await raw.call("generate", {"size": 100_000, "seed": 5})
                (link,) = [c for c in called["result"]["content"] if c["type"] == "resource_link"]
                read = await raw.request("resources/read", {"uri": link["uri"]})
                return called["result"], read["result"]

        result, read = asyncio.run(scenario())
        tx_id = result["_meta"]["bustrail"]["transaction_id"]
        download = httpx.get(f"{daemon.http}/v1/transactions/{tx_id}", timeout=60)
    expected = generate_json(100_000, 5)
    (link,) = [c for c in result["content"] if c["type"] == "resource_link"]
    assert link["mimeType"] == "application/json"
    assert result["_meta"]["bustrail"]["preview"]["shape"] == "json-list"
    (contents,) = read["contents"]
    assert (contents["mimeType"], contents["text"]) == ("application/json", expected)
    assert download.headers["content-type"].startswith("application/json")
    assert download.text == expected


# -- read_file through the daemon ---------------------------------------------------------
def test_read_file_reads_under_its_root_only(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data.bin").write_bytes(b"\x00inside\xff")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "dir-escape").symlink_to(tmp_path)

    with thread_daemon(tmp_path, bustrail_files_root=root) as daemon:

        async def scenario() -> dict[str, Any]:
            async with await Client.connect(daemon.url) as client:
                out: dict[str, Any] = {}
                inside = await client.call("read_file", {"path": "sub/data.bin"})
                out["inside"] = await client.result_bytes(inside)
                for path in (
                    "../secret.txt",
                    str(tmp_path / "secret.txt"),
                    "escape",
                    "dir-escape/secret.txt",
                    "sub/../../secret.txt",
                    "sub",
                    "nope.txt",
                ):
                    result = await client.call("read_file", {"path": path})
                    out[path] = (result.is_error, result.text)
                return out

        out = asyncio.run(scenario())
    assert out.pop("inside") == b"\x00inside\xff"
    for path, (is_error, text) in out.items():
        assert is_error, path
        assert text != "outside"  # the secret never comes back
        assert ("outside the files root" in text) or ("not a file" in text), (path, text)
    for path in ("../secret.txt", str(tmp_path / "secret.txt"), "escape", "dir-escape/secret.txt"):
        assert "outside the files root" in out[path][1], path
