"""Gateway mode: existing stdio MCP servers behind the daemon, unchanged.

``bustrail serve --upstream fs="npx -y @modelcontextprotocol/server-filesystem /data"``
spawns each upstream and talks to it with the official ``mcp`` SDK's ``ClientSession``
(over ``daemon.stdio_transport``, which carries large results in linear time), and
registers its tools as ``NAME.tool`` (unprefixed when there is only one upstream). A
call to such a tool takes the same road as a built-in one: router, claim check and
preview, audit record (its ``tool`` is always ``NAME.tool``), trace (the upstream call
is a child span), metrics per upstream, breaker and fallback.

An upstream that dies is restarted with exponential backoff; calls in flight at that
moment get a clear error (``upstream_crashed`` in the audit); its state shows in
``/readyz`` and in ``bustrail_upstream_up``. Its stderr goes to the daemon's log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shlex
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pydantic
from mcp import ClientSession, McpError, StdioServerParameters
from mcp import types as mcp_types

from bus.metrics import Metrics
from bus.telemetry import Telemetry
from daemon.stdio_transport import stdio_transport
from daemon.tools import Tool, ToolError, ToolRegistry, ToolResult

__all__ = ["Gateway", "UpstreamError", "UpstreamSpec", "parse_upstream"]

log = logging.getLogger(__name__)
_CONVERT_INLINE = 256 * 1024  # larger results are converted in a worker thread


class UpstreamError(ToolError):
    """An upstream could not answer (crashed, restarting, not started)."""

    error_kind = "upstream_crashed"


@dataclass(frozen=True)
class UpstreamSpec:
    name: str
    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def parse_upstream(text: str) -> UpstreamSpec:
    """``NAME=COMMAND ARGS...`` (shell quoting) -> UpstreamSpec; ValueError if malformed."""
    name, sep, command = text.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip():
        raise ValueError(f"expected NAME=COMMAND, got {text!r}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"upstream name {name!r} must be letters, digits, - or _")
    try:
        parts = shlex.split(command)
    except ValueError as exc:  # an unbalanced quote
        raise ValueError(f"cannot split the command of {text!r}: {exc}") from None
    return UpstreamSpec(name=name, command=parts[0], args=tuple(parts[1:]))


class _StderrToLog:
    """A pipe whose far end is the upstream's stderr; each line goes to the log."""

    def __init__(self, name: str) -> None:
        read_fd, write_fd = os.pipe()
        self.file = os.fdopen(write_fd, "w")
        self._reader = os.fdopen(read_fd, "r", errors="replace")
        self._last_line = ""
        self._thread = threading.Thread(target=self._pump, args=(name,), daemon=True)
        self._thread.start()

    def _pump(self, name: str) -> None:
        upstream_log = logging.getLogger(f"bustrail.upstream.{name}")
        for line in self._reader:
            text = line.rstrip()
            upstream_log.info("%s", text)
            if text.strip():
                self._last_line = text.strip()
        self._reader.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()

    def last_line(self, wait: float) -> str:
        """The last line the upstream wrote, once the pipe is read to its end (or after
        ``wait`` seconds, if something else still holds it open)."""
        self._thread.join(wait)
        return self._last_line


class _ClientSession(ClientSession):
    """The SDK's ``ClientSession``, checking results against a tool's output schema with
    a validator made once per schema. The SDK calls ``jsonschema.validate`` for every
    result, which checks the schema itself against its metaschema first, every time:
    over a quarter of the daemon's time on a small gateway call (bench_gateway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validators: dict[str, tuple[dict[str, Any], Any]] = {}

    async def send_request(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``send_request``, which tells the upstream when a request is given up.

        The SDK (1.x) stops waiting when its caller is cancelled or times out, but never
        says so: the upstream would go on running a call nobody waits for (a client's
        ``notifications/cancelled``, the daemon's per-call timeout, a shutdown). MCP asks
        the side that gives up to send ``notifications/cancelled``; this sends it."""
        request_id = self._request_id  # the id the SDK is about to give this request
        try:
            return await super().send_request(*args, **kwargs)
        except asyncio.CancelledError:
            await self._cancelled(request_id, "the caller cancelled the call")
            raise
        except McpError as exc:
            if exc.error.code == httpx.codes.REQUEST_TIMEOUT:  # the SDK's own read timeout
                await self._cancelled(request_id, "the call timed out")
            raise

    async def _cancelled(self, request_id: int, reason: str) -> None:
        note = mcp_types.ClientNotification(
            mcp_types.CancelledNotification(
                params=mcp_types.CancelledNotificationParams(requestId=request_id, reason=reason)
            )
        )
        # Shielded and bounded: we are being cancelled, and a wedged upstream must not
        # hold the caller up.
        with anyio.move_on_after(2.0, shield=True):
            try:
                await self.send_notification(note)
            except Exception as exc:  # it is gone: nothing runs there to cancel
                log.info("upstream: could not send the cancellation of %s: %r", request_id, exc)
                return
            log.info("upstream: cancelled request %s (%s)", request_id, reason)

    async def _validate_tool_result(self, name: str, result: mcp_types.CallToolResult) -> None:
        schema = self._tool_output_schemas.get(name)
        if schema is None:  # not listed (the SDK refreshes and warns), or no schema
            await super()._validate_tool_result(name, result)
            return
        from jsonschema import SchemaError, validators
        from jsonschema.exceptions import best_match
        from referencing import Registry
        from referencing.exceptions import Unresolvable

        made = self._validators.get(name)
        if made is None or made[0] is not schema:  # a new listing may bring a new schema
            cls = validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except SchemaError as e:
                raise RuntimeError(f"Invalid schema for tool {name}: {e}") from e
            # An explicit empty registry, as the SDK: `$ref`s resolve within the schema.
            made = self._validators[name] = (schema, cls(schema, registry=Registry()))
        if result.structuredContent is None:
            raise RuntimeError(
                f"Tool {name} has an output schema but did not return structured content"
            )
        try:
            error = best_match(made[1].iter_errors(result.structuredContent))
        except Unresolvable as e:
            raise RuntimeError(f"Invalid schema for tool {name}: {e}") from e
        if error is not None:
            raise RuntimeError(f"Invalid structured content returned by tool {name}: {error}")


class Upstream:
    """One stdio MCP server: kept running, restarted when it dies."""

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        metrics: Metrics,
        telemetry: Telemetry,
        max_backoff: float = 30.0,
        on_listed: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.on_listed = on_listed  # called after each listing of its tools
        self.metrics = metrics
        self.telemetry = telemetry
        self.max_backoff = max_backoff
        self.session: ClientSession | None = None
        self.tools: list[mcp_types.Tool] = []
        self.listings = 0  # how many times its tools were listed (restarts, list_changed)
        self.state = "starting"
        self.restarts = 0
        self.last_error: str | None = None
        self.ready = asyncio.Event()
        # Set once the first start has succeeded or failed: start-up waits for this,
        # not for readiness, so a command that cannot start does not hold it up.
        self.tried = asyncio.Event()
        self._broken = anyio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"upstream-{self.spec.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            stderr = _StderrToLog(self.spec.name)
            self.ready.clear()
            try:
                await self._serve_once(stderr)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = _describe(exc)
            finally:
                stderr.close()
                self.session = None
                self.metrics.upstream_up.labels(upstream=self.spec.name).set(0)
            if not self._stopping and not self.ready.is_set():
                # It never got ready: what it said last usually says why (a missing
                # module, a bad argument, a missing credential).
                said = await asyncio.to_thread(stderr.last_line, 1.0)
                if said:
                    self.last_error = f"{self.last_error or 'it exited'}; its stderr said: {said}"
            self.ready.clear()
            self.tried.set()
            if self._stopping:
                break
            self.state = "restarting"
            self.restarts += 1
            self.metrics.upstream_restarts.labels(upstream=self.spec.name).inc()
            log.warning(
                "= upstream %s: %s; restarting in %.1fs",
                self.spec.name,
                self.last_error or "it stopped",
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        self.state = "stopped"

    async def _serve_once(self, stderr: _StderrToLog) -> None:
        params = StdioServerParameters(
            command=self.spec.command, args=list(self.spec.args), env=self.spec.env or None
        )
        self._broken = anyio.Event()
        async with stdio_transport(params, stderr.file) as (read, write):
            # The relay's stream ends exactly when the upstream's stdout does (it died or
            # exited): the session then fails its pending calls with CONNECTION_CLOSED,
            # and we restart. A ping would also fail a server that is merely busy.
            relay_send, relay_read = anyio.create_memory_object_stream[Any](0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._relay, read, relay_send)

                async def on_message(message: Any) -> None:
                    # The upstream's tools changed: list them again, in a task of its
                    # own (this runs in the session's receive loop, which must go on).
                    if isinstance(message, mcp_types.ServerNotification) and isinstance(
                        message.root, mcp_types.ToolListChangedNotification
                    ):
                        tg.start_soon(self._relist)

                async with _ClientSession(relay_read, write, message_handler=on_message) as session:
                    await session.initialize()
                    listed = await session.list_tools()
                    self.tools = list(listed.tools)
                    self.listings += 1
                    self.session = session
                    self.state = "ready"
                    self.ready.set()
                    self.tried.set()
                    self.on_listed()
                    self.metrics.upstream_up.labels(upstream=self.spec.name).set(1)
                    log.info("= upstream %s ready with %d tool(s)", self.spec.name, len(self.tools))
                    await self._broken.wait()
                    self.session = None
                tg.cancel_scope.cancel()
        if not self._stopping:
            self.last_error = self.last_error or "upstream exited"

    async def _relist(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            listed = await session.list_tools()
        except Exception as exc:  # it is going away: the restart lists them again
            log.warning("= upstream %s: listing its changed tools failed: %r", self.spec.name, exc)
            return
        self.tools = list(listed.tools)
        self.listings += 1
        log.info("= upstream %s changed its tools: now %d tool(s)", self.spec.name, len(self.tools))
        self.on_listed()

    async def _relay(self, source: Any, sink: Any) -> None:
        async with sink:
            async for message in source:
                await sink.send(message)
        self.last_error = "upstream closed its output (crashed or exited)"
        # Let the session deliver CONNECTION_CLOSED to calls in flight before we tear down.
        await anyio.sleep(0.1)
        self._broken.set()

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> ToolResult:
        session = self.session
        if session is None:
            raise UpstreamError(
                f"upstream {self.spec.name!r} is {self.state}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        name = self.spec.name
        with self.telemetry.span(
            f"upstream {name} tools/call {tool}",
            **{
                "bustrail.upstream": name,
                "gen_ai.tool.name": tool,
                "mcp.method.name": "tools/call",
            },
        ) as span:
            try:
                result = await session.call_tool(
                    tool, arguments, read_timeout_seconds=timedelta(seconds=timeout)
                )
            except McpError as exc:
                if exc.error.code == mcp_types.CONNECTION_CLOSED:
                    self._broken.set()
                    self.metrics.upstream_calls.labels(upstream=name, outcome="crashed").inc()
                    self.telemetry.mark_error(span, "upstream_crashed")
                    raise UpstreamError(
                        f"upstream {name!r} closed while running {tool!r} "
                        "(it crashed or exited); it is being restarted"
                    ) from exc
                self.metrics.upstream_calls.labels(upstream=name, outcome="error").inc()
                self.telemetry.mark_error(span, str(exc.error.code))
                raise ToolError(f"upstream {name!r}: {exc.error.message}") from exc
            if result.isError:
                self.metrics.upstream_calls.labels(upstream=name, outcome="tool_error").inc()
                self.telemetry.mark_error(span, "tool_error")
                raise ToolError(_text_of(result.content) or f"upstream tool {tool!r} failed")
            self.metrics.upstream_calls.labels(upstream=name, outcome="ok").inc()
            if _content_size(result) <= _CONVERT_INLINE:
                # A thread hop costs more than converting a small result (bench_gateway).
                return to_tool_result(result)
            # Off the event loop: a large JSON text is parsed to tell JSON from text.
            return await anyio.to_thread.run_sync(to_tool_result, result)

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "tools": len(self.tools),
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


class _Passthrough(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


class UpstreamTool(Tool):
    """A registry entry that forwards to an upstream; the upstream validates arguments."""

    def __init__(
        self, upstream: Upstream, tool: mcp_types.Tool, exposed: str, timeout: float
    ) -> None:
        super().__init__(
            exposed,
            tool.description or "",
            fn=lambda **_: None,
            input_model=_Passthrough,
            input_schema=dict(tool.inputSchema or {"type": "object"}),
        )
        self.upstream = upstream
        self.upstream_tool = tool.name
        self.listing = tool  # as the upstream listed it: a new listing may differ
        self.audit_name = f"{upstream.spec.name}.{tool.name}"
        self.timeout = timeout

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return arguments

    async def invoke(self, arguments: dict[str, Any]) -> ToolResult:
        return await self.upstream.call(self.upstream_tool, arguments, self.timeout)


class Gateway:
    """Every upstream of one daemon, and their tools in its registry."""

    def __init__(
        self,
        specs: list[UpstreamSpec],
        registry: ToolRegistry,
        *,
        metrics: Metrics,
        telemetry: Telemetry,
        timeout: float = 300.0,
        on_tools_changed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        self.registry = registry
        self.timeout = timeout
        self.on_tools_changed = on_tools_changed  # the daemon tells its clients
        self._listed = asyncio.Event()  # an upstream listed its tools: register them now
        self.upstreams = [
            Upstream(s, metrics=metrics, telemetry=telemetry, on_listed=self._listed.set)
            for s in specs
        ]
        self._entries: dict[str, UpstreamTool] = {}  # by NAME.tool: what is registered
        self._refused: set[str] = set()  # NAME.tool taken by a --tools tool: said once
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, wait_seconds: float = 30.0) -> None:
        """Spawn every upstream and wait (bounded) for each to list its tools or fail
        once; one that is not ready is retried in the background, and its tools are
        registered when it is."""
        for upstream in self.upstreams:
            upstream.start()
        waits = [asyncio.wait_for(u.tried.wait(), wait_seconds) for u in self.upstreams]
        await asyncio.gather(*waits, return_exceptions=True)
        for upstream in self.upstreams:
            if upstream.state != "ready":
                log.error(
                    "upstream %s is not ready (%s); retrying in the background",
                    upstream.spec.name,
                    upstream.last_error or f"no answer after {wait_seconds:g}s",
                )
        self._register()
        self._watcher = asyncio.create_task(self._keep_registered())

    def _register(self) -> bool:
        """Make the registry match what each upstream listed last: new tools added, tools
        whose listing changed (schema, description) replaced, tools it no longer lists
        removed (a call to one would only get "unknown tool" from the upstream). Return
        whether anything a client lists changed."""
        single = len(self.upstreams) == 1
        changed = False
        for upstream in self.upstreams:
            if upstream.state != "ready":
                continue  # restarting: keep its tools, their calls say why they fail
            listed = {f"{upstream.spec.name}.{t.name}": t for t in upstream.tools}
            for qualified, entry in list(self._entries.items()):
                if entry.upstream is not upstream:
                    continue
                if listed.get(qualified) != entry.listing:
                    self.registry.remove_external(entry)
                    del self._entries[qualified]
                    changed = True
                    if qualified not in listed:
                        log.warning(
                            "upstream %s: tool %r is no longer listed; removed",
                            upstream.spec.name,
                            entry.upstream_tool,
                        )
            for qualified, tool in listed.items():
                if qualified in self._entries or qualified in self._refused:
                    continue
                exposed = tool.name if single else qualified
                if self.registry.get(exposed) is not None:
                    # Named like a built-in (or a --tools tool): that one keeps the name.
                    log.warning(
                        "upstream %s: tool %r is taken, exposed as %r",
                        upstream.spec.name,
                        tool.name,
                        qualified,
                    )
                    exposed = qualified
                entry = UpstreamTool(upstream, tool, exposed, self.timeout)
                try:
                    self.registry.add_external(entry)
                except ValueError as exc:  # a --tools tool called NAME.tool: leave it out
                    log.error(
                        "upstream %s: tool %r not exposed: %s", upstream.spec.name, tool.name, exc
                    )
                    self._refused.add(qualified)
                    continue
                self._entries[qualified] = entry
                changed = True
        return changed

    async def _keep_registered(self) -> None:
        """An upstream that starts late, comes back with other tools or says its tools
        changed gets registered again, and the daemon's clients hear of any change
        (``notifications/tools/list_changed``). Checked when an upstream lists its
        tools, and every second whatever happens."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listed.wait(), 1.0)
            self._listed.clear()
            if self._register() and self.on_tools_changed is not None:
                try:
                    await self.on_tools_changed()
                except Exception:
                    log.exception("telling clients the tool list changed failed")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.gather(*(u.stop() for u in self.upstreams))

    def health(self) -> dict[str, Any]:
        return {u.spec.name: u.health() for u in self.upstreams}

    def why_unknown(self, name: str) -> str | None:
        """Why ``name`` may be a tool of an upstream that never listed its tools (it has
        not started), for the error of a call to an unknown tool; None otherwise."""
        single = len(self.upstreams) == 1
        for upstream in self.upstreams:
            if upstream.tools or not (single or name.startswith(f"{upstream.spec.name}.")):
                continue
            why = f" ({upstream.last_error})" if upstream.last_error else ""
            return (
                f"upstream {upstream.spec.name!r} is {upstream.state}{why}: its tools "
                "are not known until it starts"
            )
        return None

    @property
    def ready(self) -> bool:
        return all(u.state == "ready" for u in self.upstreams)


def _describe(exc: BaseException) -> str:
    """An error as one line, task-group wrappers taken off (their leaves are the news)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _content_size(result: mcp_types.CallToolResult) -> int:
    """About how many characters a result's content holds (text and base64 data)."""
    blocks = result.content
    return sum(len(getattr(c, "text", None) or getattr(c, "data", None) or "") for c in blocks)


def _text_of(content: list[Any]) -> str:
    return "\n".join(c.text for c in content if getattr(c, "type", None) == "text")


def to_tool_result(result: mcp_types.CallToolResult) -> ToolResult:
    """An upstream's content as one payload: text as text (JSON when it is JSON), a
    single binary block as its bytes, anything mixed as the JSON of its content list."""
    content = list(result.content)
    if content and all(getattr(c, "type", None) == "text" for c in content):
        text = _text_of(content)
        stripped = text.lstrip()[:1]
        mime = "application/json" if stripped in ("{", "[") and _is_json(text) else "text/plain"
        return ToolResult(text.encode(), mime)
    if len(content) == 1 and isinstance(
        content[0], mcp_types.ImageContent | mcp_types.AudioContent
    ):
        block = content[0]
        return ToolResult(base64.b64decode(block.data), block.mimeType)
    if not content and result.structuredContent is not None:
        return ToolResult(json.dumps(result.structuredContent).encode(), "application/json")
    blocks = [c.model_dump(mode="json", exclude_none=True) for c in content]
    return ToolResult(json.dumps(blocks).encode(), "application/vnd.mcp.content+json")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
