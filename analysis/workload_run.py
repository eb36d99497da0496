"""Running the workload: its daemons, its phases, and the record of what it injected.

:class:`Runner` runs the phases in order (see :mod:`analysis.workload` for what each
fault is and how it is made): on the main daemon a baseline of the probed tools, then
``since``, the traffic with the per-call faults and the probes again; then the phases that
need a daemon of their own (a short TTL, store outages, crashes, tracing off). Daemons a
later phase needs start while an earlier one runs, and stop in the background; a daemon
that must recover from a crash starts only once the others have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from analysis.workload_faults import (
    DaemonProcess,
    StoreOutage,
    WorkloadClient,
    WorkloadError,
    check_injected,
    daemon_url,
    flip_chunk_byte,
    pending_store_row,
    replay_spool,
    transaction_ids_by_request,
)
from analysis.workload_mix import FAULTS, Call, fault_call, traffic_call
from analysis.workload_tools import UNKNOWN_ACCOUNT_PREFIX
from bus.db import Database, utcnow
from bus.schema import require_schema
from daemon.client import CallResult, ClientError, RPCError

if TYPE_CHECKING:
    from analysis.workload import WorkloadConfig

__all__ = ["GRACE_SECONDS", "RunRecord", "Runner"]

MIB = 1024 * 1024
THRESHOLD_BYTES = 256 * 1024  # the workload daemons' MESSAGE_BUS_THRESHOLD_BYTES
TENANTS = ("acme", "globex", "initech")
CALL_TIMEOUT = 120.0
SLOW_SHARDS = 150  # search_orders at 2 ms a shard: 300 ms instead of 8 ms
EXPIRY_TTL_SECONDS = 1.0
OPEN_SECONDS = 0.5  # the outage daemon's CIRCUIT_BREAKER_OPEN_SECONDS
CRASH_SETTINGS = {"message_bus_chunk_bytes": 64 * 1024}  # many small writes: a long store
GRACE_SECONDS = 1.0  # the graces to analyse a run with (orphan, stuck, lost, cleanup)


@dataclass
class RunRecord:
    """What a run did: its window, and per detector kind the transactions injected."""

    started_at: datetime
    since: datetime
    finished_at: datetime
    ready_at: datetime  # every grace has passed: analyse from here on
    truth: dict[str, list[str]]
    phases: list[dict[str, Any]]
    calls: int
    notes: list[str]
    database_url: str


class _Progress:
    """A rich progress bar on stderr (or nothing), advanced once per call."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.console = Console(stderr=True)
        self._bar: Progress | None = None
        if enabled:
            self._bar = Progress(
                TextColumn("[bold]{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("calls"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("start", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def phase(self, name: str, detail: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=name)
            self._bar.console.print(f"[dim]load[/dim] {name}: {detail}")

    def label(self, text: str) -> None:
        """What the bar shows once the phases are over (it otherwise keeps the last
        phase's name, as if that phase had made every call)."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


class Runner:
    """One run: ``await Runner(config, workdir).run()`` starts and stops every daemon it
    needs (their logs and spools in ``workdir``) and returns the :class:`RunRecord`."""

    def __init__(self, config: WorkloadConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.url = daemon_url(config.database_url)
        self.db = Database(self.url)
        self.tokens = {t: f"wl-{t}-{secrets.token_hex(8)}" for t in TENANTS}
        self.truth: dict[str, list[str]] = {kind: [] for kind in FAULTS.values()}
        self.phases: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.calls_made = 0
        self.daemons: list[DaemonProcess] = []
        self.starting: list[asyncio.Task[DaemonProcess]] = []
        self.stopping: list[asyncio.Task[None]] = []
        self.spawned = 0
        self.next: dict[str, asyncio.Task[DaemonProcess]] = {}  # phase -> its daemon
        self.recover_next = False  # the next daemon fails what a crash left pending
        self.outage = StoreOutage(self.url)
        self.progress = _Progress(config.progress, self._planned_calls())
        self.request_seq = 0
        self.latest_ready = utcnow()
        # (fault, tenant, request id): calls whose answer never came, found by request id
        self._pending_lookups: list[tuple[str, str, str]] = []

    # -- plan --------------------------------------------------------------------------------
    def _probe_counts(self) -> tuple[int, int]:
        """Calls of lookup_account and search_orders in the current window: few enough
        that the injected failures and slow calls move the error rate and the p95."""
        c = self.config
        errors, slow = c.count("errors"), c.count("slow")
        lookups = (
            max(c.min_calls, min(c.probe_calls, 5 * errors), errors) if errors else c.probe_calls
        )
        searches = max(c.min_calls, min(c.probe_calls, 5 * slow), slow) if slow else c.probe_calls
        return lookups, searches

    def _outages(self) -> int:
        return max(self.config.count("outage"), 1 if self.config.count("oversize") else 0)

    def _planned_calls(self) -> int:
        c = self.config
        lookups, searches = self._probe_counts()
        outages = self._outages()
        return (
            2 * c.probe_calls
            + c.calls
            + lookups
            + searches
            + sum(c.count(f) for f in ("orphan", "corrupt", "empty", "waste", "disconnect"))
            + 2 * c.count("duplicate")
            + c.count("expiry")
            + c.count("untraced")
            + c.count("crash")
            + outages * 4
            + c.count("oversize")
        )

    # -- daemons -----------------------------------------------------------------------------
    def _env(self, name: str, settings: Mapping[str, Any]) -> dict[str, str]:
        self.spawned += 1
        env = {
            "DATABASE_URL": self.url,
            "BUSTRAIL_SPOOL_DIR": str(self.workdir / f"spool-{self.spawned}-{name}"),
            "BUSTRAIL_AUTH_TOKENS": ",".join(f"{tok}={t}" for t, tok in self.tokens.items()),
            "BUSTRAIL_FILES_ROOT": str(self.workdir),
            "BUSTRAIL_AUDIT_FLUSH_SECONDS": "0.2",
            "MESSAGE_BUS_THRESHOLD_BYTES": str(THRESHOLD_BYTES),
            "BUSTRAIL_TRACE_EXPORTER": "none",
        }
        if self.recover_next:
            env["BUSTRAIL_ABANDON_PENDING_SECONDS"] = "0.3"
            self.recover_next = False
        env.update({k.upper(): str(v) for k, v in settings.items()})
        return env

    def _prestart(self, name: str, **settings: Any) -> asyncio.Task[DaemonProcess]:
        """Start a daemon in the background (its start-up overlaps the phase running)."""
        env = self._env(name, settings)

        async def spawn() -> DaemonProcess:
            daemon = await asyncio.to_thread(DaemonProcess, name, env, self.workdir)
            self.daemons.append(daemon)
            return daemon

        task = asyncio.create_task(spawn())
        self.starting.append(task)
        return task

    async def _start(self, name: str, **settings: Any) -> DaemonProcess:
        return await self._prestart(name, **settings)

    async def _stop(self, daemon: DaemonProcess) -> None:
        """SIGTERM, and check it exited cleanly (its audit is then flushed)."""
        code = await asyncio.to_thread(daemon.stop)
        if code != 0:
            raise WorkloadError(
                f"daemon {daemon.name!r} exited with {code}; its log, {daemon.log_path}:\n"
                f"{daemon.log_tail()}"
            )

    def _stop_later(self, daemon: DaemonProcess) -> None:
        self.stopping.append(asyncio.create_task(self._stop(daemon)))

    async def _all_stopped(self) -> None:
        """Wait for the daemons stopping in the background: their audit is written."""
        stopping, self.stopping = self.stopping, []
        await _gather(*stopping)

    async def _client(self, daemon: DaemonProcess, tenant: str, cap: int = MIB) -> WorkloadClient:
        client = await WorkloadClient.connect(
            daemon.url, token=self.tokens[tenant], max_message_bytes=cap, http_timeout=CALL_TIMEOUT
        )
        assert isinstance(client, WorkloadClient)
        return client

    def _request_id(self, what: str) -> str:
        self.request_seq += 1
        return f"wl-{what}-{self.config.seed}-{self.request_seq}-{uuid.uuid4().hex[:8]}"

    @contextmanager
    def _phase(self, name: str, detail: str) -> Iterator[None]:
        self.progress.phase(name, detail)
        started = utcnow()
        before = self.calls_made
        yield
        self.phases.append(
            {
                "name": name,
                "started_at": started.isoformat(),
                "finished_at": utcnow().isoformat(),
                "calls": self.calls_made - before,
            }
        )

    # -- calls -------------------------------------------------------------------------------
    async def _call(
        self,
        client: WorkloadClient,
        tool: str,
        arguments: dict[str, Any],
        *,
        fetch: bool = True,
        expect_error: bool = False,
    ) -> CallResult:
        """One call; an inline result verified, a stored one fetched and verified."""
        try:
            result = await client.call(tool, arguments, timeout=CALL_TIMEOUT)
        except ClientError as exc:
            raise WorkloadError(f"{tool} {_brief(arguments)}: {exc}") from exc
        self._count()
        if result.is_error != expect_error:
            raise WorkloadError(
                f"{tool} {_brief(arguments)}: expected "
                f"{'an error' if expect_error else 'a result'}, got {result.raw.get('content')}"
            )
        if result.route == "store":
            if fetch:
                await client.fetch(str(result.transaction_id))
        elif not result.is_error:
            result.inline_bytes()
        return result

    def _count(self, n: int = 1) -> None:
        self.calls_made += n
        self.progress.advance(n)

    def _record(self, fault: str, *ids: str | None) -> None:
        for tx_id in ids:
            if tx_id is None:
                raise WorkloadError(f"{fault}: the daemon named no transaction id")
            self.truth[FAULTS[fault]].append(str(tx_id))

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> RunRecord:
        started = utcnow()
        try:
            if self.db.is_postgres:  # the daemon upgrades an SQLite file itself
                await asyncio.to_thread(require_schema, self.db)
            with self.progress:
                since = await self._main_daemon()
                if self.config.count("expiry"):
                    await self._expiry()
                if self._outages():
                    await self._outages_phase()
                for number in range(self.config.count("crash")):
                    await self._crash(number)
                if self.config.count("untraced"):
                    await self._untraced()
                if self.recover_next:
                    with self._phase("recovery", "a daemon restarts after the crash"):
                        await self._stop(await self._daemon("recovery"))
                self.progress.label("stopping")  # daemons flush their audit, spools replay
                await self._all_stopped()
                await self._replay_spools()
                await self._resolve_by_request()
                problems = await asyncio.to_thread(
                    check_injected, self.db, self.truth, slow_ms=SLOW_SHARDS * 1.5
                )
                if problems:
                    raise WorkloadError(
                        "injected faults did not happen as planned:\n  " + "\n  ".join(problems)
                    )
                self.progress.label("done")
        finally:
            await self._shut_down()
        finished = utcnow()
        ready = max(finished, self.latest_ready)
        wait = (ready - utcnow()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        return RunRecord(
            started_at=started,
            since=since,
            finished_at=finished,
            ready_at=ready,
            truth={kind: sorted(ids) for kind, ids in self.truth.items()},
            phases=self.phases,
            calls=self.calls_made,
            notes=self.notes,
            database_url=self.url,
        )

    async def _shut_down(self) -> None:
        """Whatever happened: every daemon started is stopped, the rest released."""
        for task in self.starting:
            with contextlib.suppress(BaseException):
                await task  # a start-up cannot be cancelled half-way; let it finish
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self.stopping, return_exceptions=True)
        for daemon in self.daemons:
            if daemon.alive:
                await asyncio.to_thread(daemon.stop, 30)
        self.outage.close()
        self.db.dispose()

    def _ready_after(self, seconds: float) -> None:
        self.latest_ready = max(self.latest_ready, utcnow() + timedelta(seconds=seconds))

    # -- phase: baseline, traffic, probes (one daemon) -------------------------------------------
    async def _main_daemon(self) -> datetime:
        daemon = await self._start("main")
        probe = await self._client(daemon, TENANTS[0])
        try:
            with self._phase("baseline", f"{self.config.probe_calls} calls of each probed tool"):
                await self._probes(probe, self.config.probe_calls, 0, self.config.probe_calls, 0)
            await asyncio.sleep(0.05)
            since = utcnow()
            await asyncio.sleep(0.05)
            # Later phases' daemons start meanwhile, but never while the probed tools are
            # timed: their start-up would slow the probes down.
            if self.config.count("expiry"):
                self.next["expiry"] = self._prestart(
                    "expiry", message_bus_ttl_hours=EXPIRY_TTL_SECONDS / 3600
                )
            await self._traffic(daemon)
            lookups, searches = self._probe_counts()
            with self._phase(
                "probes",
                f"{self.config.count('errors')} failing of {lookups} lookups, "
                f"{self.config.count('slow')} slow of {searches} searches",
            ):
                await self._probes(
                    probe, lookups, self.config.count("errors"), searches, self.config.count("slow")
                )
        finally:
            await probe.close()
        self._stop_later(daemon)
        if self._outages():
            self.next["outage"] = self._prestart("outage", **self._outage_settings())
        if self.config.count("crash"):
            self.next["crash"] = self._prestart("crash", **CRASH_SETTINGS)
        elif self.config.count("untraced"):
            self.next["untraced"] = self._prestart("untraced", bustrail_trace_exporter="off")
        return since

    async def _daemon(self, name: str, **settings: Any) -> DaemonProcess:
        """The daemon started ahead for this phase, or a new one. One that must recover
        from a crash starts once the others have stopped, so that nothing but the
        crash's transaction is left pending when it fails what is."""
        task = self.next.pop(name, None)
        if task is not None:
            return await task
        if self.recover_next:
            await self._all_stopped()
        return await self._start(name, **settings)

    async def _probes(
        self, client: WorkloadClient, lookups: int, failing: int, searches: int, slow: int
    ) -> None:
        """The probed tools, one call at a time (the daemon otherwise idle, so latency is
        the tool's own). ``failing`` lookups ask for unknown accounts; ``slow`` searches
        fan out to many more shards."""
        fail_at = set(self.rng.sample(range(lookups), failing))
        for i in range(lookups):
            if i in fail_at:
                account = f"{UNKNOWN_ACCOUNT_PREFIX}{self.rng.randrange(10**6):06d}"
                result = await self._call(
                    client, "lookup_account", {"account": account}, expect_error=True
                )
                self._record("errors", result.transaction_id)
            else:
                account = f"acct-{self.rng.randrange(10**6):06d}"
                await self._call(client, "lookup_account", {"account": account})
        slow_at = set(self.rng.sample(range(searches), slow))
        for i in range(searches):
            query = self.rng.choice(("late orders", "refunds eu", "open invoices", "vip"))
            shards = SLOW_SHARDS if i in slow_at else 4
            result = await self._call(client, "search_orders", {"query": query, "shards": shards})
            if i in slow_at:
                self._record("slow", result.transaction_id)

    async def _traffic(self, daemon: DaemonProcess) -> None:
        c = self.config
        plan = [traffic_call(self.rng) for _ in range(c.calls)]
        for fault in ("orphan", "corrupt", "empty", "duplicate", "waste"):
            for number in range(c.count(fault)):
                plan.append(fault_call(fault, number, self.rng))
        self.rng.shuffle(plan)
        clients = max(1, c.clients)
        shares: list[list[Call]] = [plan[i::clients] for i in range(clients)]
        caps = (MIB, 8 * MIB, 32 * MIB)
        detail = f"{len(plan)} calls, {clients} clients of {len(TENANTS)} tenants" + (
            f", {c.count('disconnect')} hang-ups" if c.count("disconnect") else ""
        )
        with self._phase("traffic", detail):
            workers = [
                self._worker(daemon, TENANTS[i % len(TENANTS)], caps[i % len(caps)], share)
                for i, share in enumerate(shares)
            ]
            hangups = [
                self._hang_up(daemon, n, self.rng.uniform(0.1, 2.0), self.rng.choice(TENANTS))
                for n in range(c.count("disconnect"))
            ]
            await _gather(*workers, *hangups)
        self._ready_after(GRACE_SECONDS + 0.5)

    async def _worker(
        self, daemon: DaemonProcess, tenant: str, cap: int, calls: list[Call]
    ) -> None:
        client = await self._client(daemon, tenant, cap)
        try:
            in_flight = asyncio.Semaphore(2)

            async def one(call: Call) -> None:
                async with in_flight:
                    await self._traffic_one(client, tenant, call)

            await _gather(*(one(call) for call in calls))
        finally:
            await client.close()

    async def _traffic_one(self, client: WorkloadClient, tenant: str, call: Call) -> None:
        if call.fault is None:
            await self._call(client, call.tool, call.arguments)
        elif call.fault == "orphan":
            result = await self._call(client, call.tool, call.arguments, fetch=False)
            _expect_route(result, "store", call)
            self._record("orphan", result.transaction_id)
        elif call.fault == "corrupt":
            result = await self._call(client, call.tool, call.arguments, fetch=False)
            _expect_route(result, "store", call)
            tx_id = uuid.UUID(str(result.transaction_id))
            await asyncio.to_thread(flip_chunk_byte, self.db, tenant, tx_id)
            try:
                await client.fetch(tx_id)
            except ClientError:
                self._record("corrupt", str(tx_id))
            else:
                raise WorkloadError(f"transaction {tx_id}: a damaged payload was fetched")
        elif call.fault == "empty":
            result = await self._call(client, call.tool, call.arguments)
            self._record("empty", result.transaction_id)
        elif call.fault == "waste":
            result = await self._call(client, call.tool, call.arguments)
            _expect_route(result, "store", call)
            meta = result.meta
            if meta.get("compression") == "none" or meta["stored_size"] < 0.9 * meta["size"]:
                raise WorkloadError(f"{call.tool}: stored {meta}, not wastefully compressed")
            self._record("waste", result.transaction_id)
        elif call.fault == "duplicate":
            request_id = self._request_id("dup")
            ids = []
            for _ in range(2):
                result = await client.call_as(
                    request_id, call.tool, call.arguments, timeout=CALL_TIMEOUT
                )
                self._count()
                result.inline_bytes()
                ids.append(result.transaction_id)
            self._record("duplicate", *ids)
        else:  # pragma: no cover - the plan makes no other
            raise AssertionError(call.fault)

    async def _hang_up(self, daemon: DaemonProcess, number: int, delay: float, tenant: str) -> None:
        """A client that disconnects while its call runs: the answer cannot be sent."""
        await asyncio.sleep(delay)
        client = await self._client(daemon, tenant)
        request_id = self._request_id("hangup")
        arguments = {"url": f"https://shop.example/slow/{number}", "size": 2000, "latency_ms": 600}
        call = asyncio.create_task(
            client.call_as(request_id, "fetch_page", arguments, timeout=CALL_TIMEOUT)
        )
        await asyncio.sleep(0.15)
        await client.close()
        try:
            await call
        except ClientError:
            pass
        else:
            raise WorkloadError("a call answered although its client had hung up")
        self._count()
        self._pending_lookups.append(("disconnect", tenant, request_id))
        await asyncio.sleep(0.6)  # the daemon tries to answer after the hang-up

    # -- phase: expiry -------------------------------------------------------------------------
    async def _expiry(self) -> None:
        count = self.config.count("expiry")
        with self._phase(
            "expiry", f"{count} results stored for {EXPIRY_TTL_SECONDS:g}s, no cleanup"
        ):
            daemon = await self._daemon("expiry", message_bus_ttl_hours=EXPIRY_TTL_SECONDS / 3600)
            tenant = self.rng.choice(TENANTS)
            client = await self._client(daemon, tenant)
            try:
                for _ in range(count):
                    arguments = {
                        "sql": "select * from sessions",
                        "rows": 1500,
                        "seed": self.rng.randrange(1000),
                    }
                    result = await self._call(client, "run_query", arguments)
                    _expect_route(result, "store", Call("run_query", arguments))
                    self._record("expiry", result.transaction_id)
            finally:
                await client.close()
            self._stop_later(daemon)
        self._ready_after(EXPIRY_TTL_SECONDS + GRACE_SECONDS + 0.5)

    # -- phase: store outages ------------------------------------------------------------------
    async def _outages_phase(self) -> None:
        outages, oversize = self._outages(), self.config.count("oversize")
        backend = "cut TCP proxy" if self.outage.is_postgres else "SQLite write lock held"
        with self._phase("outages", f"{outages} store outage(s) ({backend}), {oversize} too large"):
            daemon = await self._daemon("outage", **self._outage_settings())
            tenant = self.rng.choice(TENANTS)
            client = await self._client(daemon, tenant, cap=4 * MIB)
            flapping = outages >= self.config.flap_opens
            try:
                for number in range(outages):
                    big = oversize // outages + (1 if number < oversize % outages else 0)
                    await self._one_outage(client, number, big, flapping)
            finally:
                await client.close()
            self._stop_later(daemon)
        if outages and not flapping:
            self.notes.append(
                f"{outages} outage(s) open the breaker {outages} time(s); breaker_flapping "
                f"needs {self.config.flap_opens}, so it is not injected"
            )

    def _outage_settings(self) -> dict[str, Any]:
        """A daemon whose store writes fail fast when the store is down (SQLite: after
        0.2 s of waiting for the lock) and whose breaker opens on two failures."""
        return {
            "database_url": self.outage.daemon_database_url,
            "bustrail_sqlite_busy_timeout_seconds": 0.2,
            "circuit_breaker_threshold": 2,
            "circuit_breaker_open_seconds": OPEN_SECONDS,
            "circuit_breaker_half_open_calls": 1,
        }

    async def _one_outage(
        self, client: WorkloadClient, number: int, oversize: int, flapping: bool
    ) -> None:
        """Store down: two results fail to store (the breaker opens), a third is refused
        by the open breaker; all three fall back inline; ``oversize`` results too large
        for this client fail. Store back: after the open period a probe closes it."""
        ids: list[str] = []
        await asyncio.to_thread(self.outage.begin)
        try:
            for i in range(3):
                arguments = {"service": "api", "lines": 4000 + i, "seed": number}
                result = await self._call(client, "fetch_logs", arguments)
                _expect_route(result, "fallback", Call("fetch_logs", arguments))
                # Outage 1's first two calls come before the breaker's first open.
                if number > 0 or i == 2:
                    ids.append(str(result.transaction_id))
            for i in range(oversize):
                arguments = {"width": 2200, "height": 2200, "seed": number * 10 + i}
                try:
                    await client.call("render_chart", arguments, timeout=CALL_TIMEOUT)
                except RPCError as exc:
                    self._count()
                    data = exc.data if isinstance(exc.data, dict) else {}
                    if data.get("error_kind") != "fallback_oversize":
                        raise WorkloadError(f"render_chart during an outage: {exc}") from exc
                    self._record("oversize", data.get("transaction_id"))
                    ids.append(str(data.get("transaction_id")))
                else:
                    raise WorkloadError("a result over the client's cap was sent during an outage")
        finally:
            await asyncio.to_thread(self.outage.end)
        await asyncio.sleep(OPEN_SECONDS + 0.2)
        arguments = {"service": "api", "lines": 3500, "seed": 100 + number}
        result = await self._call(client, "fetch_logs", arguments)
        _expect_route(result, "store", Call("fetch_logs", arguments))
        if flapping:
            self._record("outage", *ids)

    # -- phase: crashes ----------------------------------------------------------------------
    async def _crash(self, number: int) -> None:
        """SIGKILL a daemon while it stores a large result, chunk by small chunk."""
        with self._phase("crash", f"daemon killed mid-store ({number + 1})"):
            for _attempt in range(3):
                daemon = await self._daemon("crash", **CRASH_SETTINGS)
                tenant = self.rng.choice(TENANTS)
                client = await self._client(daemon, tenant, cap=MIB)
                request_id = self._request_id("crash")
                arguments = {"size": 24 * MIB, "settle_ms": 300, "seed": number}
                call = asyncio.create_task(
                    client.call_as(request_id, "snapshot", arguments, timeout=CALL_TIMEOUT)
                )
                try:
                    tx_id = await self._wait_storing(tenant, request_id, call)
                    if tx_id is not None:
                        daemon.kill()
                        self._count()
                        self.recover_next = True
                        self._record("crash", str(tx_id))
                        with contextlib.suppress(ClientError):
                            await call
                        return
                    result = await call  # stored before it could be killed: try again
                    self._count()
                    await client.fetch(str(result.transaction_id))
                finally:
                    if not call.done():
                        call.cancel()
                        with contextlib.suppress(BaseException):
                            await call
                    await client.close()
                    if daemon.alive:
                        await self._stop(daemon)
            raise WorkloadError("could not kill a daemon mid-store in 3 attempts")

    async def _wait_storing(
        self, tenant: str, request_id: str, call: asyncio.Task[CallResult]
    ) -> uuid.UUID | None:
        deadline = time.monotonic() + CALL_TIMEOUT
        while time.monotonic() < deadline and not call.done():
            found = await asyncio.to_thread(pending_store_row, self.db, tenant, request_id)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        return None

    # -- phase: tracing off ----------------------------------------------------------------------
    async def _untraced(self) -> None:
        count = self.config.count("untraced")
        with self._phase("untraced", f"{count} calls with BUSTRAIL_TRACE_EXPORTER=off"):
            daemon = await self._daemon("untraced", bustrail_trace_exporter="off")
            tenant = self.rng.choice(TENANTS)
            client = await self._client(daemon, tenant)
            try:
                for i in range(count):
                    arguments = {"service": "billing", "lines": 20 + i, "seed": i}
                    result = await self._call(client, "fetch_logs", arguments)
                    self._record("untraced", result.transaction_id)
            finally:
                await client.close()
            self._stop_later(daemon)

    # -- after the run -------------------------------------------------------------------------
    async def _replay_spools(self) -> None:
        left = 0
        for daemon in self.daemons:
            left += await asyncio.to_thread(replay_spool, self.db, daemon.spool_dir)
        if left:
            self.notes.append(
                f"{left} audit record(s) stopped daemons left in their spools (written after "
                "a store outage) were replayed, as the daemons' next start would"
            )

    async def _resolve_by_request(self) -> None:
        """Calls whose answer never came: find their transactions by request id."""
        for fault, tenant, request_id in self._pending_lookups:
            found = await asyncio.to_thread(
                transaction_ids_by_request, self.db, tenant, [request_id]
            )
            ids = found.get(request_id, [])
            if len(ids) != 1:
                raise WorkloadError(f"{fault}: request {request_id} has {len(ids)} audit rows")
            self._record(fault, ids[0])
        self._ready_after(GRACE_SECONDS + 0.5)


# -- helpers ----------------------------------------------------------------------------------
def _expect_route(result: CallResult, route: str, call: Call) -> None:
    if result.route != route:
        raise WorkloadError(
            f"{call.tool} {_brief(call.arguments)}: expected route {route}, got {result.route}"
        )


def _brief(arguments: Mapping[str, Any]) -> str:
    return json.dumps(
        {
            k: (v if not isinstance(v, str) or len(v) < 60 else f"<{len(v)} chars>")
            for k, v in arguments.items()
        }
    )


async def _gather(*coroutines: Any) -> None:
    """Run them all; on the first failure cancel the rest, then raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
