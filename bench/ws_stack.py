"""Which server stack should the daemon use? Measure it.

Runs, each in its own subprocess on an ephemeral 127.0.0.1 port, the same echo
endpoint on:

* ``websockets``: the bare ``websockets`` asyncio server (the baseline);
* ``uvicorn_<ws>``: Starlette on uvicorn, for each WebSocket implementation this
  uvicorn ships and can import (``websockets``, ``websockets-sansio``, ``wsproto``).

One ``websockets`` asyncio client (in this process) measures, for every server:
round trips per second of a 1 KiB text message on 1 connection and on 8
connections at once, and the latency of one 5 MiB text message echoed (max_size
raised on both sides). Each server prints a ratio against the bare ``websockets``
server measured in the same run: the geometric mean of the three speed ratios
(round trips / s, and baseline latency / latency), so > 1 means faster.

A second table streams HTTP through the same servers: a 100 MiB download and a
50 MiB upload, Starlette on uvicorn with ``h11`` and ``httptools`` (ratio against
``h11``), and what the bare ``websockets`` server can do through ``process_request``.

    python bench/ws_stack.py              # both tables, about 30-40 s
    python bench/ws_stack.py --deflate    # let the client negotiate permessage-deflate
    python bench/ws_stack.py --quick      # shorter runs, for a smoke test

Needs ``websockets``, ``starlette`` and ``uvicorn``; ``wsproto`` and ``httptools``
add variants when installed. Servers are stopped by closing their stdin, so none
outlives this script.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["main"]

HOST = "127.0.0.1"
MAX_MESSAGE = 16 * 1024 * 1024  # raised on every side so that 5 MiB passes
SMALL = 1024
LARGE = 5 * 1024 * 1024
DOWNLOAD = 100 * 1024 * 1024
UPLOAD = 50 * 1024 * 1024
CHUNK = 64 * 1024  # what a streamed store read or a client write hands over at a time
CONNECTIONS = 8
WS_BUDGET = 35.0  # seconds; no new WebSocket round starts after it (runs stay < 60 s)
START_TIMEOUT = 20.0
STEP_TIMEOUT = 30.0
REQUIRED = ("websockets", "starlette", "uvicorn")
UVICORN_WS = ("websockets", "websockets-sansio", "wsproto")
UVICORN_HTTP = ("h11", "httptools")


def _text(size: int, seed: int) -> str:
    """ASCII like a JSON tool result carrying base64: deflate gains ~25 %, not 99 %."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


# --------------------------------------------------------------------------- servers
# Each runs in a child process: `ws_stack.py --serve KIND [--ws W] [--http H]`.
# It prints "PORT <n>" once it listens and exits when its stdin closes.


def _wait_for_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def watch() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, daemon=True).start()


def _announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


async def _serve_websockets() -> None:
    import http

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path.startswith("/v1/transactions/"):
            # Response.body is bytes: the whole payload must sit in memory first.
            headers = Headers({"Content-Type": "application/octet-stream"})
            return Response(200, "OK", headers, bytes(DOWNLOAD))
        if path != "/ws":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        return None

    stop = asyncio.Event()
    _wait_for_stdin_eof(asyncio.get_running_loop(), stop)
    async with serve(
        echo,
        HOST,
        0,
        subprotocols=["mcp"],  # type: ignore[list-item]
        max_size=MAX_MESSAGE,
        process_request=process_request,
    ) as server:
        _announce(server.sockets[0].getsockname()[1])
        await stop.wait()


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="mcp" if "mcp" in offered else None)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])

    chunk = bytes(CHUNK)

    async def download(request: Request) -> StreamingResponse:
        async def body() -> Any:
            for _ in range(DOWNLOAD // CHUNK):
                yield chunk

        headers = {"Content-Length": str(DOWNLOAD)}
        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)

    async def upload(request: Request) -> JSONResponse:
        size = 0
        async for part in request.stream():
            size += len(part)
        return JSONResponse({"size": size}, status_code=201)

    return Starlette(
        routes=[
            WebSocketRoute("/ws", echo),
            Route("/v1/transactions/{tid}", download),
            Route("/v1/transactions", upload, methods=["POST"]),
        ]
    )


async def _serve_uvicorn(ws: str, http: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        _starlette_app(),
        ws=ws,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
        ws_max_size=MAX_MESSAGE,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    stop = asyncio.Event()
    _wait_for_stdin_eof(asyncio.get_running_loop(), stop)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving  # raises why it could not start
            return
        await asyncio.sleep(0.01)
    _announce(sock.getsockname()[1])
    await stop.wait()
    server.should_exit = True
    await serving


def serve_child(kind: str, ws: str, http: str) -> None:
    # The legacy uvicorn/websockets implementation warns on import; the table says so.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message="The `websockets` implementation is deprecated")
    if kind == "websockets":
        asyncio.run(_serve_websockets())
    else:
        asyncio.run(_serve_uvicorn(ws, http))


@dataclass
class Server:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> None:
        script = os.path.abspath(__file__)
        self.process = subprocess.Popen(
            [sys.executable, script, "--serve", *self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = _readline_with_timeout(self.process, START_TIMEOUT)
        if not line.startswith(b"PORT "):
            self.stop()
            raise RuntimeError(f"{self.name}: server did not start (said {line!r})")
        self.port = int(line.split()[1])

    def peak_rss_mib(self) -> float:
        """The child's high-water resident memory (Linux), to show what buffering costs."""
        if self.process is None:
            return math.nan
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return math.nan

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # the child's signal to shut down
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _readline_with_timeout(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    result: list[bytes] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else b""


# --------------------------------------------------------------------------- WebSocket
@dataclass
class WsResult:
    name: str
    note: str = ""
    rps_one: float = math.nan
    rps_many: float = math.nan
    large_ms: float = math.nan
    error: str = ""


def _connect(uri: str, compression: str | None) -> Any:
    from websockets.asyncio.client import connect

    return connect(
        uri,
        subprotocols=["mcp"],  # type: ignore[list-item]
        compression=compression,
        max_size=MAX_MESSAGE,
        ping_interval=None,
    )


async def _round_trips(
    uri: str, connections: int, seconds: float, compression: str | None
) -> float:
    message = _text(SMALL, 1)
    async with contextlib.AsyncExitStack() as stack:
        # Open and warm every connection before the clock starts.
        sockets = [
            await stack.enter_async_context(_connect(uri, compression)) for _ in range(connections)
        ]
        for ws in sockets:
            await ws.send(message)
            await ws.recv()

        async def loop(ws: Any, deadline: float) -> int:
            count = 0
            while time.perf_counter() < deadline:
                await ws.send(message)
                if await ws.recv() != message:
                    raise RuntimeError("echo mismatch")
                count += 1
            return count

        started = time.perf_counter()
        counts = await asyncio.gather(*(loop(ws, started + seconds) for ws in sockets))
        return sum(counts) / (time.perf_counter() - started)


async def _large_echo(uri: str, repeats: int, compression: str | None) -> float:
    message = _text(LARGE, 2)
    timings: list[float] = []
    async with _connect(uri, compression) as ws:
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            await ws.send(message)
            echoed = await ws.recv()
            elapsed = time.perf_counter() - started
            if echoed != message:
                raise RuntimeError("echo mismatch")
            if attempt:  # the first one warms buffers up
                timings.append(elapsed)
    return statistics.median(timings) * 1000.0


def measure_ws(
    server: Server, result: WsResult, seconds: float, repeats: int, compression: str | None
) -> None:
    """One round against one server; keeps the best of each metric across rounds."""
    uri = f"ws://{HOST}:{server.port}/ws"

    async def run() -> tuple[float, float, float]:
        one = await asyncio.wait_for(_round_trips(uri, 1, seconds, compression), STEP_TIMEOUT)
        many = await asyncio.wait_for(
            _round_trips(uri, CONNECTIONS, seconds, compression), STEP_TIMEOUT
        )
        large = await asyncio.wait_for(_large_echo(uri, repeats, compression), STEP_TIMEOUT)
        return one, many, large

    try:
        one, many, large = asyncio.run(run())
    except Exception as exc:  # a variant that fails is reported, not hidden
        result.error = f"{type(exc).__name__}: {exc}"
        return
    result.rps_one = max(one, result.rps_one, key=_not_nan)
    result.rps_many = max(many, result.rps_many, key=_not_nan)
    result.large_ms = min(large, result.large_ms, key=lambda v: math.inf if math.isnan(v) else v)


def _not_nan(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def ws_ratio(result: WsResult, base: WsResult) -> float:
    parts = [
        result.rps_one / base.rps_one,
        result.rps_many / base.rps_many,
        base.large_ms / result.large_ms,
    ]
    return math.exp(sum(math.log(p) for p in parts) / len(parts))


# --------------------------------------------------------------------------- HTTP
@dataclass
class HttpResult:
    name: str
    download_mbs: float = math.nan
    upload_mbs: float = math.nan
    peak_rss_mib: float = math.nan
    notes: list[str] = field(default_factory=list)


async def _http_download(port: int) -> float:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        started = time.perf_counter()
        writer.write(b"GET /v1/transactions/bench HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"download answered {head.splitlines()[0]!r}")
        received = 0
        while received < DOWNLOAD:
            data = await reader.read(1 << 20)
            if not data:
                raise RuntimeError(f"download ended after {received} bytes")
            received += len(data)
        return DOWNLOAD / 2**20 / (time.perf_counter() - started)
    finally:
        writer.close()


async def _http_upload(port: int) -> float:
    reader, writer = await asyncio.open_connection(HOST, port)
    chunk = bytes(1 << 20)
    try:
        started = time.perf_counter()
        writer.write(
            b"POST /v1/transactions HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % UPLOAD
        )
        for _ in range(UPLOAD // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise RuntimeError("connection closed without an HTTP response") from exc
        if not head.startswith(b"HTTP/1.1 201"):
            raise RuntimeError(f"upload answered {head.splitlines()[0]!r}")
        return UPLOAD / 2**20 / (time.perf_counter() - started)
    finally:
        writer.close()


def measure_http(server: Server, repeats: int) -> HttpResult:
    result = HttpResult(server.name)

    async def best(step: Callable[[int], Any]) -> float:
        rates = [await asyncio.wait_for(step(server.port), STEP_TIMEOUT) for _ in range(repeats)]
        return max(rates)

    for label, step in (("download", _http_download), ("upload", _http_upload)):
        try:
            rate = asyncio.run(best(step))
        except Exception as exc:  # TimeoutError included
            result.notes.append(f"{label}: {exc}")
            continue
        setattr(result, f"{label}_mbs", rate)
    result.peak_rss_mib = server.peak_rss_mib()
    return result


# --------------------------------------------------------------------------- report
def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _uvicorn_ws_variants() -> list[tuple[str, str]]:
    import uvicorn.config

    variants = []
    for ws in UVICORN_WS:
        if ws not in uvicorn.config.WS_PROTOCOLS:
            continue
        needs = "wsproto" if ws == "wsproto" else "websockets"
        if importlib.util.find_spec(needs) is None:
            continue
        variants.append((ws, "deprecated in uvicorn" if ws == "websockets" else ""))
    return variants


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("websockets", "starlette", "uvicorn", "wsproto", "httptools", "h11"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def run_ws(args: argparse.Namespace) -> None:
    compression = "deflate" if args.deflate else None
    servers = [Server("websockets", ["websockets"])]
    notes = {"websockets": "baseline"}
    for ws, note in _uvicorn_ws_variants():
        name = f"uvicorn_{ws.replace('-', '_')}"
        servers.append(Server(name, ["uvicorn", "--ws", ws, "--http", "auto"]))
        notes[name] = note
    results = [WsResult(server.name, note=notes[server.name]) for server in servers]
    try:
        for server, result in zip(servers, results, strict=True):
            try:
                server.start()
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
        # Rounds interleave the variants so that a noisy moment does not favour one;
        # after the first, a round starts only while the time budget lasts.
        for round_number in range(args.rounds):
            if round_number and time.perf_counter() > args.ws_deadline:
                print(f"(time budget: stopped after {round_number} rounds)")
                break
            for server, result in zip(servers, results, strict=True):
                if not result.error:
                    measure_ws(server, result, args.seconds, args.repeats, compression)
    finally:
        for server in servers:
            server.stop()

    mode = "permessage-deflate" if compression else "no compression"
    print(f"\nWebSocket echo ({mode}; best of {args.rounds} interleaved rounds;")
    print(f"1 KiB text round trips for {args.seconds:.1f} s; 5 MiB echo median of {args.repeats})")
    header = (
        f"{'variant':<28} {'rt/s 1 conn':>12} {'rt/s 8 conns':>13} {'5 MiB ms':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    base = results[0]
    ratios = {}
    for result in results:
        ok = not result.error and not base.error
        ratio = ratios[result.name] = ws_ratio(result, base) if ok else math.nan
        cells = [
            f"{result.name:<28}",
            f"{_fmt(result.rps_one, '.0f'):>12}",
            f"{_fmt(result.rps_many, '.0f'):>13}",
            f"{_fmt(result.large_ms, '.1f'):>9}",
            f"{_fmt(ratio, '.2f'):>6}",
            f" {result.note}" + (f" ERROR {result.error}" if result.error else ""),
        ]
        print(" ".join(cells).rstrip())
    for result in results[1:]:
        if not math.isnan(ratios[result.name]):
            ratio = ratios[result.name]
            print(f"BENCH ws_stack_{result.name} ratio={ratio:.3f} target=none info")


def run_http(args: argparse.Namespace) -> None:
    servers = [
        Server(f"uvicorn_{http}", ["uvicorn", "--ws", "auto", "--http", http])
        for http in UVICORN_HTTP
        if http != "httptools" or importlib.util.find_spec("httptools") is not None
    ]
    servers.append(Server("websockets_process_request", ["websockets"]))
    results = []
    for server in servers:
        try:
            server.start()
            results.append(measure_http(server, args.repeats))
        except Exception as exc:
            results.append(HttpResult(server.name, notes=[f"{type(exc).__name__}: {exc}"]))
        finally:
            server.stop()

    sizes = f"{DOWNLOAD >> 20} MiB GET, {UPLOAD >> 20} MiB POST"
    print(f"\nHTTP streaming (best of {args.repeats}; {sizes}; server peak RSS)")
    header = f"{'variant':<28} {'GET MiB/s':>10} {'POST MiB/s':>11} {'RSS MiB':>8}"
    print(header)
    print("-" * len(header))
    for result in results:
        cells = [
            f"{result.name:<28}",
            f"{_fmt(result.download_mbs, '.0f'):>10}",
            f"{_fmt(result.upload_mbs, '.0f'):>11}",
            f"{_fmt(result.peak_rss_mib, '.0f'):>8}",
            f" {'; '.join(result.notes)}",
        ]
        print(" ".join(cells).rstrip())
    base = results[0]
    for result in results[1:]:
        if result.name.startswith("uvicorn_") and not result.notes and not base.notes:
            ratio = math.sqrt(
                (result.download_mbs / base.download_mbs) * (result.upload_mbs / base.upload_mbs)
            )
            print(f"BENCH ws_stack_http_{result.name} ratio={ratio:.3f} target=none info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deflate", action="store_true", help="client offers permessage-deflate")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP streaming table")
    parser.add_argument("--serve", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--ws", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        serve_child(args.serve, args.ws, args.http)
        return 0

    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"ws_stack: needs {', '.join(missing)} (pip install websockets starlette uvicorn;"
            " wsproto and httptools add variants)",
            file=sys.stderr,
        )
        return 2
    args.rounds = 1 if args.quick else 3
    args.seconds = 0.5 if args.quick else 1.0
    # A deflated 5 MiB echo takes ~0.3-0.5 s here: fewer of them keep the run < 60 s.
    args.repeats = 1 if args.quick or args.deflate else 3
    started = time.perf_counter()
    args.ws_deadline = started + WS_BUDGET
    print(f"ws_stack on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}: {_versions()}")
    run_ws(args)
    if not args.no_http:
        args.repeats = 1 if args.quick else 3
        run_http(args)
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
