"""The Python client: call tools, fetch claim checks, upload large arguments.

>>> async with await Client.connect("ws://127.0.0.1:8765/ws", token="t") as client:
...     result = await client.call("generate", {"size": 5_000_000})
...     data = await client.result_bytes(result)      # fetched and verified if stored

The client declares the largest message it accepts (``max_message_bytes``, 1 MiB by
default, like the ``websockets`` library it runs on) in ``initialize``, so the daemon
never sends it a larger frame. Large arguments (over the daemon's threshold) go up
through ``POST /v1/transactions`` first and travel as ``bustrail://transactions/<id>``.
Every fetch is checked against the SHA-256 the daemon announced; a mismatch raises and
leaves no file behind. Trace context goes out in ``params._meta``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, TracerProvider

__all__ = [
    "CallResult",
    "Client",
    "ClientError",
    "IntegrityError",
    "RPCError",
    "fetch_transaction",
    "http_base",
]

DEFAULT_MAX_MESSAGE = 1024 * 1024
URI_PREFIX = "bustrail://transactions/"


class ClientError(Exception):
    """Something the daemon refused, or the connection failed."""


class RPCError(ClientError):
    """A JSON-RPC error response."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.data = data


class IntegrityError(ClientError):
    """Bytes received do not match the checksum the daemon announced."""


@dataclass
class CallResult:
    """A ``tools/call`` result, with bustrail's metadata at hand."""

    raw: dict[str, Any]
    request_id: int

    @property
    def meta(self) -> dict[str, Any]:
        return dict((self.raw.get("_meta") or {}).get("bustrail") or {})

    @property
    def is_error(self) -> bool:
        return bool(self.raw.get("isError"))

    @property
    def transaction_id(self) -> str | None:
        return self.meta.get("transaction_id")

    @property
    def route(self) -> str | None:
        return self.meta.get("route")

    @property
    def checksum(self) -> str | None:
        value = self.meta.get("checksum")
        return str(value).removeprefix("sha256:") if value else None

    @property
    def content(self) -> list[dict[str, Any]]:
        return list(self.raw.get("content") or [])

    @property
    def text(self) -> str:
        """The text blocks joined (for a stored result: the notice, not the payload)."""
        return "".join(c.get("text", "") for c in self.content if c.get("type") == "text")

    @property
    def resource_link(self) -> dict[str, Any] | None:
        return next((c for c in self.content if c.get("type") == "resource_link"), None)

    def inline_bytes(self) -> bytes:
        """The payload of an inline or fallback result, verified."""
        if self.route == "store":
            raise ClientError("this result is stored: use Client.result_bytes() or fetch()")
        data = b""
        for block in self.content:
            if block.get("type") == "text":
                data += block["text"].encode()
            elif block.get("type") == "resource" and "blob" in block.get("resource", {}):
                data += base64.b64decode(block["resource"]["blob"])
        if self.checksum and hashlib.sha256(data).hexdigest() != self.checksum:
            raise IntegrityError(f"inline result of {self.transaction_id} fails its checksum")
        return data


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Client:
    def __init__(
        self,
        ws: Any,
        http: httpx.AsyncClient,
        *,
        max_message_bytes: int,
        tracer_provider: TracerProvider | None,
    ) -> None:
        self._ws = ws
        self._http = http
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._reader = asyncio.create_task(self._read_loop())
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "bustrail.client"
        )
        self.server: dict[str, Any] = {}
        self.closed_reason: str | None = None

    # -- connection ---------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: str = "ws://127.0.0.1:8765/ws",
        *,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        tracer_provider: TracerProvider | None = None,
        http_timeout: float = 300.0,
        initialize: bool = True,
    ) -> Client:
        token = token if token is not None else os.environ.get("BUSTRAIL_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            ws = await websockets.connect(
                url,
                additional_headers=headers,
                subprotocols=["mcp"],  # type: ignore[list-item]
                max_size=max_message_bytes,
                open_timeout=10,
            )
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            raise ClientError(f"cannot connect to {url}: {exc}") from exc
        http = httpx.AsyncClient(base_url=http_base(url), headers=headers, timeout=http_timeout)
        client = cls(ws, http, max_message_bytes=max_message_bytes, tracer_provider=tracer_provider)
        if initialize:
            try:
                await client.initialize()
            except BaseException:
                await client.close()  # a refused initialize must not leak the connection
                raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._http.aclose()

    async def _read_loop(self) -> None:
        try:
            async for frame in self._ws:
                try:
                    message = json.loads(frame)
                except ValueError:
                    continue
                pending = (
                    self._pending.pop(message.get("id"), None)
                    if isinstance(message, dict)
                    else None
                )
                if pending is not None and not pending.future.done():
                    pending.future.set_result(message)
        except websockets.ConnectionClosed as exc:
            self.closed_reason = f"connection closed: {exc}"
        finally:
            reason = self.closed_reason or "connection closed"
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(ClientError(reason))
            self._pending.clear()

    # -- JSON-RPC -----------------------------------------------------------------------
    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        _request_id, result = await self._request(method, params, timeout)
        return result

    async def _request(
        self, method: str, params: dict[str, Any] | None, timeout: float | None
    ) -> tuple[int, Any]:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, method)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        try:
            await self._ws.send(json.dumps(message, separators=(",", ":")))
        except websockets.ConnectionClosed as exc:
            self._pending.pop(request_id, None)
            raise ClientError(f"connection closed: {exc}") from exc
        try:
            response = await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.CancelledError):
            self._pending.pop(request_id, None)
            with contextlib.suppress(Exception):
                await self.notify(
                    "notifications/cancelled", {"requestId": request_id, "reason": "client gave up"}
                )
            raise
        if "error" in response:
            error = response["error"]
            raise RPCError(
                int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        return request_id, response.get("result")

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self._ws.send(
            json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}})
        )

    async def initialize(self) -> dict[str, Any]:
        self.server = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {
                    "experimental": {"bustrail": {"maxMessageBytes": self.max_message_bytes}}
                },
                "clientInfo": {"name": "bustrail-client", "version": "1"},
            },
        )
        await self.notify("notifications/initialized")
        return self.server

    @property
    def threshold_bytes(self) -> int:
        info = ((self.server.get("capabilities") or {}).get("experimental") or {}).get(
            "bustrail"
        ) or {}
        return int(info.get("thresholdBytes") or self.max_message_bytes)

    async def list_tools(self) -> list[dict[str, Any]]:
        result = await self.request("tools/list")
        return list(result["tools"])

    async def ping(self) -> None:
        await self.request("ping")

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> CallResult:
        """Call a tool; large arguments are uploaded first and sent as their URI."""
        arguments = await self._upload_large_arguments(dict(arguments or {}))
        with self._tracer.start_as_current_span(
            f"tools/call {tool}",
            kind=SpanKind.CLIENT,
            attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": tool},
        ):
            carrier: dict[str, Any] = dict(meta or {})
            propagate.inject(carrier)
            params = {"name": tool, "arguments": arguments, "_meta": carrier}
            request_id, result = await self._request("tools/call", params, timeout)
        return CallResult(result, request_id)

    async def _upload_large_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """bytes always go up as uploads (JSON has no bytes); so do long strings."""
        limit = self.threshold_bytes // 2
        for key, value in arguments.items():
            if isinstance(value, bytes | bytearray):
                arguments[key] = (await self.upload(bytes(value)))["uri"]
            elif (
                isinstance(value, str)
                and len(value) > 1024
                and len(json.dumps(value, ensure_ascii=False).encode()) > limit
            ):
                upload = await self.upload(value.encode(), mime_type="text/plain")
                arguments[key] = upload["uri"]
        return arguments

    # -- claim checks -------------------------------------------------------------------
    async def read_resource(self, uri: str) -> bytes:
        """``resources/read`` over the WebSocket (for results that fit one message)."""
        result = await self.request("resources/read", {"uri": uri})
        contents = result["contents"][0]
        if "text" in contents:
            return str(contents["text"]).encode()
        return base64.b64decode(contents["blob"])

    async def result_bytes(self, result: CallResult) -> bytes:
        """The payload of any result: inline bytes, or the stored ones fetched."""
        if result.route == "store":
            assert result.transaction_id is not None
            data = await self.fetch(result.transaction_id)
            assert isinstance(data, bytes)
            return data
        return result.inline_bytes()

    async def fetch(
        self, transaction_id: str | uuid.UUID, *, to_file: str | Path | None = None
    ) -> bytes | Path:
        """Download a stored payload over HTTP, verifying its SHA-256 as it streams."""
        return await fetch_transaction(self._http, transaction_id, to_file=to_file)

    async def upload(
        self, data: bytes | Path, *, mime_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Stream a payload into the store; return its id, uri and checksum."""
        if isinstance(data, Path):
            checksum = await asyncio.to_thread(_file_sha256, data)
            content: Any = _file_chunks(data)
        else:
            checksum = hashlib.sha256(data).hexdigest()
            content = data
        headers = {"content-type": mime_type, "x-bustrail-checksum": f"sha256:{checksum}"}
        async with _reaching(
            self._http, "POST", "/v1/transactions", content=content, headers=headers
        ) as response:
            await response.aread()
        if response.status_code != 201:
            raise ClientError(f"upload: HTTP {response.status_code}: {_error_text(response.text)}")
        return dict(response.json())


async def fetch_transaction(
    http: httpx.AsyncClient, transaction_id: str | uuid.UUID, *, to_file: str | Path | None = None
) -> bytes | Path:
    """GET /v1/transactions/<id> on ``http``; bytes, or the file written. Verified."""
    path = f"/v1/transactions/{transaction_id}"
    digest = hashlib.sha256()
    async with _reaching(http, "GET", path) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            raise ClientError(f"GET {path}: HTTP {response.status_code}: {_error_text(body)}")
        expected = response.headers.get("x-bustrail-checksum", "").removeprefix("sha256:")
        try:
            if to_file is None:
                parts = []
                async for piece in response.aiter_bytes():
                    digest.update(piece)
                    parts.append(piece)
                data: bytes | Path = b"".join(parts)
            else:
                data = await _stream_to_file(response.aiter_bytes(), Path(to_file), digest)
        except httpx.HTTPError as exc:
            raise ClientError(f"GET {path}: download cut short ({exc}); nothing kept") from exc
    if not expected or digest.hexdigest() != expected:
        if isinstance(data, Path):
            data.unlink(missing_ok=True)
        raise IntegrityError(f"transaction {transaction_id}: downloaded bytes fail their SHA-256")
    return data


@contextlib.asynccontextmanager
async def _reaching(
    http: httpx.AsyncClient, method: str, path: str, **request: Any
) -> AsyncIterator[httpx.Response]:
    """``http.stream(...)``; a daemon that cannot be reached or drops the connection
    (refused, reset, timed out) is a ClientError naming the URL, not httpx's traceback."""
    try:
        async with http.stream(method, path, **request) as response:
            yield response
    except httpx.TransportError as exc:
        url = http.base_url.join(path)
        raise ClientError(
            f"{method} {url}: no answer from the daemon ({type(exc).__name__}: {exc})"
        ) from exc


def http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[: -len("/ws")] if parts.path.endswith("/ws") else parts.path
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body[:500]


async def _stream_to_file(pieces: AsyncIterator[bytes], target: Path, digest: Any) -> Path:
    tmp = target.with_name(target.name + ".part")
    try:
        with open(tmp, "wb") as f:
            async for piece in pieces:
                digest.update(piece)
                f.write(piece)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while block := await asyncio.to_thread(f.read, 1 << 20):
            yield block
