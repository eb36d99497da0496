"""JSON-RPC framing, pure: every input is a request, a notification, a batch or a
ProtocolError with the right code, never another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.jsonrpc import (
    MAX_ID_LENGTH,
    Code,
    Notification,
    ProtocolError,
    Request,
    error_response,
    parse,
    result_response,
)


def _code(frame: str | bytes) -> int:
    with pytest.raises(ProtocolError) as refused:
        parse(frame)
    return refused.value.code


def test_requests_and_notifications() -> None:
    assert parse('{"jsonrpc":"2.0","id":1,"method":"ping"}') == Request(1, "ping", {})
    assert parse('{"jsonrpc":"2.0","id":"a","method":"m","params":null}') == Request("a", "m", {})
    assert parse('{"jsonrpc":"2.0","method":"n","params":{"x":1}}') == Notification("n", {"x": 1})
    assert parse(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]') == [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    ]


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("{", Code.PARSE_ERROR, None),
        (b"\xff\xfe\x00", Code.PARSE_ERROR, None),
        ("[" * 50_000, Code.PARSE_ERROR, None),
        ("[" * 100_000 + "]" * 100_000, Code.PARSE_ERROR, None),
        ("[]", Code.INVALID_REQUEST, None),
        ("3", Code.INVALID_REQUEST, None),
        ('{"id":1,"method":"ping"}', Code.INVALID_REQUEST, 1),
        ('{"jsonrpc":"1.0","id":2,"method":"ping"}', Code.INVALID_REQUEST, 2),
        ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', Code.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":true,"method":"ping"}', Code.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":null,"method":"ping"}', Code.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', Code.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":3,"method":""}', Code.INVALID_REQUEST, 3),
        ('{"jsonrpc":"2.0","id":4,"result":{}}', Code.INVALID_REQUEST, 4),
        ('{"jsonrpc":"2.0","id":5,"method":"m","params":[1]}', Code.INVALID_PARAMS, 5),
    ],
)
def test_bad_frames_get_their_code_and_keep_a_readable_id(
    frame: str | bytes, code: int, request_id: Any
) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(frame)
    assert refused.value.code == code
    assert refused.value.request_id == request_id
    response = refused.value.response()
    assert response["error"]["code"] == code and response["id"] == request_id


def test_a_string_id_is_at_most_max_id_length() -> None:
    longest = "i" * MAX_ID_LENGTH
    assert parse(json.dumps({"jsonrpc": "2.0", "id": longest, "method": "m"})) == Request(
        longest, "m", {}
    )
    assert _code(json.dumps({"jsonrpc": "2.0", "id": longest + "i", "method": "m"})) == (
        Code.INVALID_REQUEST
    )


@settings(max_examples=300, deadline=None, database=None)
@given(frame=st.one_of(st.text(), st.binary()))
def test_any_frame_parses_or_is_refused_never_anything_else(frame: str | bytes) -> None:
    try:
        parsed = parse(frame)
    except ProtocolError as exc:
        assert exc.code in {Code.PARSE_ERROR, Code.INVALID_REQUEST, Code.INVALID_PARAMS}
        json.dumps(exc.response())  # an answer can always be encoded
        return
    assert isinstance(parsed, Request | Notification | list)


def test_responses_have_the_envelope() -> None:
    assert result_response(1, {"x": 1}) == {"jsonrpc": "2.0", "id": 1, "result": {"x": 1}}
    assert error_response("a", -32601, "no", {"d": 1}) == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": -32601, "message": "no", "data": {"d": 1}},
    }
