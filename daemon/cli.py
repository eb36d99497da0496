"""The `bustrail` command line: the one front door that wires every part together.

Settings are read here, once, and handed to what needs them. Expected failures (bad
settings, an unreachable database, an outdated schema) end with one clear line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from bus.errors import BustrailError, SettingsError
from bus.settings import Settings, load_settings

__all__ = ["app", "main"]

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="bustrail",
    help="Claim checks, audit and silent-failure debt for tool daemons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


def _fail(message: str, code: int) -> None:
    typer.echo(f"bustrail: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Turn bustrail's own errors into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SettingsError as exc:
            _fail(str(exc), 2)
        except BustrailError as exc:
            _fail(str(exc), 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        return None

    return wrapper  # type: ignore[return-value]


def settings_from_env() -> Settings:
    return load_settings()


def open_database(settings: Settings) -> Any:
    return settings.database()


@db_app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Create or update the schema; running it twice changes nothing."""
    from bus.schema import upgrade

    settings = settings_from_env()
    db = open_database(settings)
    result = upgrade(db)
    if result.applied:
        applied = ", ".join(f"{v:04d}" for v in result.applied)
        typer.echo(f"{db.safe_url}: schema {result.before} -> {result.after} (applied {applied})")
    else:
        typer.echo(f"{db.safe_url}: schema already at version {result.after}, nothing to do")


@app.command()
@handles_errors
def cleanup(
    batch: Annotated[
        int, typer.Option(min=1, help="Rows moved per database transaction.")
    ] = 10_000,
) -> None:
    """Archive expired payloads (chunks deleted) and fail abandoned pending transactions."""
    from bus.schema import require_schema
    from bus.store import PayloadStore, StoreConfig

    settings = settings_from_env()
    db = open_database(settings)
    require_schema(db)
    store = PayloadStore(db, StoreConfig.from_settings(settings))
    expired = store.expire(batch=batch)
    abandoned = store.abandon_pending(settings.bustrail_abandon_pending_seconds)
    typer.echo(f"expired {expired} stored payload(s); abandoned {abandoned} pending transaction(s)")


@config_app.command("show")
@handles_errors
def config_show() -> None:
    """Print every setting as NAME=value (secrets masked)."""
    settings = settings_from_env()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name == "database_url":
            from bus.db import mask_url

            shown = mask_url(value.get_secret_value())
        elif hasattr(value, "get_secret_value"):
            shown = "********"
        elif value is None:
            shown = ""
        elif isinstance(value, bool):
            shown = str(value).lower()
        else:
            shown = str(value)
        typer.echo(f"{name.upper()}={shown}")


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown), generated from the settings model."""
    from bus.settings_doc import reference_markdown

    typer.echo(reference_markdown(), nl=False)


@config_app.command("example")
def config_example() -> None:
    """Print a .env.example with every setting and its default."""
    from bus.settings_doc import env_example

    typer.echo(env_example(), nl=False)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="bustrail")


# -- the daemon -------------------------------------------------------------------------
def _parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """key=value pairs; a value that parses as JSON is taken as JSON (numbers, lists)."""
    import json

    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        try:
            arguments[key] = json.loads(value)
        except ValueError:
            arguments[key] = value
    return arguments


URL_OPTION = typer.Option("--url", envvar="BUSTRAIL_URL", help="The daemon's WebSocket URL.")
TOKEN_OPTION = typer.Option("--token", envvar="BUSTRAIL_TOKEN", help="Bearer token.")


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8765,
    tools: Annotated[
        list[str] | None,
        typer.Option("--tools", help="Import path of a module of @tool functions."),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="Gateway mode: NAME=COMMAND of a stdio MCP server to put behind bustrail "
            "(repeatable; also BUSTRAIL_UPSTREAMS).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    grace: Annotated[
        float,
        typer.Option(
            min=0, help="On SIGTERM, seconds calls in flight get to finish before cancelled."
        ),
    ] = 30.0,
) -> None:
    """Run the daemon: WebSocket JSON-RPC at /ws, HTTP downloads, /metrics, health."""
    from daemon.server import serve_forever

    settings = settings_from_env()
    serve_forever(
        settings,
        host=host,
        port=port,
        tool_modules=tools or [],
        upstreams=upstream or [],
        log_level=log_level,
        grace_seconds=grace,
    )


@app.command()
@handles_errors
def call(
    tool: Annotated[str, typer.Argument(help="Tool name.")],
    arguments: Annotated[list[str] | None, typer.Argument(help="key=value arguments.")] = None,
    url: Annotated[str, URL_OPTION] = "ws://127.0.0.1:8765/ws",
    token: Annotated[str | None, TOKEN_OPTION] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write the payload to this file.")
    ] = None,
) -> None:
    """Call a tool and print its result (a stored one is fetched with -o FILE)."""
    import asyncio
    import json

    from daemon.client import Client, ClientError

    parsed = _parse_arguments(arguments or [])

    async def run() -> int:
        async with await Client.connect(url, token=token) as client:
            result = await client.call(tool, parsed)
            meta = result.meta
            if output:
                data = await client.result_bytes(result)
                with open(output, "wb") as f:
                    f.write(data)
                typer.echo(f"wrote {len(data):,} bytes to {output}", err=True)
            elif result.route == "store":
                typer.echo(result.text)
            else:
                typer.echo(result.text)
            typer.echo(json.dumps(meta), err=True)
            return 1 if result.is_error else 0

    try:
        code = asyncio.run(run())
    except ClientError as exc:
        _fail(str(exc), 1)
    raise typer.Exit(code)


@app.command()
@handles_errors
def fetch(
    transaction_id: Annotated[str, typer.Argument(metavar="ID", help="Transaction id.")],
    output: Annotated[str, typer.Option("-o", "--output", help="File to write.")],
    url: Annotated[str, URL_OPTION] = "ws://127.0.0.1:8765/ws",
    token: Annotated[str | None, TOKEN_OPTION] = None,
) -> None:
    """Download a stored result over HTTP, verifying its checksum."""
    import asyncio
    from pathlib import Path

    import httpx

    from daemon.client import ClientError, fetch_transaction, http_base

    async def run() -> Path:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=http_base(url), headers=headers, timeout=300) as http:
            result = await fetch_transaction(http, transaction_id, to_file=output)
            assert isinstance(result, Path)
            return result

    try:
        path = asyncio.run(run())
    except ClientError as exc:
        _fail(str(exc), 1)
    typer.echo(f"wrote {path.stat().st_size:,} bytes to {path} (checksum verified)")


@app.command()
@handles_errors
def health(
    url: Annotated[str, URL_OPTION] = "ws://127.0.0.1:8765/ws",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 5.0,
) -> None:
    """Exit 0 when the daemon and its database answer (for container probes)."""
    import httpx

    from daemon.client import http_base

    target = http_base(url) + "/readyz"
    try:
        response = httpx.get(target, timeout=timeout)
    except httpx.HTTPError as exc:
        _fail(f"{target}: no answer ({exc})", 1)
    typer.echo(f"{target}: HTTP {response.status_code} {response.text}")
    raise typer.Exit(0 if response.status_code == 200 else 1)


# Last: `python -m daemon.cli` must see every command defined above.
if __name__ == "__main__":
    main()
