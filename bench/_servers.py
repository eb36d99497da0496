"""What the daemon benchmarks share: servers in subprocesses, clients, memory probes.

* :class:`Daemon`: ``bustrail serve --port 0`` in a subprocess on a fresh SQLite file
  (auth off, everything else as by default: audit, metrics, tracing without export);
* :class:`BareServer`: the bare ``websockets`` asyncio server in a subprocess, the
  baseline: it echoes every frame, or answers a ``cached_json`` call with a prepared
  JSON-RPC reply of the same JSON the daemon's bench tool returns (``bench._tools``);
* :func:`round_trips`: one ``websockets`` asyncio client driving either server with the
  same frames, N connections with K calls in flight on each;
* :class:`RssProbe`: the peak resident memory of another process while something runs.

Every server listens on an ephemeral 127.0.0.1 port and is stopped however the
benchmark ends. ``python -m bench._servers bare [--blob SIZE ...]`` runs the bare server
alone (it prints ``PORT <n>`` and exits when its stdin closes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BareServer",
    "Daemon",
    "RssProbe",
    "Throughput",
    "call_frame",
    "cpu_seconds",
    "interleaved",
    "round_trips",
    "rss_bytes",
]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
MAX_MESSAGE = 16 * 1024 * 1024
SERVE_ARGS = ("--port", "0", "--log-level", "warning")
_LISTENING = re.compile(r"bustrail listening on (ws://\S+)")
_FAILED = ('"isError":true', '"error":{')


def call_frame(tool: str, arguments: dict[str, Any], request_id: int | str = 1) -> str:
    """The JSON-RPC ``tools/call`` text frame every client here sends."""
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(message, separators=(",", ":"))


def _frame_maker(tool: str, arguments: dict[str, Any]) -> Callable[[int], str]:
    """Frames differing only by id (calls in flight on one connection need distinct ids),
    made by concatenation: the client's cost per call stays a few hundred nanoseconds."""
    head, tail = call_frame(tool, arguments, 918273645).split("918273645")
    return lambda n: f"{head}{n}{tail}"


# --------------------------------------------------------------------------- memory
def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _hwm_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm(pid: int) -> bool:
    """Reset the kernel's high-water mark of ``pid`` (``5 > clear_refs``), when allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class RssProbe:
    """Peak resident memory of process ``pid`` while the ``with`` block runs.

    Samples ``statm`` every millisecond in a thread and, where the kernel lets us reset
    it, also reads the exact high-water mark (``VmHWM``), so a peak between two samples
    is not missed. ``growth`` is the peak minus the resident size at the start.
    """

    def __init__(self, pid: int, interval: float = 0.001) -> None:
        self.pid = pid
        self.interval = interval
        self.start = self.peak = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> RssProbe:
        self.exact = _reset_hwm(self.pid)
        self.start = self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_bytes(self.pid))
        hwm = _hwm_bytes(self.pid) if self.exact else None
        if hwm is not None:
            self.peak = max(self.peak, hwm)

    @property
    def growth(self) -> int:
        return self.peak - self.start


# --------------------------------------------------------------------------- servers
def _stop_process(process: subprocess.Popen[Any], *, grace: float = 20.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _read_line(process: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> str:
    """The first match of ``pattern`` in the child's stdout, within ``timeout``."""
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            match = pattern.search(line)
            if match:
                found.append(match[1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else ""


class Daemon:
    """``bustrail serve --port 0`` in a subprocess, on a fresh SQLite file in a temporary
    directory (auth disabled; audit, metrics and tracing as by default). ``settings``
    are extra environment variables; ``args`` extra ``serve`` arguments; ``root`` the
    checkout whose code runs."""

    def __init__(self, *args: str, root: Path = ROOT, **settings: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bustrail-bench-daemon-")
        tmp = Path(self._tmp.name)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MESSAGE_BUS_", "BUSTRAIL_"))
        }
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "DATABASE_URL": f"sqlite:///{tmp / 'bustrail.db'}",
                "BUSTRAIL_SPOOL_DIR": str(tmp / "spool"),
                "BUSTRAIL_AUTH_DISABLED": "true",
                "BUSTRAIL_FILES_ROOT": str(tmp),
            }
        )
        env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log_path = tmp / "daemon.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "serve", *SERVE_ARGS, *args],
            env=env,
            cwd=root,  # another checkout's daemon, to compare (python -m runs what is here)
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = _read_line(self.process, _LISTENING, START_TIMEOUT)
        if not self.url:
            self.stop()
            raise RuntimeError(f"the daemon did not start; its log:\n{self.log_text()[-3000:]}")
        self.http = self.url.replace("ws://", "http://").removesuffix("/ws")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        _stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BareServer:
    """The bare ``websockets`` server (a subprocess): echoes each frame; a frame naming
    ``cached_json`` gets a prepared reply holding ``generate_json(size)`` for each size
    in ``blobs`` (the same JSON text, escaped the same way, as the daemon sends)."""

    def __init__(self, blobs: Sequence[int] = ()) -> None:
        argv = [sys.executable, "-m", "bench._servers", "bare"]
        for size in blobs:
            argv += ["--blob", str(size)]
        self.process: subprocess.Popen[str] = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        port = _read_line(self.process, re.compile(r"PORT (\d+)"), START_TIMEOUT)
        if not port:
            self.stop()
            raise RuntimeError("the bare websockets server did not start")
        self.url = f"ws://{HOST}:{port}/ws"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # its signal to stop
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            _stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> BareServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def blob_reply(size: int, request_id: int | str = 1) -> str:
    """The JSON-RPC reply the bare server sends for ``cached_json``: the JSON text as
    one text content block, as the daemon's inline result carries it."""
    from daemon.tools import generate_json

    result = {"content": [{"type": "text", "text": generate_json(size)}], "isError": False}
    message = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


async def _serve_bare(blobs: list[int]) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    replies = {size: blob_reply(size) for size in blobs}

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            if replies and isinstance(message, str) and '"cached_json"' in message:
                size = int(re.search(r'"size":(\d+)', message)[1])  # type: ignore[index]
                await ws.send(replies[size])
            else:
                await ws.send(message)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with serve(
        handler,
        HOST,
        0,
        subprotocols=["mcp"],  # type: ignore[list-item]
        max_size=MAX_MESSAGE,
        compression=None,
    ) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()


# --------------------------------------------------------------------------- clients
def connect(url: str) -> Any:
    """The client connection every benchmark uses: ``websockets`` asyncio, ``mcp``
    sub-protocol, 16 MiB messages, no compression (the daemon negotiates none)."""
    from websockets.asyncio.client import connect as ws_connect

    return ws_connect(
        url,
        subprotocols=["mcp"],  # type: ignore[list-item]
        max_size=MAX_MESSAGE,
        compression=None,
        ping_interval=None,
        open_timeout=30,
    )


INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": "init",
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {"experimental": {"bustrail": {"maxMessageBytes": MAX_MESSAGE}}},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    },
    separators=(",", ":"),
)


async def open_connections(url: str, count: int, stack: contextlib.AsyncExitStack) -> list[Any]:
    """``count`` connections, each initialized (declaring a 16 MiB cap)."""
    sockets = []
    for _ in range(count):
        ws = await stack.enter_async_context(connect(url))
        await ws.send(INITIALIZE)
        await ws.recv()
        sockets.append(ws)
    return sockets


async def _drive(ws: Any, make: Callable[[int], str], inflight: int, deadline: float) -> int:
    """Keep ``inflight`` calls going on one connection until ``deadline``; then wait for
    the last answers. Returns the answers received; raises on a failed call."""
    sent = done = 0
    for _ in range(inflight):
        await ws.send(make(sent))
        sent += 1
    failed = 0
    while done < sent:
        reply = await ws.recv()
        done += 1
        if _FAILED[0] in reply or _FAILED[1] in reply:
            failed += 1
        if time.perf_counter() < deadline:
            await ws.send(make(sent))
            sent += 1
    if failed:
        raise RuntimeError(f"{failed} of {done} calls failed; one reply: {reply[:300]}")
    return done


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Throughput:
    per_second: float  # completed calls per second
    cpu_us: float  # the server's CPU time per call, microseconds (nan when not asked)


async def _round_trips(
    url: str,
    tool: str,
    arguments: dict[str, Any],
    connections: int,
    inflight: int,
    seconds: float,
    pid: int | None,
) -> Throughput:
    make = _frame_maker(tool, arguments)
    async with contextlib.AsyncExitStack() as stack:
        sockets = await open_connections(url, connections, stack)
        for ws in sockets:  # warm each connection (and the daemon's code paths)
            await _drive(ws, make, inflight, 0.0)
        cpu = cpu_seconds(pid) if pid else math.nan
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(_drive(ws, make, inflight, started + seconds) for ws in sockets)
        )
        elapsed = time.perf_counter() - started
        cpu = (cpu_seconds(pid) if pid else math.nan) - cpu
    calls = sum(counts)
    return Throughput(calls / elapsed, cpu / calls * 1e6)


def round_trips(
    url: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    connections: int = 1,
    inflight: int = 1,
    seconds: float = 1.0,
    pid: int | None = None,
) -> Throughput:
    """Completed ``tools/call`` round trips per second against ``url`` (and the CPU time
    process ``pid``, the server, spent per call)."""
    return asyncio.run(_round_trips(url, tool, arguments, connections, inflight, seconds, pid))


async def _latencies(url: str, frame: str, repeats: int) -> list[float]:
    async with contextlib.AsyncExitStack() as stack:
        (ws,) = await open_connections(url, 1, stack)
        await ws.send(frame)  # warm up
        await ws.recv()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await ws.send(frame)
            reply = await ws.recv()
            times.append(time.perf_counter() - started)
            if _FAILED[0] in reply[:200] or _FAILED[1] in reply[:200]:
                raise RuntimeError(f"call failed: {reply[:300]}")
    return times


def latency(url: str, frame: str, repeats: int) -> float:
    """Median seconds from sending ``frame`` to having its whole reply."""
    return statistics.median(asyncio.run(_latencies(url, frame, repeats)))


def interleaved(
    rounds: int, baseline: Callable[[], float], subject: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run baseline and subject ``rounds`` times each, alternating which goes first."""
    base: list[float] = []
    subj: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            base.append(baseline())
            subj.append(subject())
        else:
            subj.append(subject())
            base.append(baseline())
    return base, subj


@contextlib.contextmanager
def stopping(*servers: Daemon | BareServer) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare"])
    parser.add_argument("--blob", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    asyncio.run(_serve_bare(args.blob))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
