"""The daemon's ASGI application (Starlette): WebSocket JSON-RPC and HTTP on one port.

Routes::

    WS   /ws                      JSON-RPC 2.0 (sub-protocol ``mcp`` accepted)
    GET  /v1/transactions/{id}    streamed, verified download (Range supported)
    POST /v1/transactions         streamed upload of a large input -> its id
    GET  /metrics                 Prometheus text format
    GET  /healthz                 the process answers
    GET  /readyz                  the database answers and the breaker is not open

Auth is a bearer token (``Authorization: Bearer T`` or ``?token=T`` for browsers),
mapped to a tenant. A transaction of another tenant answers exactly like one that does
not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bus.breaker import BreakerState
from bus.errors import (
    BustrailError,
    ChecksumMismatch,
    PayloadTooLarge,
    StoreError,
    TransactionNotFound,
    TransactionUnavailable,
)
from bus.models import Direction, Transaction
from bus.store import TransactionContext
from daemon.runtime import Runtime
from daemon.session import Session

__all__ = ["create_app"]

log = logging.getLogger(__name__)
HTTPHandler = Callable[[Request, Span, Context], Awaitable[Response]]
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_END = object()


def _token(headers: Any, query: Any) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    token = query.get("token")
    return str(token) if token else None


def _error(http_status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=http_status)


def create_app(runtime: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # -- WebSocket --------------------------------------------------------------------
    async def websocket_endpoint(ws: WebSocket, receive: Receive, send_event: Send) -> None:
        tenant = runtime.tenant_for(_token(ws.headers, ws.query_params))
        origin = ws.headers.get("origin")
        # Refusals accept, then close with a code and reason: closing before accepting
        # turns into a bare HTTP 403 that tells the client nothing.
        if tenant is None:
            runtime.metrics.refused(401)
            await _refuse(ws, 1008, "missing or unknown bearer token")
            return
        if origin is not None and origin not in runtime.settings.allowed_origins():
            runtime.metrics.refused(403)
            await _refuse(ws, 1008, f"origin {origin} is not allowed")
            return
        if runtime.shutting_down:
            await _refuse(ws, 1001, "the daemon is shutting down")
            return
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="mcp" if "mcp" in offered else None)

        async def send(data: bytes) -> None:
            try:
                await send_event({"type": "websocket.send", "text": data.decode()})
            except OSError:  # the client is gone: as Starlette's WebSocket.send says it
                raise WebSocketDisconnect(code=1006) from None

        session = Session(runtime, tenant, send, peer=str(ws.client))
        runtime.sessions.add(session)
        runtime.metrics.connections.inc()
        log.info("+ session %s tenant=%s peer=%s", session.id[:8], tenant, session.peer)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code") == 1009:  # a frame over WEBSOCKET_MAX_MESSAGE_MB
                        runtime.metrics.refused(1009)
                    break
                text = message.get("text")
                if text is None:
                    text = message.get("bytes") or b""
                await session.handle_frame(text)
        except WebSocketDisconnect:
            pass
        finally:
            runtime.sessions.discard(session)
            runtime.metrics.connections.dec()
            # Its calls run on: MCP does not take a closed connection for a cancellation.
            # Each will fail to send its answer and be audited so (send_failed, which
            # the lost_response detector reports); a shutdown drains them too.
            running = runtime.detach(session)
            log.info("- session %s closed (%d call(s) in flight)", session.id[:8], running)

    # -- HTTP: tracing -------------------------------------------------------------------
    def traced(route: str, handler: HTTPHandler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` inside its HTTP server span (parent from the W3C headers). The span
        ends with the response, except a streamed one, whose body ends it."""

        async def endpoint(request: Request) -> Response:
            span, ctx = runtime.telemetry.start_http_span(request.method, route, request.headers)
            try:
                with runtime.telemetry.attached(ctx):
                    response = await handler(request, span, ctx)
            except BaseException as exc:
                runtime.telemetry.end_http(span, 500, type(exc).__name__)
                raise
            if not isinstance(response, StreamingResponse):
                runtime.telemetry.end_http(span, response.status_code)
            return response

        return endpoint

    # -- HTTP: download -----------------------------------------------------------------
    async def download(request: Request, span: Span, ctx: Context) -> Response:
        tenant = runtime.tenant_for(_token(request.headers, request.query_params))
        if tenant is None:
            return _error(401, "missing or unknown bearer token")
        try:
            tx_id = uuid.UUID(request.path_params["tx_id"])
        except ValueError:
            return _error(404, "transaction not found")
        span.set_attribute("bustrail.transaction_id", str(tx_id))
        store = runtime.store
        try:
            record = await asyncio.to_thread(store.info, tenant, tx_id)
            opened = await asyncio.to_thread(store.open, tenant, tx_id, count_fetch=False)
        except TransactionNotFound:
            return _error(404, "transaction not found")
        except TransactionUnavailable as exc:
            return _error(410, str(exc), status=exc.status)
        except ChecksumMismatch as exc:
            return _error(409, str(exc), status="corrupted")
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")
        _annotate(span, record)
        size = record.size
        start, end = 0, size - 1
        status = 200
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{record.checksum}"',
            "X-Bustrail-Checksum": f"sha256:{record.checksum}",
            "X-Bustrail-Transaction-Id": str(record.id),
        }
        range_header = request.headers.get("range")
        if range_header and _RANGE.match(range_header.strip()):  # others are ignored: 200
            parsed = _parse_range(range_header, size)
            if parsed is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(max(0, end - start + 1))

        def body() -> Iterator[bytes]:
            # The last piece is held back until the whole payload is verified and the
            # fetch recorded: a client never completes a download of unverified bytes,
            # and once it has the last byte, the audit already says "fetched".
            position = 0
            held: bytes | None = None
            for piece in opened:
                piece_end = position + len(piece)
                if piece_end > start and position <= end:
                    if held is not None:
                        yield held
                    held = piece[max(0, start - position) : end - position + 1]
                position = piece_end
                if position > end and end < size - 1:
                    break  # a range short of the end: no need to read further
            else:
                # The whole payload was read and verified.
                try:
                    store.record_fetch(record)
                except StoreError as exc:
                    log.warning("fetch of %s not recorded: %s", record.id, exc)
            if held is not None:
                yield held

        return _ClosingStreamingResponse(
            _traced_body(runtime, body(), span, ctx, status=status, whole=end >= size - 1),
            status_code=status,
            media_type=record.mime_type or "application/octet-stream",
            headers=headers,
        )

    # -- HTTP: upload -------------------------------------------------------------------
    async def upload(request: Request, span: Span, _ctx: Context) -> Response:
        tenant = runtime.tenant_for(_token(request.headers, request.query_params))
        if tenant is None:
            return _error(401, "missing or unknown bearer token")
        limit = runtime.settings.max_payload_bytes
        declared = request.headers.get("content-length")
        expected = request.headers.get("x-bustrail-checksum", "").removeprefix("sha256:").lower()
        ctx = TransactionContext(
            tenant=tenant,
            tool=request.headers.get("x-bustrail-tool"),
            direction=Direction.UPLOAD,
            mime_type=request.headers.get("content-type") or "application/octet-stream",
        )
        ctx.trace_id, ctx.span_id = runtime.telemetry.ids(span)
        if declared and declared.isdigit() and int(declared) > limit:
            # Refused before a byte is read, and audited like one refused mid-stream.
            too_large = PayloadTooLarge(int(declared), limit)
            runtime.bus.too_large(ctx, too_large)
            return _error(413, str(too_large))
        pieces: queue.Queue[Any] = queue.Queue(maxsize=8)

        def feed() -> Iterator[bytes]:
            while True:
                item = pieces.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        async def pump() -> None:
            try:
                async for chunk in request.stream():
                    if chunk:
                        await asyncio.to_thread(pieces.put, chunk)
            except BaseException as exc:
                await asyncio.to_thread(pieces.put, exc)
                raise
            await asyncio.to_thread(pieces.put, _END)

        pumping = asyncio.create_task(pump())
        try:
            record = await runtime.bus.put(ctx, feed())
        except PayloadTooLarge as exc:
            pumping.cancel()
            return _error(413, str(exc))
        except StoreError as exc:
            pumping.cancel()
            return _error(503, f"store unavailable, upload not kept: {exc}")
        except BustrailError as exc:
            pumping.cancel()
            return _error(400, str(exc))
        finally:
            await _stop_pump(pumping, pieces)
        _annotate(span, record)
        if expected and expected != record.checksum:
            message = (
                f"upload damaged in transit: its SHA-256 is {record.checksum}, the client "
                f"said {expected}; not kept"
            )
            await asyncio.to_thread(
                functools.partial(
                    runtime.store.delete,
                    tenant,
                    record.id,
                    rejected=("upload_damaged", message),
                )
            )
            return _error(400, message)
        return JSONResponse(
            {
                "transaction_id": str(record.id),
                "uri": f"bustrail://transactions/{record.id}",
                "size": record.size,
                "stored_size": record.stored_size,
                "compression": record.compression.value,
                "checksum": f"sha256:{record.checksum}",
                "expires_at": record.expires_at.isoformat() if record.expires_at else None,
            },
            status_code=201,
        )

    # -- HTTP: operations -----------------------------------------------------------------
    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        checks: dict[str, Any] = {}
        ready = True
        try:
            await asyncio.to_thread(runtime.db.ping)
            checks["database"] = "ok"
        except StoreError as exc:
            checks["database"] = str(exc)
            ready = False
        if runtime.breaker is not None:
            state = runtime.breaker.state
            checks["breaker"] = state.value
            ready = ready and state is not BreakerState.OPEN
        if runtime.shutting_down:
            checks["shutting_down"] = True
            ready = False
        if runtime.gateway is not None:
            checks["upstreams"] = runtime.gateway.health()
            ready = ready and runtime.gateway.ready
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return Starlette(
        routes=[
            WebSocketRoute("/ws", _WebSocketApp(websocket_endpoint)),
            Route(
                "/v1/transactions/{tx_id}",
                traced("/v1/transactions/{tx_id}", download),
                methods=["GET"],
            ),
            Route("/v1/transactions", traced("/v1/transactions", upload), methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class _WebSocketApp:
    """``/ws`` as a plain ASGI app (Starlette takes a class as one). The endpoint gets
    Starlette's WebSocket for the handshake (headers, query, accept, refusals) and the
    raw ASGI ``receive`` and ``send`` for the messages after it: Starlette's layers on
    each message (state checks, a coroutine more each way) cost more than the little
    they do for us, on every call (bench_daemon)."""

    def __init__(self, endpoint: Callable[[WebSocket, Receive, Send], Awaitable[None]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(WebSocket(scope, receive=receive, send=send), receive, send)


class _ClosingStreamingResponse(StreamingResponse):
    """A streamed body that is closed however the response ends.

    Starlette drops an unfinished sync body (a client that went away mid-download) and
    leaves it to the garbage collector, which may need a full collection to get to it:
    until then its span stays open and its work undone. Closing it here ends both at
    once (anyio lets no ``next()`` of it run on by then: a cancelled step is waited for).
    """

    def __init__(self, content: Iterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self._content, "close", None)
            if close is not None:
                close()


def _annotate(span: Span, record: Transaction) -> None:
    span.set_attribute("bustrail.transaction_id", str(record.id))
    span.set_attribute("bustrail.size", int(record.size))
    span.set_attribute("bustrail.stored_size", int(record.stored_size or 0))
    span.set_attribute("bustrail.compression", record.compression.value)


def _traced_body(
    runtime: Runtime,
    steps: Iterator[bytes],
    span: Span,
    ctx: Context,
    *,
    status: int,
    whole: bool,
) -> Iterator[bytes]:
    """A download body inside its server span, which ends with the stream.

    Starlette runs each ``next()`` in a threadpool thread of its choosing, so the span's
    context is attached and detached within each step, never across a ``yield``: the
    store's reads (and their database spans) nest under the span. A whole payload read
    to the end counts as a fetch; the time spent inside the steps (the store reading and
    verifying, not the client receiving) is the read latency.
    """
    telemetry, metrics = runtime.telemetry, runtime.metrics
    error_type: str | None = None
    reading = 0.0
    try:
        while True:
            began = time.perf_counter()
            with telemetry.attached(ctx):
                piece = next(steps, None)
            reading += time.perf_counter() - began
            if piece is None:
                break
            yield piece
        if whole:
            metrics.fetches.labels(via="http").inc()
            metrics.store_seconds.labels(operation="read").observe(reading)
    except ChecksumMismatch:
        metrics.checksum_mismatches.inc()
        error_type = "checksum_mismatch"
        raise
    except GeneratorExit:
        error_type = "aborted"  # the client went away before the end
        raise
    except BaseException as exc:
        error_type = type(exc).__name__
        raise
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()  # a body left mid-way lets go of what it holds now
        telemetry.end_http(span, status, error_type)


async def _stop_pump(pumping: asyncio.Task[None], pieces: queue.Queue[Any]) -> None:
    """End the body pump; drain the queue so a thread blocked on put() can return."""
    if not pumping.done():
        pumping.cancel()
    while not pumping.done():
        with contextlib.suppress(queue.Empty):
            while True:
                pieces.get_nowait()
        await asyncio.sleep(0.01)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await pumping


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    await ws.accept()
    await ws.close(code=code, reason=reason)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` range within ``size``; None when unsatisfiable or unsupported."""
    match = _RANGE.match(header.strip())
    if not match or size == 0:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return None
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
