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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
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

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Check arguments against the schema; ValueError with a readable message."""
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
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**arguments)
        else:
            value = await asyncio.to_thread(self.fn, **arguments)
        return ToolResult.of(value)


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
        """Register every ``@tool`` function of a module; ImportError names the path."""
        try:
            module = importlib.import_module(import_path)
        except ImportError as exc:
            raise ImportError(f"cannot import tools from {import_path!r}: {exc}") from exc
        found = [
            value for value in vars(module).values() if callable(value) and hasattr(value, _MARK)
        ]
        if not found:
            raise ImportError(f"module {import_path!r} has no function marked with @tool")
        return [self.add(fn) for fn in found]

    def load_entry_points(self) -> list[Tool]:
        loaded: list[Tool] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            loaded.extend(self.load_module(ep.module))
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


def generate(size: int, seed: int = 0) -> str:
    """Return realistic JSON text of about `size` bytes (the same for the same seed)."""
    return generate_json(size, seed)


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
