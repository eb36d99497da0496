"""The routing decision: inline, claim check, fallback or refusal. Pure: no I/O.

Routing compares the *encoded* message (the JSON-RPC envelope around the result,
escaping included) with the smaller of ``MESSAGE_BUS_THRESHOLD_BYTES`` and what the
receiving client can take (its declared cap, or 1 MiB, the default of the official MCP
client and of the ``websockets`` library), never above the daemon's own
``WEBSOCKET_MAX_MESSAGE_MB``. So no frame the daemon sends can exceed the client's cap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from bus.settings import Settings

__all__ = [
    "DEFAULT_CLIENT_CAP",
    "Action",
    "Decision",
    "RoutingPolicy",
    "decide",
    "decide_fallback",
    "encode_message",
    "needs_store",
]

DEFAULT_CLIENT_CAP = 1024 * 1024


class Action(StrEnum):
    INLINE = "inline"  # send the result in the message
    STORE = "store"  # claim check: store it, send a resource_link
    FALLBACK = "fallback"  # the store failed: send it inline after all
    FAIL = "fail"  # nothing can be sent: a clear error instead
    REJECT = "reject"  # over MESSAGE_BUS_MAX_PAYLOAD_MB


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    limit: int  # the largest message this client may be sent, as decided
    error_kind: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    enabled: bool = True
    threshold_bytes: int = DEFAULT_CLIENT_CAP
    max_payload_bytes: int = 100 * 1024 * 1024
    websocket_max_message_bytes: int = 32 * 1024 * 1024
    fallback_to_websocket: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingPolicy:
        return cls(
            enabled=settings.message_bus_enabled,
            threshold_bytes=settings.message_bus_threshold_bytes,
            max_payload_bytes=settings.max_payload_bytes,
            websocket_max_message_bytes=settings.websocket_max_message_bytes,
            fallback_to_websocket=settings.fallback_to_websocket,
        )

    def client_limit(self, client_cap: int | None) -> int:
        """The largest single message this client may be sent."""
        cap = DEFAULT_CLIENT_CAP if client_cap is None else client_cap
        return min(cap, self.websocket_max_message_bytes)


# One encoder, made once: json.dumps with these options builds a new one every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Subclasses of str, int, dict and list, dataclasses and datetimes go to the fallback,
# which encodes them (or refuses them) as json always did.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def encode_message(message: Any) -> bytes:
    """The exact bytes a JSON-RPC message goes out as (compact, UTF-8).

    orjson writes the same bytes as ``json`` (compact, not ASCII-escaped: checked for
    every code point) ten times faster, which was ~5% of a small call (bench_daemon).
    What it refuses (an integer past 64 bits, a key that is not a string, a lone
    surrogate, the types above) is encoded by ``json`` instead, which raises what it
    raised before. Floats are written in their shortest form (``1e-7``, not ``1e-07``),
    and NaN and infinities, which JSON cannot express, as ``null``.
    """
    try:
        return orjson.dumps(message, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return _ENCODER.encode(message).encode()


def decide(
    policy: RoutingPolicy, *, payload_size: int, message_size: int, client_cap: int | None
) -> Decision:
    """Route a result of ``payload_size`` bytes whose inline message is ``message_size``."""
    client_limit = policy.client_limit(client_cap)
    if payload_size > policy.max_payload_bytes:
        return Decision(
            Action.REJECT,
            client_limit,
            "payload_too_large",
            f"result of {payload_size:,} bytes is over MESSAGE_BUS_MAX_PAYLOAD_MB "
            f"({policy.max_payload_bytes:,} bytes)",
        )
    if not policy.enabled:
        if message_size <= client_limit:
            return Decision(Action.INLINE, client_limit)
        return Decision(
            Action.FAIL,
            client_limit,
            "inline_oversize",
            f"result message of {message_size:,} bytes is over this client's limit of "
            f"{client_limit:,} bytes and the message bus is disabled (MESSAGE_BUS_ENABLED)",
        )
    limit = min(policy.threshold_bytes, client_limit)
    if message_size <= limit:
        return Decision(Action.INLINE, limit)
    return Decision(Action.STORE, limit)


def needs_store(policy: RoutingPolicy, *, payload_size: int, client_cap: int | None) -> bool:
    """True when a result is routed to the store whatever its inline message would be:
    that message holds the payload JSON-escaped or in base64, never in fewer bytes, so
    one over the limit already is enough to know (and the message need not be built)."""
    limit = min(policy.threshold_bytes, policy.client_limit(client_cap))
    return policy.enabled and policy.max_payload_bytes >= payload_size > limit


def decide_fallback(
    policy: RoutingPolicy, *, message_size: int, client_cap: int | None, store_error: str
) -> Decision:
    """The store failed (or the breaker is open): inline after all, or a clear error."""
    client_limit = policy.client_limit(client_cap)
    if not policy.fallback_to_websocket:
        return Decision(
            Action.FAIL,
            client_limit,
            "store_unavailable",
            f"the store is unavailable ({store_error}) and FALLBACK_TO_WEBSOCKET is off",
        )
    if message_size <= client_limit:
        return Decision(Action.FALLBACK, client_limit)
    return Decision(
        Action.FAIL,
        client_limit,
        "fallback_oversize",
        f"the store is unavailable ({store_error}) and the result message of "
        f"{message_size:,} bytes is over this client's limit of {client_limit:,} bytes, "
        "so it cannot be sent inline either",
    )
