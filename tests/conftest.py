"""Shared fixtures: a database on each backend (SQLite file, real PostgreSQL).

PostgreSQL is reached through one variable, ``BUSTRAIL_TEST_DATABASE_URL`` (default: the
local server on 127.0.0.1:5432). A session fixture migrates a template database once;
each test gets a fresh copy (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
With ``CI=true`` a missing server fails the run; elsewhere those tests skip, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bus.db import Database, normalize_url
from bus.schema import upgrade

PG_URL = os.environ.get("BUSTRAIL_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _with_database(url: str, name: str) -> str:
    return (
        sa.engine.make_url(normalize_url(url))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


class PostgresServer:
    """Creates and drops databases on the test server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")

    def execute(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(sql))

    def create_database(self, template: str | None = None) -> str:
        name = f"bustrail_test_{uuid.uuid4().hex[:12]}"
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{suffix}')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url_for(self, name: str) -> str:
        return _with_database(self.url, name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer(PG_URL)
    try:
        server.execute("SELECT 1")
    except Exception as exc:  # the server is simply not there
        message = (
            f"PostgreSQL not reachable at BUSTRAIL_TEST_DATABASE_URL={PG_URL!r}: "
            f"{str(exc).splitlines()[0]}"
        )
        if IN_CI:
            pytest.fail(f"CI=true requires PostgreSQL. {message}", pytrace=False)
        pytest.skip(f"SKIPPING POSTGRESQL TESTS: {message}")
    yield server
    server.admin.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_server: PostgresServer) -> Iterator[str]:
    """A migrated database to copy from."""
    name = pg_server.create_database()
    db = Database(pg_server.url_for(name))
    try:
        upgrade(db)
    finally:
        db.dispose()
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_server: PostgresServer, pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test."""
    name = pg_server.create_database(template=pg_template)
    yield pg_server.url_for(name)
    pg_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bustrail.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database URL, once per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bustrail.db'}"
        db = Database(url)
        upgrade(db)
        db.dispose()
        return url
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()
