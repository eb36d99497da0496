"""The configuration reference and `.env.example`, generated from the settings model,
so the documentation cannot drift from the code (a test compares them)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from bus.settings import Settings

__all__ = ["env_example", "reference_markdown"]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return ", ".join(names) + " (optional)"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        return {
            "bool": "`true`, `false`",
            "int": "integer",
            "float": "number",
            "str": "text",
            "Path": "path",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: FieldInfo) -> str:
    value = field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def reference_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `bus/settings.py` by `bustrail config reference`; do not edit by hand.",
        "Every setting is an environment variable (or a line in `.env`). A bad value stops",
        "start-up with one message naming the variable.",
        "",
        "| variable | type / values | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `{name.upper()}` | {_type_name(field.annotation)} | `{_default(field)}` | "
            f"{(field.description or '').replace('|', '/')} |"
        )
    lines += [
        "",
        "Tracing also reads the standard `OTEL_*` variables: `OTEL_SERVICE_NAME` and",
        "`OTEL_RESOURCE_ATTRIBUTES` name the service (default `bustrail`) with any exporter,",
        "`OTEL_EXPORTER_OTLP_*` (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`) configure the exporter of",
        "`BUSTRAIL_TRACE_EXPORTER=otlp`.",
        "",
    ]
    return "\n".join(lines)


def env_example() -> str:
    lines = [
        "# bustrail settings: copy to .env and edit. Defaults shown; see",
        "# docs/configuration.md for what each one means.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        lines.append(f"# {field.description or ''}")
        default = _default(field)
        if name == "bustrail_auth_tokens":
            default = "change-me=default"
        # An empty value is not "unset" to the parser: leave those commented out.
        prefix = "# " if default == "" else ""
        lines.append(f"{prefix}{name.upper()}={default}")
        lines.append("")
    return "\n".join(lines)
