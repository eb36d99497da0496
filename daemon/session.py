"""One client connection's JSON-RPC session: methods, calls in flight, cancellation.

Transport-agnostic: the WebSocket endpoint feeds it text frames and gives it a way to
send. Every tool call is its own task, so many run at once on one connection; a
``notifications/cancelled`` cancels one. Nothing a client sends can break the session:
each bad frame gets its JSON-RPC error and the next frame is read as usual.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.errors import (
    BustrailError,
    ChecksumMismatch,
    StoreError,
    TransactionNotFound,
    TransactionUnavailable,
)
from bus.models import Route
from bus.preview import Preview, PreviewPolicy, build_preview
from bus.router import DEFAULT_CLIENT_CAP, Action, encode_message, needs_store
from bus.store import OpenPayload, TransactionContext
from daemon import jsonrpc
from daemon.jsonrpc import Code, Notification, ProtocolError, Request
from daemon.tools import ToolError, ToolResult, invoke_within

if TYPE_CHECKING:
    from daemon.runtime import Runtime

__all__ = ["PROTOCOL_VERSIONS", "Session", "parse_transaction_uri"]

log = logging.getLogger(__name__)

# A claim check with its notice is a few KB and tools/list grows with the tools: a
# smaller cap could not be honoured, so it is refused at initialize.
MIN_CLIENT_CAP = 16 * 1024
PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")
URI_PREFIX = "bustrail://transactions/"
_STORE_ERRORS = {
    "fallback_oversize": Code.RESULT_TOO_LARGE,
    "inline_oversize": Code.RESULT_TOO_LARGE,
    "store_unavailable": Code.STORE_UNAVAILABLE,
    "payload_too_large": Code.PAYLOAD_TOO_LARGE,
}

Send = Callable[[bytes], Awaitable[None]]


def parse_transaction_uri(uri: Any) -> uuid.UUID | None:
    """The id in ``bustrail://transactions/<id>``, or None when it is not one."""
    if not isinstance(uri, str) or not uri.startswith(URI_PREFIX):
        return None
    try:
        return uuid.UUID(uri[len(URI_PREFIX) :])
    except ValueError:
        return None


class Session:
    def __init__(self, runtime: Runtime, tenant: str, send: Send, *, peer: str = "") -> None:
        self.runtime = runtime
        self.tenant = tenant
        self.id = uuid.uuid4().hex
        self.peer = peer
        self.client_cap: int | None = None  # from initialize; None means 1 MiB
        self.client_info: dict[str, Any] = {}
        self.initialized = False  # it has sent initialize: it may hear notifications
        self._send_raw = send
        self._send_lock = asyncio.Lock()
        self._calls: dict[str | int, asyncio.Task[None]] = {}
        # What a call without _meta asks for (most do): worked out once.
        self._options = CallOptions.from_meta({}, runtime.preview_policy)

    def calls(self) -> list[asyncio.Task[None]]:
        """The tool calls running now."""
        return list(self._calls.values())

    # -- frames -----------------------------------------------------------------------
    async def handle_frame(self, text: str | bytes) -> None:
        """Handle one frame; never raises for anything the client sent."""
        try:
            message = jsonrpc.parse(text)
        except ProtocolError as exc:
            await self.refuse(exc)
            return
        if isinstance(message, list):
            await self.refuse(
                ProtocolError(Code.INVALID_REQUEST, "invalid request: batches are not supported")
            )
            return
        if isinstance(message, Notification):
            self._notification(message)
            return
        await self._request(message)

    async def refuse(self, exc: ProtocolError) -> None:
        self.runtime.metrics.refused(exc.code)
        await self.send(exc.response())

    async def send(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            data = message  # a routed result: already sized against the client's cap
        else:
            data = _fit(message, self.runtime.policy.client_limit(self.client_cap))
        async with self._send_lock:
            await self._send_raw(data)

    def _notification(self, note: Notification) -> None:
        if note.method == "notifications/cancelled":
            request_id = note.params.get("requestId")
            task = self._calls.get(request_id) if isinstance(request_id, str | int) else None
            if task is not None:
                log.info(
                    "< %s cancelled %r: %s", self.id[:8], request_id, note.params.get("reason")
                )
                task.cancel()
        # Other notifications (initialized, progress, ...) need no answer.

    async def _request(self, request: Request) -> None:
        method = request.method
        if method == "tools/call":
            if request.id in self._calls:
                await self.refuse(
                    ProtocolError(
                        Code.INVALID_REQUEST,
                        f"request id {request.id!r} is already in flight",
                        request.id,
                    )
                )
                return
            if self.runtime.shutting_down:
                await self.refuse(
                    ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down", request.id)
                )
                return
            task = asyncio.create_task(self._call(request))
            self._calls[request.id] = task
            task.add_done_callback(lambda _t, rid=request.id: self._calls.pop(rid, None))
            return
        handlers = {
            "initialize": self._initialize,
            "ping": self._ping,
            "tools/list": self._tools_list,
            "resources/read": self._resources_read,
        }
        handler = handlers.get(method)
        if handler is None:
            await self.refuse(
                ProtocolError(Code.METHOD_NOT_FOUND, f"method not found: {method}", request.id)
            )
            return
        try:
            result = await handler(request)
        except ProtocolError as exc:
            exc.request_id = request.id
            await self.refuse(exc)
            return
        except Exception:
            log.exception("%s failed", method)
            await self.refuse(
                ProtocolError(Code.INTERNAL_ERROR, f"internal error in {method}", request.id)
            )
            return
        await self.send(jsonrpc.result_response(request.id, result))

    # -- methods --------------------------------------------------------------------------
    async def _initialize(self, request: Request) -> dict[str, Any]:
        params = request.params
        capabilities = params.get("capabilities") or {}
        cap = None
        if isinstance(capabilities, dict):
            experimental = capabilities.get("experimental") or {}
            bustrail = experimental.get("bustrail") if isinstance(experimental, dict) else None
            if isinstance(bustrail, dict) and "maxMessageBytes" in bustrail:
                cap = bustrail["maxMessageBytes"]
                if isinstance(cap, bool) or not isinstance(cap, int) or cap < MIN_CLIENT_CAP:
                    raise ProtocolError(
                        Code.INVALID_PARAMS,
                        "invalid params: capabilities.experimental.bustrail.maxMessageBytes "
                        f"must be an integer >= {MIN_CLIENT_CAP}",
                    )
        self.client_cap = cap
        info = params.get("clientInfo")
        self.client_info = info if isinstance(info, dict) else {}
        asked = params.get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        settings = self.runtime.settings
        self.initialized = True
        return {
            "protocolVersion": version,
            "capabilities": {
                # Upstream servers may add or remove tools: the client hears of it.
                "tools": {"listChanged": bool(self.runtime.upstreams)},
                "resources": {"subscribe": False, "listChanged": False},
                "experimental": {
                    "bustrail": {
                        "maxMessageBytes": self.runtime.policy.client_limit(self.client_cap),
                        "thresholdBytes": settings.message_bus_threshold_bytes,
                        "uploadPath": "/v1/transactions",
                        "downloadPath": "/v1/transactions/{id}",
                    }
                },
            },
            "serverInfo": {"name": "bustrail", "version": self.runtime.version},
        }

    async def _ping(self, _request: Request) -> dict[str, Any]:
        return {}

    async def _tools_list(self, _request: Request) -> dict[str, Any]:
        return {"tools": [t.describe() for t in self.runtime.tools.list()]}

    async def _resources_read(self, request: Request) -> dict[str, Any]:
        uri = request.params.get("uri")
        tx_id = parse_transaction_uri(uri)
        if tx_id is None:
            raise ProtocolError(
                Code.INVALID_PARAMS, f"invalid params: uri must be {URI_PREFIX}<id>, got {uri!r}"
            )
        meta = request.params.get("_meta")
        with self.runtime.telemetry.server_span(
            None,
            request.id,
            self.id,
            meta if isinstance(meta, dict) else {},
            method="resources/read",
        ) as span:
            span.set_attribute("mcp.resource.uri", str(uri))
            try:
                return await self._read_resource(request, str(uri), tx_id)
            except ProtocolError as exc:
                self.runtime.telemetry.mark_error(span, str(exc.code))
                raise

    async def _read_resource(self, request: Request, uri: str, tx_id: uuid.UUID) -> dict[str, Any]:
        store = self.runtime.store
        limit = self.runtime.policy.client_limit(self.client_cap)
        try:
            record = await asyncio.to_thread(store.info, self.tenant, tx_id)
            # base64 or JSON escaping only grow a payload: refuse early what cannot fit.
            if record.size > limit:
                raise self._too_large_for_message(tx_id, record.size, limit)
            opened = await asyncio.to_thread(store.open, self.tenant, tx_id, count_fetch=False)
            data = await self._read_verified(opened)
        except ProtocolError:
            raise
        except BustrailError as exc:
            raise _store_protocol_error(exc) from exc
        result = _resource_contents(uri, record.mime_type, data)
        size = len(encode_message(jsonrpc.result_response(request.id, result)))
        if size > limit:
            raise self._too_large_for_message(tx_id, size, limit)
        await asyncio.to_thread(store.record_fetch, record)
        self.runtime.metrics.fetches.labels(via="resources/read").inc()
        return result

    async def _read_verified(self, opened: OpenPayload) -> bytes:
        """A whole stored payload, verified; a mismatch found reading it is counted (one
        already known, refused by ``store.open``, is not counted again)."""
        started = time.perf_counter()
        try:
            data = await asyncio.to_thread(opened.read_all)
        except ChecksumMismatch:
            self.runtime.metrics.checksum_mismatches.inc()
            raise
        self.runtime.metrics.store_seconds.labels(operation="read").observe(
            time.perf_counter() - started
        )
        return data

    def _too_large_for_message(self, tx_id: uuid.UUID, size: int, limit: int) -> ProtocolError:
        return ProtocolError(
            Code.RESULT_TOO_LARGE,
            f"transaction {tx_id} ({size:,} bytes) is too large for one message to this "
            f"client (limit {limit:,} bytes); download it over HTTP: GET /v1/transactions/{tx_id}",
            data={"transaction_id": str(tx_id), "download": f"/v1/transactions/{tx_id}"},
        )

    # -- tools/call -----------------------------------------------------------------------
    async def _call(self, request: Request) -> None:
        try:
            await self._call_inner(request)
        except ProtocolError as exc:
            exc.request_id = request.id
            await self._safe_refuse(exc)
        except asyncio.CancelledError:
            # Cancelled by the client: MCP says no response. By shutdown: tell the client.
            if self.runtime.shutting_down:
                await self._safe_refuse(
                    ProtocolError(
                        Code.CANCELLED, "cancelled: the daemon is shutting down", request.id
                    )
                )
            raise
        except Exception:
            log.exception("tools/call %r failed", request.id)
            await self._safe_refuse(
                ProtocolError(Code.INTERNAL_ERROR, "internal error", request.id)
            )

    async def _safe_refuse(self, exc: ProtocolError) -> None:
        try:
            await self.refuse(exc)
        except Exception:  # the connection is gone; the audit already has the outcome
            log.debug("could not send error to closed session %s", self.id[:8])

    async def _call_inner(self, request: Request) -> None:
        params = request.params
        name = params.get("name")
        if not isinstance(name, str):
            raise ProtocolError(Code.INVALID_PARAMS, 'invalid params: "name" must be a string')
        entry = self.runtime.tools.get(name)
        if entry is None:
            gateway = self.runtime.gateway
            why = gateway.why_unknown(name) if gateway is not None else None
            raise ProtocolError(
                Code.INVALID_PARAMS,
                f"invalid params: unknown tool {name!r}" + (f"; {why}" if why else ""),
            )
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise ProtocolError(
                Code.INVALID_PARAMS, 'invalid params: "arguments" must be an object'
            )
        if any(isinstance(v, str) and v.startswith(URI_PREFIX) for v in arguments.values()):
            arguments = await self._resolve_uploads(arguments)
        try:
            validated = entry.validate(arguments)
        except ValueError as exc:
            raise ProtocolError(Code.INVALID_PARAMS, str(exc)) from None
        meta = params.get("_meta")
        if not isinstance(meta, dict):
            meta = {}
        options = (
            CallOptions.from_meta(meta, self.runtime.preview_policy) if meta else self._options
        )
        ctx = TransactionContext(
            tenant=self.tenant,
            tool=getattr(entry, "audit_name", None) or name,
            session_id=self.id,
            request_id=str(request.id),
        )
        trace = self.runtime.telemetry
        with trace.server_span(name, request.id, self.id, meta) as span:
            ctx.trace_id, ctx.span_id = trace.ids(span)
            await self._run_tool(request, entry, validated, ctx, span, options)

    async def _run_tool(
        self,
        request: Request,
        entry: Any,
        arguments: dict[str, Any],
        ctx: TransactionContext,
        span: Any,
        options: CallOptions,
    ) -> None:
        bus = self.runtime.bus
        bus.begin(ctx)
        started = time.perf_counter()
        timeout = self.runtime.settings.bustrail_tool_timeout_seconds
        try:
            with self.runtime.metrics.tool_call(entry.name):
                result: ToolResult = await invoke_within(entry, arguments, timeout)
        except asyncio.CancelledError:
            ctx.tool_ms = (time.perf_counter() - started) * 1000
            why = "the daemon is shutting down" if self.runtime.shutting_down else "the client"
            bus.fail(ctx, "cancelled", f"cancelled by {why}")
            raise
        except TimeoutError:
            ctx.tool_ms = (time.perf_counter() - started) * 1000
            message = f"tool {entry.name!r} timed out after {timeout:g}s"
            bus.fail(ctx, "timeout", message)
            self.runtime.telemetry.mark_error(span, "tool_error")
            await self.send(_error_result(request.id, message, ctx))
            return
        except Exception as exc:
            ctx.tool_ms = (time.perf_counter() - started) * 1000
            message = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"
            # A gateway upstream that died says so (upstream_crashed); others are tool errors.
            bus.fail(ctx, getattr(exc, "error_kind", "tool_error"), message)
            self.runtime.telemetry.mark_error(span, "tool_error")
            await self.send(_error_result(request.id, message, ctx))
            return
        ctx.tool_ms = (time.perf_counter() - started) * 1000
        ctx.mime_type = result.mime_type

        def build_inline(route: Route, checksum: str) -> bytes:
            return encode_message(
                jsonrpc.result_response(request.id, _inline_result(result, route, checksum, ctx))
            )

        cap = options.cap(self.client_cap, result)
        shown: asyncio.Future[Preview] | None = None
        if needs_store(self.runtime.policy, payload_size=len(result.data), client_cap=cap):
            # Bound for the store: its preview is made meanwhile, in a thread. For JSON it
            # parses all of it (~10 ms a MB up to 64 MiB), which the store's compressing,
            # hashing and writing (done without the GIL) overlap (bench_large).
            shown = asyncio.ensure_future(
                asyncio.to_thread(build_preview, result.data, result.mime_type, options.preview)
            )
            shown.add_done_callback(_consume)  # not needed if the result is not stored
        delivery = await bus.deliver(ctx, result.data, build_inline, client_cap=cap)
        self.runtime.telemetry.annotate(span, delivery)
        if delivery.action in (Action.INLINE, Action.FALLBACK):
            assert delivery.message is not None
            try:
                await self.send(delivery.message)
            except Exception as exc:
                # The client went away: nobody to answer. The audit keeps why.
                why = f"send failed: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
                bus.settle(ctx, delivery, sent=False, error=why)
                self.runtime.telemetry.mark_error(span, "send_failed")
                log.info("> %s result of %r not sent: %s", self.id[:8], request.id, why)
                return
            bus.settle(ctx, delivery, sent=True)
        elif delivery.action is Action.STORE:
            assert delivery.record is not None
            made = await shown if shown is not None else None
            # In a thread: a preview of a large JSON result parses all of it.
            claim = jsonrpc.result_response(
                request.id,
                await asyncio.to_thread(
                    self.runtime.claim_check, delivery.record, result, options.preview, made
                ),
            )
            if len(_encode(claim)) > self.runtime.policy.client_limit(self.client_cap):
                # The preview (as asked, escaped) does not fit this client: send none.
                claim = jsonrpc.result_response(
                    request.id,
                    self.runtime.claim_check(
                        delivery.record, result, PreviewPolicy(head_bytes=0, tail_bytes=0)
                    ),
                )
            await self.send(claim)
        else:
            code = _STORE_ERRORS.get(delivery.error_kind or "", Code.STORE_UNAVAILABLE)
            self.runtime.telemetry.mark_error(span, str(int(code)))
            raise ProtocolError(
                code,
                delivery.error or "the result could not be delivered",
                data={
                    "transaction_id": str(delivery.transaction_id),
                    "error_kind": delivery.error_kind,
                },
            )

    async def _resolve_uploads(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments written as bustrail://transactions/<id> become the verified bytes."""
        resolved = dict(arguments)
        for key, value in arguments.items():
            tx_id = parse_transaction_uri(value)
            if tx_id is None:
                continue
            try:
                opened = await asyncio.to_thread(self.runtime.store.open, self.tenant, tx_id)
                data = await self._read_verified(opened)
            except BustrailError as exc:
                raise ProtocolError(
                    Code.INVALID_PARAMS, f"invalid params: argument {key!r}: {exc}"
                ) from exc
            self.runtime.metrics.fetches.labels(via="argument").inc()
            resolved[key] = data
        return resolved


@dataclass(frozen=True)
class CallOptions:
    """What a client asked for in ``params._meta`` of one call."""

    preview: PreviewPolicy
    max_result_chars: int | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], default: PreviewPolicy) -> CallOptions:
        max_chars = meta.get("anthropic/maxResultSizeChars")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
            max_chars = None
        preview = default
        asked = (
            (meta.get("bustrail") or {}).get("preview")
            if isinstance(meta.get("bustrail"), dict)
            else None
        )
        if asked is False:
            preview = PreviewPolicy(head_bytes=0, tail_bytes=0)
        elif isinstance(asked, dict):
            head = asked.get("head", default.head_bytes)
            tail = asked.get("tail", default.tail_bytes)
            if all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 20
                for v in (head, tail)
            ):
                preview = PreviewPolicy(head_bytes=head, tail_bytes=tail)
        return cls(preview=preview.resized(max_chars), max_result_chars=max_chars)

    def cap(self, client_cap: int | None, result: ToolResult) -> int | None:
        """The client's message cap, lowered when the result is longer than the
        maxResultSizeChars it sent: a result the client would truncate goes to the store
        (with a preview) instead. Its message is longer still, so the lowered cap sends
        it there whatever the threshold."""
        limit = self.max_result_chars
        if limit is None or _result_chars(result) <= limit:
            return client_cap
        return min(client_cap or DEFAULT_CLIENT_CAP, limit)


def _result_chars(result: ToolResult) -> int:
    """How many characters a client sees of a result inline: its text, or base64."""
    text = _as_text(result)
    if text is None:
        return (len(result.data) + 2) // 3 * 4
    return len(text)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a background future's outcome, so that an unused one logs no error."""
    if not future.cancelled():
        future.exception()


def _encode(message: dict[str, Any]) -> bytes:
    """Like encode_message, but text that is not valid UTF-8 (a lone surrogate a client
    sent as a JSON escape) goes out escaped instead of failing the send."""
    try:
        return encode_message(message)
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()


def _fit(message: dict[str, Any], limit: int) -> bytes:
    """Encode an answer the session built itself so that it fits the client's cap.

    Errors and ``isError`` results can echo what the client sent (a tool's error
    message, an unknown tool's name): past the cap, their text is cut, saying so. The
    audit record keeps the whole message."""
    data = _encode(message)
    if len(data) <= limit:
        return data
    message = copy.deepcopy(message)
    error = message.get("error")
    result = message.get("result")
    holder: dict[str, Any] | None = None
    key = ""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error.pop("data", None)
        holder, key = error, "message"
    elif isinstance(result, dict) and result.get("isError"):
        texts = [c for c in result.get("content") or [] if isinstance(c.get("text"), str)]
        if texts:
            holder, key = max(texts, key=lambda c: len(c["text"])), "text"
    if holder is None:
        return data
    text: str = holder[key]
    keep = len(text)
    while keep > 0 and len(data) > limit:
        keep = max(0, keep * limit // len(data) - 256)
        holder[key] = (
            f"{text[:keep]}... [cut: {len(text) - keep:,} more characters do not fit this "
            f"client's message limit of {limit:,} bytes]"
        )
        data = _encode(message)
    return data


def _meta(ctx: TransactionContext, route: Route, size: int, checksum: str) -> dict[str, Any]:
    return {
        "bustrail": {
            "transaction_id": str(ctx.transaction_id),
            "route": route.value,
            "size": size,
            "checksum": f"sha256:{checksum}",
        }
    }


def _inline_result(
    result: ToolResult, route: Route, checksum: str, ctx: TransactionContext
) -> dict[str, Any]:
    content: list[dict[str, Any]]
    text = _as_text(result)
    if text is not None:
        content = [{"type": "text", "text": text}]
    else:
        content = [
            {
                "type": "resource",
                "resource": {
                    "uri": f"{URI_PREFIX}{ctx.transaction_id}",
                    "mimeType": result.mime_type,
                    "blob": base64.b64encode(result.data).decode(),
                },
            }
        ]
    return {
        "content": content,
        "isError": False,
        "_meta": _meta(ctx, route, len(result.data), checksum),
    }


def _as_text(result: ToolResult) -> str | None:
    if not result.is_text:
        return None
    try:
        return result.data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _error_result(request_id: Any, message: str, ctx: TransactionContext) -> dict[str, Any]:
    return jsonrpc.result_response(
        request_id,
        {
            "content": [{"type": "text", "text": message}],
            "isError": True,
            "_meta": {"bustrail": {"transaction_id": str(ctx.transaction_id), "route": "inline"}},
        },
    )


def _resource_contents(uri: str, mime_type: str | None, data: bytes) -> dict[str, Any]:
    mime = mime_type or "application/octet-stream"
    if mime.startswith("text/") or mime == "application/json":
        try:
            return {"contents": [{"uri": uri, "mimeType": mime, "text": data.decode("utf-8")}]}
        except UnicodeDecodeError:
            pass
    return {"contents": [{"uri": uri, "mimeType": mime, "blob": base64.b64encode(data).decode()}]}


def _store_protocol_error(exc: BustrailError) -> ProtocolError:
    if isinstance(exc, TransactionNotFound):
        return ProtocolError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, ChecksumMismatch):
        return ProtocolError(Code.CORRUPTED, str(exc))
    if isinstance(exc, TransactionUnavailable):
        return ProtocolError(Code.UNAVAILABLE, str(exc))
    if isinstance(exc, StoreError):
        return ProtocolError(Code.STORE_UNAVAILABLE, f"store unavailable: {exc}")
    return ProtocolError(Code.INTERNAL_ERROR, str(exc))
