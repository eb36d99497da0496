"""The daemon's parts, wired from settings: database, store, breaker, audit, bus, tools.

Start-up order matters: the schema is checked (the embedded SQLite file is created on
first use; PostgreSQL must have been upgraded), a leftover audit spool is replayed, and
transactions a crashed daemon left ``pending`` are failed as ``abandoned``, all before
the first connection is accepted. Shutdown stops new calls, lets calls in flight finish
(up to a grace period, then cancels them with a clear error), and flushes the audit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bus.audit import AuditWriter
from bus.breaker import CircuitBreaker
from bus.errors import StoreError
from bus.findings import open_findings_by_kind
from bus.messagebus import MessageBus
from bus.metrics import Metrics
from bus.models import Transaction
from bus.preview import Preview, PreviewPolicy, build_preview
from bus.router import RoutingPolicy
from bus.schema import require_schema, upgrade
from bus.settings import Settings
from bus.store import PayloadStore, StoreConfig
from bus.telemetry import Telemetry, untraced
from daemon.gateway import Gateway, UpstreamSpec
from daemon.tools import ToolRegistry, ToolResult

__all__ = ["CachedFindings", "Runtime"]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return version("bustrail")
    except PackageNotFoundError:
        return "0+unknown"


class CachedFindings:
    """Open findings by kind for the ``bustrail_findings_open`` gauge, read from the
    database at most every ``seconds`` and never while a scrape waits: a stale value is
    served while a worker thread refreshes it. A failed read makes the next scrapes fail
    (the metrics report the source down) until a read succeeds again."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, int]],
        seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: dict[str, int] | None = None
        self._error: Exception | None = None
        self._read_at = float("-inf")
        self._refreshing = False

    def refresh(self) -> None:
        """Read now (in the caller's thread)."""
        try:
            with untraced():
                value = dict(self._read())
        except Exception as exc:
            with self._lock:
                self._error, self._read_at, self._refreshing = exc, self._clock(), False
            log.debug("open findings could not be read: %r", exc)
            return
        with self._lock:
            self._value, self._error = value, None
            self._read_at, self._refreshing = self._clock(), False

    def __call__(self) -> Mapping[str, int]:
        with self._lock:
            if self._clock() - self._read_at >= self._seconds and not self._refreshing:
                self._refreshing = True
                threading.Thread(
                    target=self.refresh, name="bustrail-findings-gauge", daemon=True
                ).start()
            if self._error is not None:
                raise StoreError(f"open findings unknown: {self._error}")
            if self._value is None:
                raise StoreError("open findings not read yet")
            return dict(self._value)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        tools: ToolRegistry,
        *,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
        upstreams: list[UpstreamSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.tools = tools
        self.version = _version()
        self.telemetry = telemetry or Telemetry.from_exporter(settings.bustrail_trace_exporter)
        self.metrics = metrics or Metrics()
        self.db = settings.database()
        self.store = PayloadStore(self.db, StoreConfig.from_settings(settings))
        self.policy = RoutingPolicy.from_settings(settings)
        self.breaker = (
            CircuitBreaker(
                "store",
                settings.breaker_config(),
                is_failure=lambda exc: isinstance(exc, StoreError),
            )
            if settings.circuit_breaker_enabled
            else None
        )
        self.audit = AuditWriter(
            self.db,
            settings.bustrail_spool_dir,
            batch_size=settings.bustrail_audit_batch_size,
            flush_seconds=settings.bustrail_audit_flush_seconds,
        )
        self.bus = MessageBus(
            self.store,
            self.audit,
            self.policy,
            self.breaker,
            metrics=self.metrics,
            telemetry=self.telemetry,
        )
        self.telemetry.instrument_engine(self.db.engine)
        self.metrics.watch_audit(self.audit.stats)
        if self.breaker is not None:
            self.metrics.watch_breaker(self.breaker.snapshot)
        self.findings_gauge = CachedFindings(lambda: open_findings_by_kind(self.db))
        self.metrics.watch_findings(self.findings_gauge)
        self.tokens = settings.auth_tokens()
        self.preview_policy = PreviewPolicy(
            head_bytes=settings.bustrail_preview_head_bytes,
            tail_bytes=settings.bustrail_preview_tail_bytes,
        )
        self.upstreams = upstreams or []
        self.gateway: Gateway | None = None
        self.sessions: set[Any] = set()
        self.detached_calls: set[asyncio.Task[None]] = set()  # of connections now closed
        self.shutting_down = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_database)
        await asyncio.to_thread(self.findings_gauge.refresh)  # the first scrape has a value
        await asyncio.to_thread(self.audit.start)
        if self.upstreams:
            self.gateway = Gateway(
                self.upstreams,
                self.tools,
                metrics=self.metrics,
                telemetry=self.telemetry,
                timeout=self.settings.bustrail_tool_timeout_seconds,
                on_tools_changed=self.tools_changed,
            )
            await self.gateway.start()
        abandoned = await asyncio.to_thread(self._recover)
        if abandoned:
            log.warning(
                "recovery: %d transaction(s) left pending by a crash marked failed", abandoned
            )

    async def tools_changed(self, timeout: float = 5.0) -> None:
        """Tell every client that has initialized that the tool list changed (MCP's
        ``notifications/tools/list_changed``); a client too slow to take it within
        ``timeout`` or already gone just misses it."""
        note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}

        async def tell(session: Any) -> None:
            try:
                await asyncio.wait_for(session.send(note), timeout)
            except Exception as exc:
                log.info("tools changed: session %s not told: %r", session.id[:8], exc)

        told = [s for s in list(self.sessions) if s.initialized]
        await asyncio.gather(*(tell(s) for s in told))
        log.info("tools changed: told %d client(s)", len(told))

    def _recover(self) -> int:
        with untraced():
            return self.store.abandon_pending(self.settings.bustrail_abandon_pending_seconds)

    def _prepare_database(self) -> None:
        with untraced():
            self._check_schema()

    def _check_schema(self) -> None:
        if self.db.is_postgres:
            require_schema(self.db)
        else:
            upgrade(self.db)  # the embedded file needs no separate step

    async def drain(self, grace_seconds: float = 30.0) -> None:
        """Stop taking calls; let those in flight finish, then cancel the rest (each
        gets a clear error and an audit record)."""
        self.shutting_down = True
        tasks = [t for s in list(self.sessions) for t in s.calls()]
        tasks += self.detached_calls
        if not tasks:
            return
        log.info("shutdown: waiting up to %gs for %d call(s) in flight", grace_seconds, len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("shutdown: cancelled %d call(s) still running", len(pending))
            await asyncio.wait(pending, timeout=5)

    def detach(self, session: Any) -> int:
        """A closed connection's calls still running: they finish on their own, and the
        shutdown drain waits for them like any other (else they would die unrecorded
        when the loop closes). How many there are."""
        running = session.calls()
        for task in running:
            self.detached_calls.add(task)
            task.add_done_callback(self.detached_calls.discard)
        return len(running)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Drain, then flush the audit and close the database."""
        await self.drain(grace_seconds)
        if self.gateway is not None:
            await self.gateway.stop()
        await asyncio.to_thread(self.audit.close)
        self.telemetry.shutdown()
        self.db.dispose()

    # -- auth -----------------------------------------------------------------------------
    def tenant_for(self, token: str | None) -> str | None:
        """The tenant a token belongs to; ``default`` when auth is off."""
        if self.settings.bustrail_auth_disabled:
            return "default"
        if not token:
            return None
        return self.tokens.get(token)

    # -- responses ------------------------------------------------------------------------
    def claim_check(
        self,
        record: Transaction,
        result: ToolResult,
        preview: PreviewPolicy | None = None,
        shown: Preview | None = None,
    ) -> dict[str, Any]:
        """The MCP result for a stored payload: a preview for agents (``shown``, when it
        was made already), a resource_link, and where to get the whole."""
        uri = f"bustrail://transactions/{record.id}"
        download = f"/v1/transactions/{record.id}"
        if shown is None:
            shown = build_preview(result.data, result.mime_type, preview or self.preview_policy)
        how = f"read it with resources/read {uri} (if it fits one message) or GET {download}"
        if shown.text and shown.truncated:
            notice = (
                f"[bustrail] Result cut: {record.size:,} bytes in all, stored as {uri}; "
                f"this preview shows part of it ({shown.shape}). For the whole, {how}."
            )
        elif shown.text:
            notice = f"[bustrail] Result stored as {uri} ({record.size:,} bytes); {how}."
        else:
            notice = (
                f"[bustrail] Result of {record.size:,} bytes stored as {uri} (no preview); {how}."
            )
        content: list[dict[str, Any]] = [{"type": "text", "text": notice}]
        if shown.text:
            content.append({"type": "text", "text": shown.text})
        content.append(
            {
                "type": "resource_link",
                "uri": uri,
                "name": f"{record.tool or 'result'}-{record.id}",
                "mimeType": result.mime_type,
                "size": record.size,
                "description": f"Stored result of {record.tool}",
            }
        )
        return {
            "content": content,
            "isError": False,
            "_meta": {
                "bustrail": {
                    "transaction_id": str(record.id),
                    "route": "store",
                    "size": record.size,
                    "stored_size": record.stored_size,
                    "compression": record.compression.value,
                    "checksum": f"sha256:{record.checksum}",
                    "expires_at": record.expires_at.isoformat() if record.expires_at else None,
                    "download": download,
                    "preview": {"shape": shown.shape, "truncated": shown.truncated},
                }
            },
        }
