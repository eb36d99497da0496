"""Running the daemon under uvicorn, with a graceful SIGTERM.

On the first SIGTERM/SIGINT the daemon stops taking new calls (they get a clear
"shutting down" error), lets calls in flight finish (``--grace`` seconds, then cancels
them with an error), and only then lets uvicorn close connections; the lifespan's end
flushes the audit writer. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from bus.errors import SettingsError
from bus.settings import Settings
from daemon.app import create_app
from daemon.gateway import UpstreamSpec, parse_upstream
from daemon.runtime import Runtime
from daemon.tools import ToolRegistry, builtin_registry

__all__ = ["build_registry", "serve_forever"]

log = logging.getLogger(__name__)


def upstream_specs(settings: Settings, cli: list[str]) -> list[UpstreamSpec]:
    """--upstream NAME=COMMAND flags plus BUSTRAIL_UPSTREAMS; a bad one names itself."""
    specs = []
    entries = [*cli, *(f"{n}={c}" for n, c in settings.upstream_commands().items())]
    for entry in entries:
        try:
            specs.append(parse_upstream(entry))
        except ValueError as exc:
            raise SettingsError([f"--upstream: {exc}"]) from exc
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SettingsError([f"--upstream: names must be unique, got {names}"])
    return specs


def build_registry(settings: Settings, tool_modules: list[str]) -> ToolRegistry:
    registry = builtin_registry(settings.bustrail_files_root)
    for module in tool_modules:
        try:
            registry.load_module(module)
        except (ImportError, ValueError, TypeError) as exc:
            raise SettingsError([f"--tools {module}: {exc}"]) from exc
    try:
        registry.load_entry_points()
    except ImportError as exc:
        raise SettingsError([str(exc)]) from exc
    return registry


def check_auth(settings: Settings) -> None:
    if not settings.bustrail_auth_disabled and not settings.auth_tokens():
        raise SettingsError(
            [
                "BUSTRAIL_AUTH_TOKENS is empty: set it (token=tenant,...) or set "
                "BUSTRAIL_AUTH_DISABLED=true for local use"
            ]
        )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.grace = grace
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        log.info(
            "= signal %s: draining calls in flight (up to %gs)",
            signal.Signals(sig).name,
            self.grace,
        )
        loop = asyncio.get_event_loop()
        self._draining = loop.create_task(self._drain())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything made so far (modules, the runtime, its pools) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it.
        # Without this, garbage collection was ~18% of a small call's time (bench_daemon).
        gc.freeze()
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                # Scripts (and tests) read this line to find a --port 0 daemon.
                print(f"bustrail listening on ws://{host}:{port}/ws", flush=True)

    async def _drain(self) -> None:
        try:
            await self.runtime.drain(self.grace)
        finally:
            self.should_exit = True


def serve_forever(
    settings: Settings,
    *,
    host: str,
    port: int,
    tool_modules: list[str],
    upstreams: list[str] | None = None,
    log_level: str = "info",
    grace_seconds: float = 30.0,
) -> None:
    check_auth(settings)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = Runtime(
        settings,
        build_registry(settings, tool_modules),
        upstreams=upstream_specs(settings, upstreams or []),
    )
    config = uvicorn.Config(
        create_app(runtime),
        host=host,
        port=port,
        log_level=log_level,
        # uvloop (a dependency where it builds): ~10% more calls a second than the
        # asyncio loop (bench_daemon). "auto" falls back to asyncio without it.
        loop="auto",
        ws="websockets-sansio",
        ws_max_size=settings.websocket_max_message_bytes,
        ws_per_message_deflate=False,
        lifespan="on",
        timeout_graceful_shutdown=grace_seconds + 10,
    )
    server = _Server(config, runtime, grace_seconds)
    server.run()
