"""Settings: read from the environment and `.env`, validated once, at start-up.

Nothing here runs at import time. The command line calls :func:`load_settings` once and
hands the result to the parts that need it; a bad value stops start-up with a
:class:`~bus.errors.SettingsError` naming each variable and what it accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.breaker import BreakerConfig
from bus.db import Database
from bus.errors import SettingsError

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "load_settings", "parse_auth_tokens"]

MIB = 1024 * 1024
DEFAULT_DATABASE_URL = "sqlite:///.bustrail/bustrail.db"
_LEVELS = {"gzip": (1, 9), "zstd": (1, 22)}  # MESSAGE_BUS_COMPRESSION_LEVEL per codec
_BOOLEANS = "use true/false, 1/0, yes/no or on/off"  # all pydantic reads (also t/f, y/n)
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


class Settings(BaseSettings):
    """Every setting, by its environment variable (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # -- the seed's names ---------------------------------------------------------
    environment: Literal["development", "test", "staging", "production"] = Field(
        "development", description="Where this daemon runs; shown in logs and metrics."
    )
    message_bus_enabled: bool = Field(
        True,
        description="Store large results as claim checks. Off: everything goes inline "
        "(and is still audited).",
    )
    message_bus_ttl_hours: float = Field(
        48, gt=0, description="How long a stored payload is kept before it expires."
    )
    message_bus_max_payload_mb: float = Field(
        100, gt=0, description="Largest payload accepted at all; larger ones are rejected."
    )
    message_bus_compression: Literal["none", "gzip", "zstd"] = Field(
        "zstd", description="Compression of stored payloads."
    )
    circuit_breaker_enabled: bool = Field(True, description="Guard store calls with a breaker.")
    circuit_breaker_threshold: int = Field(
        5, ge=1, description="Consecutive store failures that open the breaker."
    )
    fallback_to_websocket: bool = Field(
        True,
        description="When the store fails, deliver inline if the message fits the client.",
    )

    # -- routing and storage ------------------------------------------------------------
    message_bus_threshold_bytes: int = Field(
        MIB, ge=1024, description="Encoded messages larger than this go to the store."
    )
    message_bus_chunk_bytes: int = Field(
        8 * MIB, ge=64 * 1024, le=256 * MIB, description="Size of one stored chunk."
    )
    message_bus_compression_level: int | None = Field(
        None, description="Codec level (zstd 1-22, gzip 1-9); empty: the codec's default."
    )
    websocket_max_message_mb: float = Field(
        32, gt=0, description="The daemon's own ceiling for one WebSocket message."
    )
    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL),
        description="sqlite:///PATH (embedded default) or postgresql://... (production).",
    )
    database_pool_size: int = Field(10, ge=1, le=200, description="PostgreSQL pool size.")
    bustrail_sqlite_busy_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="How long an SQLite write waits for the file's lock before failing.",
    )

    # -- breaker details ------------------------------------------------------------------
    circuit_breaker_window_size: int = Field(
        20, ge=1, description="Calls in the breaker's sliding window."
    )
    circuit_breaker_minimum_calls: int = Field(
        10, ge=1, description="Calls in the window before its failure rate counts."
    )
    circuit_breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Failure rate over the window that opens the breaker."
    )
    circuit_breaker_slow_call_seconds: float = Field(
        5.0, gt=0, description="A store call slower than this counts as a failure."
    )
    circuit_breaker_open_seconds: float = Field(
        30.0, gt=0, description="How long the breaker stays open before probing."
    )
    circuit_breaker_half_open_calls: int = Field(
        2, ge=1, description="Probe calls let through while half-open."
    )

    # -- audit -------------------------------------------------------------------------
    bustrail_spool_dir: Path = Field(
        Path(".bustrail/spool"),
        description="Where audit records wait, fsync'd, while the database is unreachable.",
    )
    bustrail_audit_batch_size: int = Field(
        500, ge=1, description="Audit records written per batch."
    )
    bustrail_audit_flush_seconds: float = Field(
        0.5, gt=0, description="Longest an audit record waits in memory before a write."
    )
    bustrail_abandon_pending_seconds: float = Field(
        600, gt=0, description="At start-up, pending transactions older than this fail."
    )

    # -- auth ----------------------------------------------------------------------------
    bustrail_auth_tokens: SecretStr | None = Field(
        None, description="token=tenant,... or @FILE with one token=tenant a line."
    )
    bustrail_auth_disabled: bool = Field(
        False, description="Turn auth off for local use (tenant `default`)."
    )
    bustrail_allowed_origins: str = Field(
        "", description="Comma-separated WebSocket Origins allowed; empty: no browser Origin."
    )

    # -- tools ---------------------------------------------------------------------------
    bustrail_files_root: Path = Field(
        Path("."), description="The only folder the built-in read_file tool may read."
    )
    bustrail_upstreams: str = Field(
        "",
        description='Gateway upstreams as JSON {"NAME": "COMMAND ARGS"} or @FILE holding it; '
        "added to --upstream.",
    )
    bustrail_tool_timeout_seconds: float = Field(
        300, gt=0, description="A tool call running longer than this is cancelled."
    )

    # -- previews (for agents) -----------------------------------------------------------
    bustrail_preview_head_bytes: int = Field(
        2048, ge=0, le=1024 * 1024, description="Bytes of a stored result's head in its preview."
    )
    bustrail_preview_tail_bytes: int = Field(
        1024, ge=0, le=1024 * 1024, description="Bytes of a stored result's tail in its preview."
    )

    # -- observability ------------------------------------------------------------------
    bustrail_trace_exporter: Literal["none", "console", "otlp", "off"] = Field(
        "none",
        description="Where spans go: none (ids still recorded in the audit), console, otlp "
        "(the standard OTEL_EXPORTER_OTLP_* variables), or off (no tracing, no trace ids).",
    )
    bustrail_trace_url_template: str = Field(
        "",
        description="Link to a trace in the dashboard, e.g. http://jaeger:16686/trace/{trace_id}.",
    )

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> Settings:
        if self.circuit_breaker_minimum_calls > self.circuit_breaker_window_size:
            raise ValueError(
                f"CIRCUIT_BREAKER_MINIMUM_CALLS ({self.circuit_breaker_minimum_calls}) must not "
                f"exceed CIRCUIT_BREAKER_WINDOW_SIZE ({self.circuit_breaker_window_size})"
            )
        return self

    @model_validator(mode="after")
    def _level_fits_codec(self) -> Settings:
        level, codec = self.message_bus_compression_level, self.message_bus_compression
        bounds = _LEVELS.get(codec)
        if level is not None and bounds and not bounds[0] <= level <= bounds[1]:
            raise ValueError(
                f"MESSAGE_BUS_COMPRESSION_LEVEL ({level}) must be {bounds[0]}-{bounds[1]} for "
                f"{codec}, or empty for the codec's default"
            )
        return self

    @field_validator("message_bus_compression_level", mode="before")
    @classmethod
    def _empty_level_is_default(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.circuit_breaker_threshold,
            window_size=self.circuit_breaker_window_size,
            minimum_calls=self.circuit_breaker_minimum_calls,
            failure_rate_threshold=self.circuit_breaker_failure_rate,
            slow_call_seconds=self.circuit_breaker_slow_call_seconds,
            open_seconds=self.circuit_breaker_open_seconds,
            half_open_max_calls=self.circuit_breaker_half_open_calls,
        )

    @field_validator("bustrail_auth_tokens")
    @classmethod
    def _tokens_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("@"):
            parse_auth_tokens(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("sqlite:", "postgresql:", "postgres:", "postgresql+psycopg:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    def database(self) -> Database:
        """A Database for DATABASE_URL with the pool and lock settings applied."""
        return Database(
            self.database_url.get_secret_value(),
            pool_size=self.database_pool_size,
            busy_timeout=self.bustrail_sqlite_busy_timeout_seconds,
        )

    @property
    def threshold_bytes(self) -> int:
        return self.message_bus_threshold_bytes

    @property
    def max_payload_bytes(self) -> int:
        return int(self.message_bus_max_payload_mb * MIB)

    @property
    def websocket_max_message_bytes(self) -> int:
        return int(self.websocket_max_message_mb * MIB)

    @property
    def ttl_seconds(self) -> float:
        return self.message_bus_ttl_hours * 3600

    def auth_tokens(self) -> dict[str, str]:
        """token -> tenant, reading the @FILE form when given."""
        if self.bustrail_auth_tokens is None:
            return {}
        raw = self.bustrail_auth_tokens.get_secret_value()
        if raw.startswith("@"):
            path = Path(raw[1:])
            try:
                raw = ",".join(
                    line.strip()
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and not line.lstrip().startswith("#")
                )
            except OSError as exc:
                raise SettingsError(
                    [f"BUSTRAIL_AUTH_TOKENS: cannot read token file {path}: {exc.strerror}"]
                ) from exc
            try:
                return parse_auth_tokens(raw)
            except ValueError as exc:
                raise SettingsError([f"BUSTRAIL_AUTH_TOKENS ({path}): {exc}"]) from exc
        return parse_auth_tokens(raw)

    def upstream_commands(self) -> dict[str, str]:
        """NAME -> COMMAND from BUSTRAIL_UPSTREAMS (JSON object, or @FILE holding one)."""
        raw = self.bustrail_upstreams.strip()
        if not raw:
            return {}
        source = "BUSTRAIL_UPSTREAMS"
        if raw.startswith("@"):
            source = f"BUSTRAIL_UPSTREAMS ({raw[1:]})"
            try:
                raw = Path(raw[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError([f"{source}: cannot read: {exc.strerror}"]) from exc
        try:
            value = json.loads(raw, object_pairs_hook=_unique_keys)
        except ValueError as exc:
            raise SettingsError(
                [f'{source}: expected JSON like {{"NAME": "COMMAND"}}: {exc}']
            ) from exc
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items()
        ):
            raise SettingsError([f'{source}: expected a JSON object {{"NAME": "COMMAND"}}'])
        return value

    def allowed_origins(self) -> list[str]:
        return [o.strip() for o in self.bustrail_allowed_origins.split(",") if o.strip()]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: plain ``json.loads`` keeps the last of a
    repeated name, so an upstream named twice would silently lose its first command."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"{key!r} is named twice")
        value[key] = item
    return value


def parse_auth_tokens(raw: str) -> dict[str, str]:
    """Parse ``token=tenant,token2=tenant2``; raise ValueError naming the bad entry."""
    tokens: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        token, sep, tenant = entry.partition("=")
        if not sep or not token.strip() or not tenant.strip():
            # Never echo a token, not even part of one: an entry without "=" may be one.
            if not sep:
                shown = "***"
            elif not token.strip():
                shown = f"={tenant.strip()}"
            else:
                shown = "***="
            raise ValueError(f"entry {number}: expected token=tenant, got {shown!r}")
        tokens[token.strip()] = tenant.strip()
    return tokens


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once; turn pydantic's errors into one line per variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            message = str(error["msg"]).removeprefix("Value error, ")
            if not error["loc"]:  # a check across several settings names them itself
                problems.append(message)
                continue
            field = str(error["loc"][0])
            given = error.get("input")
            shown = "***" if field in {"database_url", "bustrail_auth_tokens"} else given
            accepted = _accepted(field, str(error["type"]))
            problems.append(
                f"{field.upper()}={shown!r}: {message}" + (f"; {accepted}" if accepted else "")
            )
        raise SettingsError(problems) from None


def _accepted(field: str, error_type: str) -> str:
    """What a boolean or bounded number setting accepts, where pydantic's message does
    not already say all of it ("use an integer >= 65536 and <= 268435456"), or ""."""
    info = Settings.model_fields.get(field)
    if info is None:
        return ""
    if info.annotation is bool:
        return _BOOLEANS
    if info.annotation not in (int, float):
        return ""
    bounds = [
        f"{sign} {getattr(bound, name)}"
        for bound in info.metadata
        for name, sign in _BOUNDS
        if hasattr(bound, name)
    ]
    if not bounds or (error_type in _BOUND_ERRORS and len(bounds) == 1):
        return ""  # nothing to add: any number, or the one bound pydantic named
    kind = "an integer" if info.annotation is int else "a number"
    return f"use {kind} {' and '.join(bounds)}"
