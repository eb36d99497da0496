"""PostgreSQL login roles for tests that must run as the daemon does: a non-superuser
under row-level security, made the way an operator makes it (``bustrail_grant_app_role``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from bus.db import Database, normalize_url

__all__ = ["app_role", "as_role", "create_role", "drop_role"]


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (trust auth: no password)."""
    return (
        sa.engine.make_url(normalize_url(url))
        .set(username=role, password=None)
        .render_as_string(hide_password=False)
    )


def create_role(owner: Database, prefix: str = "bustrail_app", *, grant: bool = True) -> str:
    """A new NOSUPERUSER NOBYPASSRLS login role, granted the daemon's rights unless
    ``grant`` is false; its name."""
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with owner.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS'))
        if grant:
            conn.execute(sa.text("SELECT bustrail_grant_app_role(:role)"), {"role": role})
    return role


def drop_role(owner: Database, role: str) -> None:
    """Drop ``role`` and what it owns. Its sessions must be gone first: one still exiting
    may be dropping its temporary tables, which REASSIGN OWNED would trip over."""
    deadline = time.monotonic() + 10
    while True:
        with owner.begin() as conn:  # a new transaction each time: fresh statistics
            alive = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = :r"
                ),
                {"r": role},
            ).scalar_one()
        if not alive:
            break
        assert time.monotonic() < deadline, f"the sessions of {role} do not end"
        time.sleep(0.02)
    with owner.begin() as conn:
        conn.execute(sa.text(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER'))
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))


@contextlib.contextmanager
def app_role(
    owner_url: str, prefix: str = "bustrail_app", *, tenant: str | None = None
) -> Iterator[str]:
    """A daemon role on the database of ``owner_url`` (its sessions pinned to ``tenant``
    when given); yields that database's URL for the role, drops the role afterwards."""
    owner = Database(owner_url)
    try:
        role = create_role(owner, prefix)
        try:
            if tenant is not None:
                literal = tenant.replace("'", "''")  # ALTER ROLE takes no parameters
                with owner.begin() as conn:
                    conn.execute(
                        sa.text(f"ALTER ROLE \"{role}\" SET bustrail.tenant = '{literal}'")
                    )
            yield as_role(owner_url, role)
        finally:
            drop_role(owner, role)
    finally:
        owner.dispose()
