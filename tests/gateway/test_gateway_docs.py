"""docs/gateway.md's worked example, run as written.

The blocks marked ``<!-- example: NAME -->`` are taken from the page: the notes server is
written to a folder, the serve commands run there in a shell with the virtualenv's
``bin`` first on PATH (as if activated), the client snippets run as ``python NAME``, and
an agent launches ``bustrail bridge`` from the MCP configuration shown. The only change:
``--port 0`` for ``--port 8765``, and the URL it prints for ``ws://127.0.0.1:8765/ws``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import runpy
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextContent

from tests.helpers.daemon import daemon_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
BIN = Path(sys.executable).parent  # the virtualenv's bin: bustrail, and a python with mcp
DOC_URL = "ws://127.0.0.1:8765/ws"
_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>\S+) -->\n(?P<indent> *)```[a-z]*\n(?P<body>.*?)\n(?P=indent)```",
    re.S,
)
_LISTENING = re.compile(r"bustrail listening on (ws://\S+)")


def example(name: str) -> str:
    """The text of the block marked ``<!-- example: name -->``, its indent removed."""
    found = {
        m["name"]: "\n".join(line.removeprefix(m["indent"]) for line in m["body"].split("\n"))
        for m in _EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))
    }
    assert name in found, f"docs/gateway.md has no block marked <!-- example: {name} -->"
    return found[name] + "\n"


def _env(**extra: str) -> dict[str, str]:
    """This environment without bustrail's settings, the virtualenv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSTRAIL_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The serve block, run in the folder of notes_server.py: (its URL, that folder)."""
    folder = tmp_path_factory.mktemp("notes")
    (folder / "notes_server.py").write_text(example("notes_server.py"), encoding="utf-8")
    script = example("serve.sh")
    assert "--port 8765 " in script
    env = daemon_env(folder)  # its own SQLite file and spool ...
    del env["BUSTRAIL_AUTH_DISABLED"]  # ... and the token the block sets, required
    env["PATH"] = _env()["PATH"]
    log = folder / "serve.log"
    with log.open("w") as stderr:
        shell = subprocess.Popen(
            ["bash", "-e", "-c", script.replace("--port 8765 ", "--port 0 ")],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group: the shell and the daemon
        )
    try:
        assert shell.stdout is not None
        listening = _LISTENING.search(shell.stdout.readline())
        assert listening, f"bustrail serve did not start; its log:\n{log.read_text()}"
        yield listening[1], folder
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        try:
            shell.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
        if shell.stdout is not None:
            shell.stdout.close()


def _run_snippet(served: tuple[str, Path], name: str) -> list[str]:
    """``python NAME`` in the example's folder, pointed at the daemon: its output lines."""
    url, folder = served
    code = example(name)
    assert DOC_URL in code
    (folder / name).write_text(code.replace(DOC_URL, url), encoding="utf-8")
    done = subprocess.run(
        ["python", name],
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _invoices(folder: Path) -> bytes:
    """What the notes server answers to "invoice", computed from its own NOTES."""
    notes = runpy.run_path(str(folder / "notes_server.py"))["NOTES"]
    return json.dumps([n for n in notes if "invoice" in n["text"]]).encode()


def test_the_client_snippet_prints_what_the_page_says(served: tuple[str, Path]) -> None:
    lines = _run_snippet(served, "client.py")
    whole = _invoices(served[1])
    count = len(json.loads(whole))
    assert len(whole) > 1024 * 1024  # over the default threshold: the example's point
    assert lines[0] == "inline note 42"
    assert lines[1].startswith(
        f"store [bustrail] Result cut: {len(whole):,} bytes in all, "
        "stored as bustrail://transactions/"
    )
    assert re.fullmatch(rf"preview: [1-9]\d* of {count} notes", lines[2]), lines[2]
    assert lines[3] == f"fetched: {count} notes, {len(whole):,} bytes"
    assert len(lines) == 4, lines

    # The output the page shows is this output, but for the transaction id.
    shown = example("client.out").splitlines()
    transaction = re.compile(r"transactions/[0-9a-f-]{36}")
    assert [transaction.sub("ID", line) for line in shown] == [
        transaction.sub("ID", line) for line in lines
    ]


def test_the_sdk_snippet_gets_the_notice_of_a_stored_result(served: tuple[str, Path]) -> None:
    lines = _run_snippet(served, "sdk_client.py")
    whole = _invoices(served[1])
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"\[bustrail\] Result cut: {len(whole):,} bytes in all, "
        r"stored as bustrail://transactions/[0-9a-f-]{36}",
        lines[0],
    ), lines


async def _as_an_agent(server: StdioServerParameters) -> dict[str, Any]:
    """What an agent sees through the bridge it launched: tools and two results."""
    async with (
        stdio_client(server) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = [t.name for t in (await session.list_tools()).tools]
        small = await session.call_tool("search", {"query": "#42:"})
        big = await session.call_tool("search", {"query": "invoice"})
    return {"tools": tools, "small": _seen(small), "big": _seen(big)}


def _seen(result: CallToolResult) -> tuple[bool, list[str], str]:
    """Whether a result is an error, its content's types, its first block's text."""
    first = result.content[0]
    assert isinstance(first, TextContent), first
    return result.isError, [c.type for c in result.content], first.text


def test_an_agent_launches_the_bridge_as_configured(served: tuple[str, Path]) -> None:
    url, folder = served
    config = json.loads(example("mcp_config.json"))
    entry = config["mcpServers"]["notes"]
    assert Path(entry["command"]).name == "bustrail"
    assert DOC_URL in entry["args"]
    server = StdioServerParameters(
        command=str(BIN / "bustrail"),  # the path the page says to put there
        args=[url if arg == DOC_URL else arg for arg in entry["args"]],
        env=entry["env"],
        cwd=folder,
    )
    seen = asyncio.run(_as_an_agent(server))
    assert "search" in seen["tools"]
    is_error, types, text = seen["small"]
    assert (is_error, types) == (False, ["text"])
    assert [n["title"] for n in json.loads(text)] == ["note 42"]
    is_error, types, notice = seen["big"]
    assert (is_error, types) == (False, ["text", "text", "resource_link"])
    assert notice.startswith(f"[bustrail] Result cut: {len(_invoices(folder)):,} bytes in all")
