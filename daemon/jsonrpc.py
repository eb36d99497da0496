"""JSON-RPC 2.0 framing: text in, a request or an error out. Pure: no I/O.

Errors use the standard codes: -32700 parse error, -32600 invalid request, -32601
method not found, -32602 invalid params, -32603 internal error. bustrail's own refusals
use the implementation-defined range (-32000 to -32099), listed in :class:`Code`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

__all__ = [
    "Code",
    "Notification",
    "ProtocolError",
    "Request",
    "error_response",
    "parse",
    "result_response",
]

JSONRPC = "2.0"
MAX_ID_LENGTH = 256  # every answer echoes the id: a huge one would not fit a client's cap


class Code(IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # bustrail's own, in the implementation-defined server error range
    RESULT_TOO_LARGE = -32001  # cannot be sent in one message to this client
    STORE_UNAVAILABLE = -32002  # store failed and fallback impossible or off
    PAYLOAD_TOO_LARGE = -32003  # over MESSAGE_BUS_MAX_PAYLOAD_MB
    NOT_FOUND = -32004  # unknown transaction (or another tenant's)
    CORRUPTED = -32005  # stored bytes fail their checksum
    UNAVAILABLE = -32006  # known transaction without a readable payload (expired...)
    TIMEOUT = -32007  # tool ran past its timeout
    CANCELLED = -32008  # cancelled by the client or by shutdown
    SHUTTING_DOWN = -32009  # the daemon is stopping and takes no new calls
    NOT_INITIALIZED = -32010  # (reserved)
    UPSTREAM_ERROR = -32011  # a gateway upstream crashed or failed


class ProtocolError(Exception):
    """A frame or request that gets a JSON-RPC error instead of a result."""

    def __init__(self, code: int, message: str, request_id: Any = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.request_id = request_id
        self.data = data

    def response(self) -> dict[str, Any]:
        return error_response(self.request_id, self.code, self.message, self.data)


@dataclass(frozen=True)
class Request:
    id: str | int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Notification:
    method: str
    params: dict[str, Any]


def parse(text: str | bytes) -> Request | Notification | list[Any]:
    """One frame: a request, a notification, or a batch (a list, handled by the caller).

    Raises ProtocolError (-32700 or -32600) for anything else. The request id is kept
    on the error whenever it could be read, so the client can match it.
    """
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(Code.PARSE_ERROR, f"parse error: {exc}") from None
    except RecursionError:
        raise ProtocolError(Code.PARSE_ERROR, "parse error: nested too deeply") from None
    if isinstance(message, list):
        if not message:
            raise ProtocolError(Code.INVALID_REQUEST, "invalid request: empty batch")
        return message
    return parse_message(message)


def parse_message(message: Any) -> Request | Notification:
    if not isinstance(message, dict):
        raise ProtocolError(Code.INVALID_REQUEST, "invalid request: expected a JSON object")
    request_id = message.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int)
    ):
        raise ProtocolError(
            Code.INVALID_REQUEST, "invalid request: id must be a string or an integer"
        )
    if isinstance(request_id, str) and not _echoable(request_id):
        raise ProtocolError(
            Code.INVALID_REQUEST,
            f"invalid request: a string id must be valid Unicode of at most {MAX_ID_LENGTH} "
            "characters",
        )
    if message.get("jsonrpc") != JSONRPC:
        raise ProtocolError(
            Code.INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', request_id
        )
    method = message.get("method")
    if not isinstance(method, str) or not method:
        if "result" in message or "error" in message:
            raise ProtocolError(
                Code.INVALID_REQUEST, "invalid request: the daemon sends no requests", request_id
            )
        raise ProtocolError(
            Code.INVALID_REQUEST, 'invalid request: "method" must be a string', request_id
        )
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(
            Code.INVALID_PARAMS, 'invalid params: "params" must be an object', request_id
        )
    if "id" not in message:
        return Notification(method, params)
    if request_id is None:
        raise ProtocolError(Code.INVALID_REQUEST, "invalid request: id must not be null")
    return Request(request_id, method, params)


def _echoable(request_id: str) -> bool:
    """An id the answer can carry: short, and no lone surrogate (not encodable)."""
    if len(request_id) > MAX_ID_LENGTH:
        return False
    try:
        request_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def result_response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": result}


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": error}
