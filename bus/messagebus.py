"""The message bus: routes one result, stores it through the breaker, audits the outcome.

This is where the pure decisions (``bus.router``, ``bus.breaker``) meet the I/O (``bus.store``,
``bus.audit``). The daemon hands over a result and a way to build its inline message;
it gets back a :class:`Delivery` saying what to send: the inline message, a claim check,
or a clear error. Every path leaves exactly one audit record per transaction.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bus.audit import AuditWriter
from bus.breaker import CircuitBreaker, CircuitOpenError, Transition
from bus.db import new_transaction_id, utcnow
from bus.errors import PayloadTooLarge, StoreError
from bus.inspect import suspicious_result
from bus.metrics import Metrics
from bus.models import Compression, Route, Status, Transaction
from bus.records import transaction_to_row
from bus.router import Action, RoutingPolicy, decide, decide_fallback, needs_store
from bus.store import PayloadStore, TransactionContext
from bus.telemetry import Telemetry

__all__ = ["Delivery", "InlineBuilder", "MessageBus", "daemon_id"]

log = logging.getLogger(__name__)

# Builds the exact inline message for a route ("inline" or "fallback") and checksum.
InlineBuilder = Callable[[Route, str], bytes]


def daemon_id() -> str:
    """This process's name in the audit trail (transactions and breaker_events)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Delivery:
    """What the daemon must send for one result."""

    action: Action
    transaction_id: Any
    route: Route
    size: int
    checksum: str
    message: bytes | None = None  # inline and fallback: the message to send as is
    record: Transaction | None = None  # store: the claim check
    error_kind: str | None = None
    error: str | None = None
    hint: str | None = None  # a success that looks like a failure (bus.inspect)

    @property
    def ok(self) -> bool:
        return self.action in (Action.INLINE, Action.FALLBACK, Action.STORE)


def _base(payload: bytes) -> dict[str, Any]:
    """The size and checksum every record of a payload carries."""
    return {"size": len(payload), "checksum": hashlib.sha256(payload).hexdigest()}


@functools.cache
def _row_defaults() -> dict[str, Any]:
    """Every column of a transaction row at the model's defaults (worked out once)."""
    tx_id, created_at = new_transaction_id(datetime(2000, 1, 1, tzinfo=UTC))
    record = Transaction(
        id=tx_id, created_at=created_at, tenant="", route=Route.INLINE, status=Status.PENDING
    )
    return transaction_to_row(record)


class MessageBus:
    def __init__(
        self,
        store: PayloadStore,
        audit: AuditWriter,
        policy: RoutingPolicy,
        breaker: CircuitBreaker | None,
        *,
        metrics: Metrics | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.audit = audit
        self.policy = policy
        self.breaker = breaker
        self.metrics = metrics or Metrics()
        self.telemetry = telemetry or Telemetry()
        self._clock = clock
        # Who wrote it, on every audit row and breaker event of this daemon: the same value.
        self.daemon_id = daemon_id()
        if breaker is not None:
            breaker.add_listener(self._on_transition)

    # -- audit helpers ----------------------------------------------------------------
    def _row(
        self,
        ctx: TransactionContext,
        route: Route = Route.INLINE,
        status: Status = Status.PENDING,
        **values: Any,
    ) -> dict[str, Any]:
        # A dict, not a Transaction: building the SQLModel instance cost ~0.2 ms, twice a
        # call, most of a small call's time in the daemon (bench_daemon). One dict
        # display, not a copy then updates: this runs twice a call too.
        tx_id, created_at = ctx.ensure_id()
        row = {
            **_row_defaults(),
            "id": tx_id,
            "created_at": created_at,
            "tenant": ctx.tenant,
            "session_id": ctx.session_id,
            "request_id": ctx.request_id,
            "tool": ctx.tool,
            "mime_type": ctx.mime_type,
            "direction": ctx.direction,
            "trace_id": ctx.trace_id,
            "span_id": ctx.span_id,
            "tool_ms": ctx.tool_ms,
            "daemon_id": self.daemon_id,
            "route": route,
            "status": status,
            "compression": Compression.NONE,
            "chunk_count": 0,
            "fetch_count": 0,
        }
        if values:
            unknown = values.keys() - row.keys()
            if unknown:
                raise TypeError(f"not columns of a transaction: {sorted(unknown)}")
            row.update(values)
        return row

    def _final(self, ctx: TransactionContext, route: Route, status: Status, **values: Any) -> None:
        """Audit (and count) how a transaction ended; every outcome passes here once."""
        self.audit.submit(self._row(ctx, route=route, status=status, **values))
        # StrEnums are their values (as labels too), without the .value property's cost.
        self.metrics.transaction(route, status, int(values.get("size") or 0))

    def begin(self, ctx: TransactionContext) -> None:
        """Record that a call started (``pending``), before the tool runs."""
        self.audit.submit(self._row(ctx))

    def fail(self, ctx: TransactionContext, error_kind: str, error: str, **values: Any) -> None:
        """Record a transaction that ended in an error the caller was told about."""
        route = values.pop("route", Route.INLINE)
        self._final(ctx, route, Status.FAILED, error_kind=error_kind, error=error, **values)

    def settle(
        self, ctx: TransactionContext, delivery: Delivery, *, sent: bool, error: str = ""
    ) -> None:
        """After sending an inline or fallback message: delivered, or failed to send."""
        if delivery.action not in (Action.INLINE, Action.FALLBACK):
            return
        base = {"route": delivery.route, "size": delivery.size, "checksum": delivery.checksum}
        if sent:
            hint = {}
            if delivery.hint:
                hint = {
                    "error_kind": delivery.hint,
                    "error": f"the result looks like a failure ({delivery.hint})",
                }
            self._final(
                ctx,
                delivery.route,
                Status.DELIVERED,
                delivered_at=self._clock(),
                size=delivery.size,
                checksum=delivery.checksum,
                **hint,
            )
        else:
            self.fail(
                ctx,
                "send_failed",
                error or "the connection closed before the result was sent",
                **base,
            )

    # -- routing ------------------------------------------------------------------------
    async def deliver(
        self,
        ctx: TransactionContext,
        payload: bytes,
        build_inline: InlineBuilder,
        *,
        client_cap: int | None,
    ) -> Delivery:
        """Route one result. Never raises for store trouble: that is what fallback is for."""
        telemetry = self.telemetry
        attributes = (
            {"bustrail.transaction_id": str(ctx.ensure_id()[0])} if telemetry.may_record else {}
        )
        with telemetry.span("bustrail.route", **attributes) as span:
            delivery = await self._deliver(ctx, payload, build_inline, client_cap)
            if span.is_recording():
                span.set_attribute("bustrail.route", delivery.route.value)
                span.set_attribute("bustrail.action", delivery.action.value)
            delivery.hint = ctx.hint
            return delivery

    async def _deliver(
        self,
        ctx: TransactionContext,
        payload: bytes,
        build_inline: InlineBuilder,
        client_cap: int | None,
    ) -> Delivery:
        tx_id, _ = ctx.ensure_id()
        size = len(payload)
        ctx.hint = suspicious_result(payload)
        if size > self.policy.max_payload_bytes:
            decision = decide(self.policy, payload_size=size, message_size=0, client_cap=client_cap)
            return self._refuse(
                ctx,
                decision.action,
                Route.INLINE,
                Status.REJECTED,
                decision.error_kind,
                decision.reason,
                _base(payload),
            )
        if needs_store(self.policy, payload_size=size, client_cap=client_cap):
            # Its message would be larger still: not built, which spared 2.4x the payload
            # in memory for JSON text (the message as str, then bytes: bench_large). Nor
            # hashed here: the store hashes it as it writes it.
            return await self._store(ctx, payload, build_inline, client_cap)
        checksum = hashlib.sha256(payload).hexdigest()
        message = build_inline(Route.INLINE, checksum)
        decision = decide(
            self.policy, payload_size=size, message_size=len(message), client_cap=client_cap
        )
        if decision.action is Action.INLINE:
            return Delivery(Action.INLINE, tx_id, Route.INLINE, size, checksum, message=message)
        if decision.action is not Action.STORE:
            return self._refuse(
                ctx,
                decision.action,
                Route.INLINE,
                Status.FAILED,
                decision.error_kind,
                decision.reason,
                {"size": size, "checksum": checksum},
            )
        return await self._store(ctx, payload, build_inline, client_cap)

    async def _store(
        self,
        ctx: TransactionContext,
        payload: bytes,
        build_inline: InlineBuilder,
        client_cap: int | None,
    ) -> Delivery:
        """The claim check; on store trouble, a refusal or the fallback."""
        try:
            record = await self._put(ctx, payload)
        except PayloadTooLarge as exc:
            return self._refuse(
                ctx,
                Action.REJECT,
                Route.STORE,
                Status.REJECTED,
                "payload_too_large",
                str(exc),
                _base(payload),
            )
        except StoreError as exc:
            return self._fallback(ctx, payload, build_inline, client_cap, exc, _base(payload))
        tx_id, _ = ctx.ensure_id()
        return Delivery(
            Action.STORE, tx_id, Route.STORE, record.size, str(record.checksum), record=record
        )

    def _stored(self, record: Transaction, seconds: float) -> None:
        self.metrics.store_seconds.labels(operation="put").observe(seconds)
        self.metrics.transaction(
            Route.STORE.value,
            Status.STORED.value,
            record.size,
            stored_size=record.stored_size,
            compression=record.compression.value,
        )

    async def put(self, ctx: TransactionContext, payload: bytes | Iterable[bytes]) -> Transaction:
        """Store a payload through the breaker (an upload); audit a refusal, then raise it."""
        try:
            return await self._put(ctx, payload)
        except PayloadTooLarge as exc:
            self.too_large(ctx, exc)
            raise
        except StoreError as exc:
            self.fail(ctx, "store_error", str(exc), route=Route.STORE)
            raise

    def too_large(self, ctx: TransactionContext, exc: PayloadTooLarge) -> None:
        """Record an upload refused for its size (``rejected``), also when it is refused
        by its declared length before a byte of it is read."""
        self._final(
            ctx,
            Route.STORE,
            Status.REJECTED,
            error_kind="payload_too_large",
            error=str(exc),
            size=exc.size,
        )

    async def _put(self, ctx: TransactionContext, payload: bytes | Iterable[bytes]) -> Transaction:
        with self.telemetry.span("bustrail.store.put", **{"bustrail.tenant": ctx.tenant}) as span:
            permit = self.breaker.acquire() if self.breaker is not None else None
            started = time.monotonic()
            try:
                # to_thread copies the context: the database spans nest under this one.
                record = await asyncio.to_thread(
                    self.store.put, ctx, payload, daemon_id=self.daemon_id
                )
            except StoreError as exc:
                self.metrics.store_errors.labels(operation="put").inc()
                self.telemetry.mark_error(span, type(exc).__name__)
                if permit is not None and self.breaker is not None:
                    self.breaker.record_failure(permit, type(exc).__name__)
                raise
            except BaseException:
                if permit is not None and self.breaker is not None:
                    self.breaker.release(permit)  # not the store's fault (cancelled, too large)
                raise
            seconds = time.monotonic() - started
            if permit is not None and self.breaker is not None:
                self.breaker.record_success(permit, seconds)
            span.set_attribute("bustrail.compression", record.compression.value)
            span.set_attribute("bustrail.stored_size", int(record.stored_size or 0))
            self._stored(record, seconds)
            return record

    def _fallback(
        self,
        ctx: TransactionContext,
        payload: bytes,
        build_inline: InlineBuilder,
        client_cap: int | None,
        exc: StoreError,
        base: dict[str, Any],
    ) -> Delivery:
        why = "breaker open" if isinstance(exc, CircuitOpenError) else str(exc)
        message = build_inline(Route.FALLBACK, str(base["checksum"]))
        decision = decide_fallback(
            self.policy, message_size=len(message), client_cap=client_cap, store_error=why
        )
        tx_id, _ = ctx.ensure_id()
        self.metrics.fallback(
            "delivered" if decision.action is Action.FALLBACK else str(decision.error_kind)
        )
        if decision.action is Action.FALLBACK:
            return Delivery(
                Action.FALLBACK,
                tx_id,
                Route.FALLBACK,
                int(base["size"]),
                str(base["checksum"]),
                message=message,
            )
        return self._refuse(
            ctx,
            Action.FAIL,
            Route.FALLBACK,
            Status.FAILED,
            decision.error_kind,
            decision.reason,
            base,
        )

    def _refuse(
        self,
        ctx: TransactionContext,
        action: Action,
        route: Route,
        status: Status,
        error_kind: str | None,
        reason: str,
        base: dict[str, Any],
    ) -> Delivery:
        self._final(ctx, route, status, error_kind=error_kind, error=reason, **base)
        tx_id, _ = ctx.ensure_id()
        return Delivery(
            action,
            tx_id,
            route,
            int(base["size"]),
            str(base["checksum"]),
            error_kind=error_kind,
            error=reason,
        )

    # -- breaker events -------------------------------------------------------------------
    def _on_transition(self, transition: Transition) -> None:
        self.metrics.breaker_transition(transition)
        event_id, at = new_transaction_id()
        log.warning(
            "= breaker %s: %s -> %s (%s, failure rate %.0f%%)",
            transition.breaker,
            transition.from_state.value,
            transition.to_state.value,
            transition.reason,
            transition.failure_rate * 100,
        )
        self.audit.submit_breaker_event(
            {
                "id": event_id,
                "at": at,
                "breaker": transition.breaker,
                "daemon_id": self.daemon_id,
                "from_state": transition.from_state.value,
                "to_state": transition.to_state.value,
                "reason": transition.reason,
                "failure_rate": transition.failure_rate,
                "consecutive_failures": transition.consecutive_failures,
            }
        )
