"""Tests for bus.router: the pure routing decision and the fallback after a store failure."""

from __future__ import annotations

import json
import os
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.router import (
    DEFAULT_CLIENT_CAP,
    Action,
    RoutingPolicy,
    decide,
    decide_fallback,
    encode_message,
)
from bus.settings import Settings

MIB = 1024 * 1024


def envelope(text: str) -> dict[str, Any]:
    """A tools/call result as the daemon sends it inline."""
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"content": [{"type": "text", "text": text}], "isError": False},
    }


def route(policy: RoutingPolicy, text: str, client_cap: int | None = None) -> Action:
    message = encode_message(envelope(text))
    return decide(
        policy,
        payload_size=len(text.encode()),
        message_size=len(message),
        client_cap=client_cap,
    ).action


# -- the limit -------------------------------------------------------------------------------


def test_inline_at_the_limit_store_just_over() -> None:
    policy = RoutingPolicy(threshold_bytes=1000)
    at = decide(policy, payload_size=900, message_size=1000, client_cap=None)
    over = decide(policy, payload_size=900, message_size=1001, client_cap=None)
    assert (at.action, at.limit, at.error_kind) == (Action.INLINE, 1000, None)
    assert (over.action, over.limit, over.error_kind) == (Action.STORE, 1000, None)


@pytest.mark.parametrize(
    ("threshold", "client_cap", "ws_max", "limit"),
    [
        (MIB, None, 32 * MIB, DEFAULT_CLIENT_CAP),  # no cap declared: 1 MiB assumed
        (4 * MIB, None, 32 * MIB, MIB),  # the assumed cap is under the threshold
        (4 * MIB, 2 * MIB, 32 * MIB, 2 * MIB),  # a declared cap
        (4 * MIB, 64 * MIB, 3 * MIB, 3 * MIB),  # the daemon's own ceiling
        (1500, 64 * MIB, 32 * MIB, 1500),  # the threshold
        (MIB, 10_000, 32 * MIB, 10_000),  # a client that takes only small messages
    ],
)
def test_the_limit_is_the_smallest_of_threshold_client_cap_and_websocket_max(
    threshold: int, client_cap: int | None, ws_max: int, limit: int
) -> None:
    policy = RoutingPolicy(threshold_bytes=threshold, websocket_max_message_bytes=ws_max)
    assert DEFAULT_CLIENT_CAP == MIB
    at = decide(policy, payload_size=10, message_size=limit, client_cap=client_cap)
    over = decide(policy, payload_size=10, message_size=limit + 1, client_cap=client_cap)
    assert (at.action, at.limit) == (Action.INLINE, limit)
    assert (over.action, over.limit) == (Action.STORE, limit)


def test_policy_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no `.env`, and no setting from the outside
    for name in [n for n in os.environ if n.lower() in Settings.model_fields]:
        monkeypatch.delenv(name)
    settings = Settings(
        message_bus_threshold_bytes=4096,
        websocket_max_message_mb=2,
        message_bus_max_payload_mb=1,
        message_bus_enabled=False,
        fallback_to_websocket=False,
    )
    assert RoutingPolicy.from_settings(settings) == RoutingPolicy(
        enabled=False,
        threshold_bytes=4096,
        max_payload_bytes=MIB,
        websocket_max_message_bytes=2 * MIB,
        fallback_to_websocket=False,
    )


# -- the encoded message, not the payload, is what counts ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"' * 600,  # every quote escaped: \"
        "\n" * 600,  # every newline escaped: \n
        "\x01" * 200,  # control characters: \u0001, six bytes each
        "é" * 500,  # 500 characters, 1000 UTF-8 bytes: sizes are bytes, envelope included
        "\\" * 600,
    ],
    ids=["quotes", "newlines", "control", "non-ascii", "backslashes"],
)
def test_a_payload_under_the_limit_whose_message_is_over_it_is_stored(text: str) -> None:
    policy = RoutingPolicy(threshold_bytes=1024)
    raw = len(text.encode())
    message = encode_message(envelope(text))
    assert raw < 1024 < len(message)
    assert json.loads(message)["result"]["content"][0]["text"] == text  # exact wire bytes
    assert route(policy, text) is Action.STORE
    # As many plain ASCII characters fit: counting characters, or the raw payload,
    # would have sent the message inline and past the limit.
    assert route(policy, "x" * len(text)) is Action.INLINE


def test_encode_message_is_compact_utf8() -> None:
    assert encode_message({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


def _json_bytes(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


_finite = st.floats(allow_nan=False, allow_infinity=False)
_messages = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | _finite.map(lambda f: round(f, 3)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_messages)
def test_encode_message_writes_the_bytes_json_writes(message: Any) -> None:
    # orjson on the hot path, json for what orjson refuses: the same bytes either way
    # (floats aside: rounded here, so both write them alike).
    assert encode_message(message) == _json_bytes(message)


def test_what_orjson_refuses_is_encoded_as_json_encodes_it() -> None:
    class Route(StrEnum):
        INLINE = "inline"

    class Code(IntEnum):
        PARSE_ERROR = -32700

    for message in (
        {"id": 2**70, "big": -(2**64)},  # past 64 bits
        {1: "a", None: "b", 2.5: "c"},  # keys that are not strings
        {"route": Route.INLINE, "code": Code.PARSE_ERROR},  # subclasses of str and int
    ):
        assert encode_message(message) == _json_bytes(message)
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: as json fails on it
        encode_message({"text": "\ud800"})
    with pytest.raises(TypeError):  # not JSON at all: as json refuses it
        encode_message({"x": object()})


# -- the bus disabled, the size limit --------------------------------------------------------


def test_bus_disabled_sends_inline_what_fits_and_fails_the_rest() -> None:
    policy = RoutingPolicy(enabled=False, threshold_bytes=1024)
    fits = decide(policy, payload_size=5000, message_size=5000, client_cap=None)
    assert fits.action is Action.INLINE  # the threshold does not matter, the cap does
    too_big = decide(policy, payload_size=2 * MIB, message_size=2 * MIB, client_cap=None)
    assert (too_big.action, too_big.error_kind) == (Action.FAIL, "inline_oversize")
    assert "MESSAGE_BUS_ENABLED" in too_big.reason
    assert f"{2 * MIB:,}" in too_big.reason and f"{MIB:,}" in too_big.reason
    declared = decide(policy, payload_size=2 * MIB, message_size=2 * MIB, client_cap=4 * MIB)
    assert declared.action is Action.INLINE


@pytest.mark.parametrize("enabled", [True, False])
def test_over_the_max_payload_is_rejected(enabled: bool) -> None:
    policy = RoutingPolicy(enabled=enabled, max_payload_bytes=10 * MIB)
    over = decide(policy, payload_size=10 * MIB + 1, message_size=10, client_cap=None)
    assert (over.action, over.error_kind) == (Action.REJECT, "payload_too_large")
    assert "MESSAGE_BUS_MAX_PAYLOAD_MB" in over.reason
    at = decide(policy, payload_size=10 * MIB, message_size=10 * MIB + 200, client_cap=None)
    assert at.action is (Action.STORE if enabled else Action.FAIL)


# -- fallback ---------------------------------------------------------------------------------


def test_fallback_when_the_message_fits_the_client() -> None:
    policy = RoutingPolicy(threshold_bytes=1024)
    decision = decide_fallback(policy, message_size=MIB, client_cap=None, store_error="db down")
    assert (decision.action, decision.limit, decision.error_kind) == (Action.FALLBACK, MIB, None)


def test_fallback_too_big_for_the_client_fails() -> None:
    policy = RoutingPolicy()
    decision = decide_fallback(
        policy, message_size=MIB + 1, client_cap=None, store_error="breaker open"
    )
    assert (decision.action, decision.error_kind) == (Action.FAIL, "fallback_oversize")
    assert "breaker open" in decision.reason and f"{MIB + 1:,}" in decision.reason
    bigger_cap = decide_fallback(
        policy, message_size=MIB + 1, client_cap=8 * MIB, store_error="breaker open"
    )
    assert bigger_cap.action is Action.FALLBACK


def test_fallback_disabled_fails_with_store_unavailable() -> None:
    policy = RoutingPolicy(fallback_to_websocket=False)
    decision = decide_fallback(policy, message_size=10, client_cap=None, store_error="db down")
    assert (decision.action, decision.error_kind) == (Action.FAIL, "store_unavailable")
    assert "FALLBACK_TO_WEBSOCKET" in decision.reason and "db down" in decision.reason


# -- the property --------------------------------------------------------------------------------

caps = st.one_of(st.none(), st.integers(1, 64 * MIB))


@given(
    enabled=st.booleans(),
    threshold=st.integers(1024, 64 * MIB),
    ws_max=st.integers(1, 64 * MIB),
    max_payload=st.integers(1, 200 * MIB),
    payload_size=st.integers(0, 200 * MIB),
    overhead=st.integers(0, 8 * MIB),
    client_cap=caps,
)
def test_never_inline_over_the_clients_cap(
    enabled: bool,
    threshold: int,
    ws_max: int,
    max_payload: int,
    payload_size: int,
    overhead: int,
    client_cap: int | None,
) -> None:
    policy = RoutingPolicy(
        enabled=enabled,
        threshold_bytes=threshold,
        max_payload_bytes=max_payload,
        websocket_max_message_bytes=ws_max,
    )
    message_size = payload_size + overhead
    decision = decide(
        policy, payload_size=payload_size, message_size=message_size, client_cap=client_cap
    )
    cap = DEFAULT_CLIENT_CAP if client_cap is None else client_cap
    if decision.action is Action.INLINE:
        assert message_size <= min(cap, ws_max)
        assert message_size <= decision.limit
    if payload_size > max_payload:
        assert decision.action is Action.REJECT
    fallback = decide_fallback(
        policy, message_size=message_size, client_cap=client_cap, store_error="x"
    )
    if fallback.action is Action.FALLBACK:
        assert message_size <= min(cap, ws_max)
