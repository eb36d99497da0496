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
    """Archive expired payloads (chunks deleted), fail abandoned pending transactions and
    (PostgreSQL) create the coming months' partitions. Run it from cron, as the owner."""
    from bus.schema import ensure_partitions, require_schema
    from bus.store import PayloadStore, StoreConfig

    settings = settings_from_env()
    db = open_database(settings)
    require_schema(db)
    store = PayloadStore(db, StoreConfig.from_settings(settings))
    expired = store.expire(batch=batch)
    abandoned = store.abandon_pending(settings.bustrail_abandon_pending_seconds)
    partitions = ensure_partitions(db)
    typer.echo(
        f"expired {expired} stored payload(s); abandoned {abandoned} pending transaction(s)"
        + (f"; created {partitions} partition(s)" if partitions else "")
    )


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


@app.command()
@handles_errors
def bridge(
    url: Annotated[
        str, typer.Argument(envvar="BUSTRAIL_URL", help="The daemon's WebSocket URL.")
    ] = "ws://127.0.0.1:8765/ws",
    token: Annotated[str | None, TOKEN_OPTION] = None,
    wait: Annotated[
        float,
        typer.Option(min=0, help="Seconds to wait for the daemon (at start and when lost)."),
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "warning",
) -> None:
    """Be a stdio MCP server for an agent, relaying to the daemon at URL.

    For agents that only launch stdio servers: register `bustrail bridge URL` as the
    server's command. Messages go to the daemon verbatim; a lost connection fails the
    calls in flight and is re-established with the agent's session replayed. Logs go to
    stderr (stdout is the protocol).
    """
    import asyncio
    import logging

    from daemon.bridge import Bridge

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        _fail(f"--log-level must be debug, info, warning or error, not {log_level!r}", 2)
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    raise typer.Exit(asyncio.run(Bridge(url, token=token, wait_seconds=wait).run()))


# -- the dashboard ----------------------------------------------------------------------
@app.command()
@handles_errors
def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve it on.")] = 8501,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the Streamlit dashboard over DATABASE_URL (headless: open the URL it prints)."""
    import os
    from importlib.util import find_spec
    from pathlib import Path

    from bus.db import mask_url

    settings = settings_from_env()
    url = settings.database_url.get_secret_value()
    spec = find_spec("dashboard")
    if spec is None or spec.origin is None:
        _fail("the dashboard package is not installed", 1)
        return
    script = Path(spec.origin).parent / "app.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={host}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=viewer",
    ]
    typer.echo(f"bustrail dashboard: http://{host}:{port}/ over {mask_url(url)}", err=True)
    sys.stderr.flush()
    # DATABASE_URL passes through even when it came from .env; exec, so that signals
    # sent to this process (Ctrl-C, a container stop) reach Streamlit itself.
    os.execve(sys.executable, command, {**os.environ, "DATABASE_URL": url})


# -- the fault-injecting workload -------------------------------------------------------
@app.command()
@handles_errors
def load(
    seed: Annotated[int, typer.Option(help="Seed of the traffic and of where faults land.")] = 1,
    calls: Annotated[
        int, typer.Option(min=0, help="Traffic calls (injected faults come on top).")
    ] = 150,
    faults: Annotated[
        str,
        typer.Option(
            help="all (the defaults), none (a clean run), or NAME=COUNT,... with NAME one "
            "of orphan, corrupt, crash, disconnect, oversize, empty, expiry, waste, outage, "
            "untraced, duplicate, errors, slow (or a detector kind); all,orphan=5 changes one.",
        ),
    ] = "all",
    truth: Annotated[
        str | None,
        typer.Option("--truth", metavar="FILE", help="Write the ground truth here (JSON)."),
    ] = None,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent client connections.")] = 6,
) -> None:
    """Drive real daemons with realistic traffic and injected faults against DATABASE_URL.

    It starts daemons of its own: use a database no live daemon writes to.
    """
    from analysis.workload import WorkloadConfig, parse_faults, run_workload

    try:
        counts = parse_faults(faults)
    except ValueError as exc:
        _fail(f"--faults: {exc}", 2)
        return
    settings = settings_from_env()
    config = WorkloadConfig(
        database_url=settings.database_url.get_secret_value(),
        seed=seed,
        calls=calls,
        faults=counts,
        clients=clients,
        progress=True,
    )
    result = run_workload(config)
    if truth is not None:
        from pathlib import Path

        result.write(Path(truth))
    seconds = (result.finished_at - result.started_at).total_seconds()
    typer.echo(
        f"{result.transactions} calls in {seconds:.1f}s against {result.database}; "
        f"window since {result.since.isoformat()}"
    )
    for kind, ids in result.truth.items():
        if result.faults.get(kind) or ids:
            typer.echo(
                f"  {kind:<24} {result.faults.get(kind, 0):>3} injected, "
                f"{len(ids):>3} transaction(s)"
            )
    for note in result.notes:
        typer.echo(f"  note: {note}")
    if truth is not None:
        typer.echo(f"ground truth written to {truth}")


# -- silent failures and the debt ledger -------------------------------------------------
debt_app = typer.Typer(
    help="The debt ledger: the findings `bustrail analyze --record` keeps.",
    no_args_is_help=True,
)
app.add_typer(debt_app, name="debt")

_EXIT_CODES = (
    "Exit codes: 0 done; 1 the database failed, its schema is out of date, or (debt) "
    "there is no finding with that id; 2 bad options or settings."
)


def _analysis_database() -> Any:
    from bus.schema import require_schema

    db = open_database(settings_from_env())
    require_schema(db)
    return db


def _console() -> Any:
    import os

    from rich.console import Console

    # Piped output has no terminal to fit: give tables room rather than 80 columns.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
    return Console(highlight=False, width=wide)


@app.command(
    help="Find silent failures in the audit trail of DATABASE_URL: every detector over the "
    "window, and for each finding its kind, severity, transactions, tool and meaning. Run "
    "it as the role that owns the schema (row-level security would hide rows from it).",
    epilog=_EXIT_CODES,
)
@handles_errors
def analyze(
    since: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="How far back to look: transactions created in the last DURATION (90s, "
            "15m, 24h, 7d). The regressions compare it with the DURATION before it.",
        ),
    ] = "7d",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: {run, findings[, ledger]}.")
    ] = False,
    record: Annotated[
        bool,
        typer.Option("--record", help="Write the run to the debt ledger and say what changed."),
    ] = False,
    truth: Annotated[
        str | None,
        typer.Option(
            "--truth",
            metavar="FILE",
            help="Score the detectors against the ground truth `bustrail load --truth FILE` "
            "wrote: its window and parameters replace --since; every injected fault found "
            "or not is listed, and the exit code is 1 when one was missed.",
        ),
    ] = None,
) -> None:
    import json

    from analysis.detectors import run_detectors
    from analysis.duration import DurationError, parse_duration

    try:
        window = parse_duration(since)
    except DurationError as exc:
        _fail(f"invalid --since: {exc}", 2)
        return
    ground = _ground_truth(truth) if truth is not None else None
    db = _analysis_database()
    try:
        if ground is not None:
            result = run_detectors(db, ground.since, None, ground.detector_params())
        else:
            result = run_detectors(db, window)
        change = None
        if record:
            from analysis.ledger import record as record_run

            change = record_run(db, result)
    finally:
        db.dispose()
    score = _score(ground, result) if ground is not None else None
    missed = any(s["missed"] for s in (score or {}).values())
    if as_json:
        payload = result.to_dict()
        if change is not None:
            payload["ledger"] = change.to_dict()
        if score is not None:
            payload["truth"] = score
        typer.echo(json.dumps(payload))
        raise typer.Exit(1 if missed else 0)
    from analysis.report import print_findings, print_ledger_change

    console = _console()
    print_findings(console, result)
    if change is not None:
        print_ledger_change(console, change)
    if score is not None:
        _print_score(console, score)
    raise typer.Exit(1 if missed else 0)


def _ground_truth(path: str) -> Any:
    """The ground truth of ``bustrail load --truth``; exit 2 when unreadable, and 1 when
    its graces have not passed yet (the orphans would not be orphans yet)."""
    from pathlib import Path

    from analysis.workload import GroundTruth
    from bus.db import utcnow

    try:
        ground = GroundTruth.read(Path(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(f"--truth {path}: not a ground truth written by `bustrail load --truth` ({exc})", 2)
    wait = (ground.ready_at - utcnow()).total_seconds()
    if wait > 0:
        _fail(
            f"--truth {path}: the workload's graces end at {ground.ready_at:%H:%M:%S} UTC; "
            f"analyse in {wait:.0f}s (before then its orphans are not orphans yet)",
            1,
        )
    return ground


def _score(ground: Any, result: Any) -> dict[str, dict[str, Any]]:
    """For each kind with injected faults: how many, how many found, the ids missed."""
    score = {}
    for kind, ids in sorted(ground.truth.items()):
        if not ids:
            continue
        found = result.transaction_ids(kind)
        missed = sorted(set(ids) - found)
        score[kind] = {"injected": len(ids), "found": len(ids) - len(missed), "missed": missed}
    return score


def _print_score(console: Any, score: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Injected faults (--truth)", title_justify="left")
    for column in ("kind", "injected", "found", "missed"):
        table.add_column(column, no_wrap=column == "kind")
    for kind, s in score.items():
        missed = ", ".join(s["missed"]) or "-"
        table.add_row(kind, str(s["injected"]), str(s["found"]), missed)
    console.print(table)
    lost = sum(len(s["missed"]) for s in score.values())
    if lost:
        console.print(f"[red]{lost} injected fault(s) missed.[/red]")
    else:
        console.print(f"Every injected fault was found ({len(score)} kinds).")


@debt_app.command("list", epilog=_EXIT_CODES)
@handles_errors
def debt_list(
    status: Annotated[
        str,
        typer.Option(help="open, acknowledged, resolved, or all.", metavar="STATUS"),
    ] = "open",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List findings, worst first."""
    import json

    from analysis.ledger import STATUSES, entry_to_dict, list_findings

    if status not in STATUSES:
        _fail(f"invalid --status {status!r}: expected one of {', '.join(STATUSES)}", 2)
    db = _analysis_database()
    try:
        entries = list_findings(db, status)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps([entry_to_dict(e) for e in entries]))
        return
    from analysis.report import print_entries

    print_entries(_console(), entries, status)


@debt_app.command("show", epilog=_EXIT_CODES)
@handles_errors
def debt_show(
    finding_id: Annotated[int, typer.Argument(metavar="ID", help="The finding's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Show one finding: what it is, where, since when, and sample transactions."""
    import json

    from analysis.ledger import entry_to_dict, show

    db = _analysis_database()
    try:
        entry = show(db, finding_id)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(entry_to_dict(entry)))
        return
    from analysis.report import print_entry

    print_entry(_console(), entry)


@debt_app.command("ack", epilog=_EXIT_CODES)
@handles_errors
def debt_ack(
    finding_id: Annotated[int, typer.Argument(metavar="ID", help="The finding's id.")],
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who owns it (default: $USER).")
    ] = None,
) -> None:
    """Acknowledge an open finding: someone owns it. It stays debt until it resolves."""
    import getpass

    from analysis.ledger import acknowledge

    try:
        who = by or getpass.getuser()
    except (KeyError, OSError):  # no login name known (some containers)
        _fail("say who acknowledges it: --by NAME", 2)
        return
    db = _analysis_database()
    try:
        entry = acknowledge(db, finding_id, who)
    finally:
        db.dispose()
    typer.echo(
        f"finding {entry.id} ({entry.kind}, {entry.tool or 'no tool'}) acknowledged by "
        f"{entry.acknowledged_by}"
    )


# Last: `python -m daemon.cli` must see every command defined above.
@app.command()
@handles_errors
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the workload.")] = 1,
    calls: Annotated[int, typer.Option(min=10, help="Traffic calls (faults come on top).")] = 150,
) -> None:
    """The whole product in one run: daemons, a fault-injecting workload, the detectors,
    the debt ledger, a summary and an HTML report. Needs no server (embedded SQLite)."""
    from pathlib import Path

    from rich.console import Console

    from analysis.demo import print_summary, run_demo
    from bus.db import mask_url

    settings = settings_from_env()
    url = settings.database_url.get_secret_value()
    console = Console()
    console.print(f"[bold]bustrail demo[/bold] on {mask_url(url)}")
    outcome = run_demo(url, seed=seed, calls=calls, workdir=Path(".bustrail"))
    print_summary(console, outcome)
    console.print(
        f"\nReport: {outcome.report.resolve()}\n"
        "Dashboard: .venv/bin/bustrail dashboard   (then open http://127.0.0.1:8501)\n"
        "Metrics:   BUSTRAIL_AUTH_DISABLED=true .venv/bin/bustrail serve   "
        "(then open http://127.0.0.1:8765/metrics)\n"
        "Debt:      .venv/bin/bustrail debt list",
        soft_wrap=True,  # commands to copy: never broken over lines
    )
    if outcome.missed:
        raise typer.Exit(1)


if __name__ == "__main__":
    main()
