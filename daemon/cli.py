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
    from bus.db import Database

    return Database(settings.database_url.get_secret_value(), pool_size=settings.database_pool_size)


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


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="bustrail")


if __name__ == "__main__":
    main()
