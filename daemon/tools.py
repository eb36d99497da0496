"""Tools: a registry, a decorator, input schemas from type hints, and the built-ins.

A tool is a plain function, sync or async, marked with :func:`tool`. Its parameters'
type hints become the JSON Schema clients see in ``tools/list`` and the validation
applied to their arguments. It returns ``str`` (text), ``bytes`` (binary), or anything
JSON-serializable (sent as JSON text). Raising :class:`ToolError` (or anything else)
gives the caller an ``isError`` result with the message.

User tools are found by import path (``bustrail serve --tools mypkg.tools``) or through
the ``bustrail.tools`` entry-point group: every function marked with ``@tool`` in that
module is registered.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, get_type_hints

import pydantic

__all__ = [
    "BUILTIN_TOOLS",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "builtin_registry",
    "generate_json",
    "invoke_within",
    "tool",
]

ENTRY_POINT_GROUP = "bustrail.tools"
_MARK = "__bustrail_tool__"


class ToolError(Exception):
    """Raised by a tool to report a failure to its caller (an ``isError`` result)."""


@dataclass(frozen=True)
class ToolResult:
    """A tool's output as bytes, with what they are."""

    data: bytes
    mime_type: str

    @property
    def is_text(self) -> bool:
        return self.mime_type.startswith("text/") or self.mime_type == "application/json"

    @classmethod
    def of(cls, value: Any) -> ToolResult:
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, str):
            return cls(value.encode(), "text/plain")
        if isinstance(value, bytes | bytearray | memoryview):
            return cls(bytes(value), "application/octet-stream")
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"tool returned a {type(value).__name__}, not JSON: {exc}") from exc
        return cls(text.encode(), "application/json")


@dataclass
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    input_model: type[pydantic.BaseModel]
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_hint: str = ""
    # Parameters that are all plain str/int/float/bool (see _plain_parameters): name ->
    # (type, default or _REQUIRED). None when validation must go through the model.
    plain_parameters: dict[str, tuple[type, Any]] | None = None

    def __post_init__(self) -> None:
        self._is_async = inspect.iscoroutinefunction(self.fn)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check arguments against the schema; ValueError with a readable message."""
        if self.plain_parameters is not None:
            plain = _plain_arguments(self.plain_parameters, arguments)
            if plain is not None:
                return plain
        try:
            model = self.input_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(f"invalid arguments for tool {self.name!r}: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, arguments: dict[str, Any]) -> ToolResult:
        if self._is_async:
            value = await self.fn(**arguments)
        else:
            value = await asyncio.to_thread(self.fn, **arguments)
        return ToolResult.of(value)


async def invoke_within(entry: Tool, arguments: dict[str, Any], seconds: float) -> ToolResult:
    """``await entry.invoke(arguments)``, cancelled (TimeoutError) after ``seconds``.

    The first step of the call runs before any timer is set: a tool that returns
    without waiting for anything (``echo``) cannot be interrupted by a timer anyway, and
    setting and cancelling one was ~2% of a small call (bench_daemon). A call that
    waits gets ``asyncio.timeout_at`` with the deadline counted from its start, which
    fires at its first wait when the first step alone took longer (as before).
    """
    started = time.monotonic()
    invocation = entry.invoke(arguments)
    try:
        step = invocation.send(None)
    except StopIteration as done:
        result: ToolResult = done.value
        return result
    # In the loop's time (which may not be time.monotonic's), counted from the start.
    deadline = asyncio.get_running_loop().time() + seconds - (time.monotonic() - started)
    # asyncio.timeout, not wait_for: no second task per call.
    async with asyncio.timeout_at(deadline):
        return await _Resumed(invocation, step)


class _Resumed:
    """Awaiting a coroutine whose first step already ran and yielded ``step``: its
    steps go on in the awaiting task, as ``await`` would run them (what the task sends
    or throws in is passed on)."""

    __slots__ = ("_coroutine", "_step")

    def __init__(self, coroutine: Coroutine[Any, Any, ToolResult], step: Any) -> None:
        self._coroutine = coroutine
        self._step = step

    def __await__(self) -> Generator[Any, Any, ToolResult]:
        coroutine, step = self._coroutine, self._step
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # a cancellation, most likely: passed on
                try:
                    step = coroutine.throw(exc)
                except StopIteration as done:
                    result: ToolResult = done.value
                    return result
            else:
                try:
                    step = coroutine.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Mark a function as a tool: ``@tool`` or ``@tool(name="x", description="...")``."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _MARK, {"name": name or f.__name__, "description": description})
        return f

    return mark(fn) if fn is not None else mark


def _input_model(fn: Callable[..., Any], tool_name: str) -> type[pydantic.BaseModel]:
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    config = pydantic.ConfigDict(extra="forbid", strict=False)
    return pydantic.create_model(f"{tool_name}_arguments", __config__=config, **fields)


_REQUIRED = object()
_PLAIN_TYPES = (str, int, float, bool)


def _plain_parameters(fn: Callable[..., Any]) -> dict[str, tuple[type, Any]] | None:
    """For a function whose parameters are all annotated ``str``, ``int``, ``float`` or
    ``bool`` (no constraints) with immutable defaults: name -> (type, default)."""
    hints = get_type_hints(fn)
    plain: dict[str, tuple[type, Any]] = {}
    for param in inspect.signature(fn).parameters.values():
        kind = hints.get(param.name)
        if kind not in _PLAIN_TYPES:
            return None
        if param.default is inspect.Parameter.empty:
            plain[param.name] = (kind, _REQUIRED)
        elif param.default is None or type(param.default) in _PLAIN_TYPES:
            plain[param.name] = (kind, param.default)
        else:
            return None
    return plain


def _plain_arguments(
    parameters: dict[str, tuple[type, Any]], arguments: dict[str, Any]
) -> dict[str, Any] | None:
    """The validated arguments without the model, when each value already has exactly
    its parameter's type: the model would hand back the same values (a str, int, float
    or bool passes lax validation unchanged, and a default is not validated). None when
    anything else is there (an int for a float, an unknown or missing argument...):
    the model decides, and words the error. Validating through the model was ~5% of a
    small call (bench_daemon)."""
    if len(arguments) > len(parameters):
        return None
    validated: dict[str, Any] = {}
    found = 0
    for name, (kind, default) in parameters.items():
        if name in arguments:
            value = arguments[name]
            if type(value) is not kind:
                return None
            validated[name] = value
            found += 1
        elif default is _REQUIRED:
            return None
        else:
            validated[name] = default
    return validated if found == len(arguments) else None


def _describe(exc: Exception) -> str:
    """An error for a start-up message: an ImportError says enough, others need a type."""
    return str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"


def _import_tools(import_path: str) -> ModuleType:
    """Import a module of tools; whatever its import raises (a plugin's module may raise
    anything) becomes an ImportError naming the path."""
    try:
        return importlib.import_module(import_path)
    except Exception as exc:
        raise ImportError(f"cannot import tools from {import_path!r}: {_describe(exc)}") from exc


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def list(self) -> list[Tool]:
        return list(self._tools.values())

    def add(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        mark = getattr(fn, _MARK, {})
        tool_name = name or mark.get("name") or fn.__name__
        if tool_name in self._tools:
            raise ValueError(f"tool {tool_name!r} is registered twice")
        text = description or mark.get("description") or inspect.getdoc(fn) or ""
        model = _input_model(fn, tool_name)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        entry = Tool(tool_name, text.strip(), fn, model, schema)
        entry.plain_parameters = _plain_parameters(fn)
        self._tools[tool_name] = entry
        return entry

    def add_external(self, entry: Tool) -> None:
        """Register a tool built elsewhere (a gateway upstream's)."""
        if entry.name in self._tools:
            raise ValueError(f"tool {entry.name!r} is registered twice")
        self._tools[entry.name] = entry

    def remove_external(self, entry: Tool) -> None:
        """Unregister a tool added with ``add_external`` (an upstream no longer lists it)."""
        if self._tools.get(entry.name) is entry:
            del self._tools[entry.name]

    def load_module(self, import_path: str) -> list[Tool]:
        """Register every ``@tool`` function of a module; ImportError names the path,
        whatever its import raised (a plugin's module may raise anything)."""
        module = _import_tools(import_path)
        found = [
            value for value in vars(module).values() if callable(value) and hasattr(value, _MARK)
        ]
        if not found:
            raise ImportError(f"module {import_path!r} has no function marked with @tool")
        return [self.add(fn) for fn in found]

    def _load_one(self, import_path: str, attr: str) -> Tool:
        """Register the ``@tool`` function ``attr`` of a module."""
        fn = getattr(_import_tools(import_path), attr, None)
        if fn is None:
            raise ImportError(f"module {import_path!r} has no {attr!r}")
        if not (callable(fn) and hasattr(fn, _MARK)):
            raise ImportError(f"{import_path}:{attr} is not a function marked with @tool")
        return self.add(fn)

    def load_entry_points(self) -> list[Tool]:
        """Register the tools of the ``bustrail.tools`` entry-point group: every ``@tool``
        function of a module (``name = pkg.mod``), or the one named (``name =
        pkg.mod:func``). One that cannot be loaded is an ImportError naming the entry
        point, its distribution and what went wrong: a broken plugin stops the start-up,
        clearly."""
        loaded: list[Tool] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                if ep.attr:
                    loaded.append(self._load_one(ep.module, ep.attr))
                else:
                    loaded.extend(self.load_module(ep.module))
            except Exception as exc:
                dist = f" of {ep.dist.name}" if ep.dist is not None else ""
                raise ImportError(
                    f"entry point {ep.name!r}{dist} ({ENTRY_POINT_GROUP}: {ep.value}): "
                    f"{_describe(exc)}"
                ) from exc
        return loaded


# -- built-in tools ---------------------------------------------------------------------
_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "order",
    "invoice",
    "shipment",
    "customer",
    "payment",
    "refund",
    "ticket",
    "agent",
    "query",
    "result",
    "status",
    "pending",
    "settled",
    "failed",
    "retry",
    "cache",
    "shard",
    "replica",
    "region",
    "latency",
]
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1", "sa-east-1")


def _record(rng: random.Random, i: int) -> str:
    doc = {
        "id": i,
        "uuid": f"{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}",
        "type": rng.choice(_WORDS),
        "status": rng.choice(("ok", "pending", "failed", "retrying")),
        "region": rng.choice(_REGIONS),
        "amount": round(rng.uniform(0, 10_000), 2),
        "tags": rng.sample(_WORDS, 3),
        "note": " ".join(rng.choices(_WORDS, k=rng.randint(3, 12))),
        "attempts": rng.randint(0, 5),
    }
    return json.dumps(doc, separators=(",", ":"))


def generate_json(size: int, seed: int = 0) -> str:
    """Realistic JSON text (a list of records) of about ``size`` bytes, same for a seed.

    Records come from a pool of 2,048 generated ones with fresh ids, so large sizes are
    cheap to make while compressing like real logs (zstd: roughly 5-8x).
    """
    if size < 0:
        raise ToolError("size must be >= 0")
    rng = random.Random(seed)
    pool = [_record(rng, i) for i in range(2048)]
    parts = ["["]
    total = 1
    i = 0
    while total < size - 1:
        text = pool[i % len(pool)]
        text = '{"seq":' + str(i) + "," + text[1:]
        parts.append(text if i == 0 else "," + text)
        total += len(parts[-1])
        i += 1
    parts.append("]")
    return "".join(parts)


async def echo(text: str) -> str:
    """Return the text unchanged."""
    # async: a sync tool runs in a worker thread, and that hop cost more than the tool
    # (~0.1 ms of CPU a call, bench_daemon); returning the argument never blocks.
    return text


def generate(size: int, seed: int = 0) -> ToolResult:
    """Return realistic JSON text of about `size` bytes (the same for the same seed)."""
    # JSON already: returned as a str it would be text/plain (ToolResult.of), and its
    # stored resource_link, download and preview would not say it is JSON.
    return ToolResult(generate_json(size, seed).encode(), "application/json")


async def sleep(seconds: float) -> str:
    """Sleep, then say so (for timeouts and cancellation)."""
    if seconds < 0:
        raise ToolError("seconds must be >= 0")
    await asyncio.sleep(seconds)
    return f"slept {seconds}s"


def fail(message: str) -> str:
    """Raise a tool error with this message."""
    raise ToolError(message)


def _read_file_tool(root: Path) -> Callable[[str], bytes]:
    resolved_root = root.resolve()

    def read_file(path: str) -> bytes:
        """Read a file under the configured root (BUSTRAIL_FILES_ROOT)."""
        target = (resolved_root / path).resolve()
        if not target.is_relative_to(resolved_root):
            raise ToolError(f"{path!r} is outside the files root")
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file under the files root")
        return target.read_bytes()

    return read_file


BUILTIN_TOOLS: dict[str, Callable[..., Any] | Callable[..., Awaitable[Any]]] = {
    "echo": echo,
    "generate": generate,
    "sleep": sleep,
    "fail": fail,
}


def builtin_registry(files_root: Path) -> ToolRegistry:
    registry = ToolRegistry()
    for name, fn in BUILTIN_TOOLS.items():
        registry.add(fn, name=name)
    registry.add(_read_file_tool(files_root), name="read_file")
    return registry
