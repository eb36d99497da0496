"""Fixtures for the end-to-end outage tests: PostgreSQL behind a proxy the test cuts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bus.db import normalize_url
from tests.helpers.tcpproxy import TCPProxy


def through(url: str, proxy: TCPProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parsed = sa.engine.make_url(normalize_url(url)).set(host="127.0.0.1", port=proxy.port)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[TCPProxy]:
    """A TCP proxy in front of the test PostgreSQL server: ``cut()`` is a real outage."""
    target = sa.engine.make_url(normalize_url(pg_url))
    proxy = TCPProxy(target.host or "127.0.0.1", target.port or 5432)
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_pg_url(pg_url: str, pg_proxy: TCPProxy) -> str:
    """The fresh migrated test database, reached through ``pg_proxy``."""
    return through(pg_url, pg_proxy)
