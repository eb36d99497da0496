"""Every dashboard page, run by Streamlit's AppTest over a seeded database (SQLite and
PostgreSQL): the numbers on the page are the ones the seed put in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from bus.db import Database
from bus.schema import upgrade
from tests.dashboard.seed import TEMPLATE, Seed, seed

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
FAILED = {"failed", "rejected", "corrupted"}
MIB = 2**20


@pytest.fixture
def seeded(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Seed]]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("BUSTRAIL_TRACE_URL_TEMPLATE", TEMPLATE)
    db = Database(db_url)
    try:
        yield db_url, seed(db)
    finally:
        db.dispose()


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert len(found) == 1, f"metric {label!r}: {[m.label for m in at.metric]}"
    return found[0]


# Each table the tests read, by a column only it has (st.dataframe keeps no key).
TABLES = {
    "latency": "p95",
    "tools": "tool",
    "tenants": "tenant",
    "errors": "error_kind",
    "results": "trace_id",
    "lifecycle": "step",
    "fields": "field",
    "outages": "duration_seconds",
    "events": "from_state",
    "findings": "acknowledged_by",
    "samples": "trace_id",
}


def table(at: AppTest, name: str) -> pd.DataFrame:
    found = [d.value for d in at.dataframe if TABLES[name] in d.value.columns]
    assert len(found) == 1, f"{len(found)} tables with a {TABLES[name]!r} column"
    return found[0]


def text(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info") for e in at.get(kind))


def mb(n: int) -> str:
    return f"{n / MIB:,.1f} MB"


# -- Overview ---------------------------------------------------------------------------------
def test_overview_shows_the_seeded_numbers(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    rows = s.in_range(24)
    at = open_page()
    assert [t.value for t in at.title] == ["Overview"]

    assert metric(at, "Transactions") == f"{len(rows):,}"
    assert metric(at, "Failed") == str(sum(r["status"] in FAILED for r in rows))
    assert metric(at, "Pending") == "1"
    inline = sum(
        r["size"]
        for r in rows
        if r["route"] in ("inline", "fallback") and r["status"] == "delivered"
    )
    stored = [r for r in rows if r["route"] == "store" and r["status"] not in ("rejected",)]
    assert metric(at, "Bytes inline") == mb(inline)
    assert metric(at, "Bytes stored") == mb(sum(r["size"] for r in stored))
    ratio = sum(r["size"] for r in stored) / sum(r["stored_size"] for r in stored)
    assert metric(at, "Compression ratio") == f"{ratio:.2f}\u00d7"

    latency = table(at, "latency")
    for row, column in (("tool (ms)", "tool_ms"), ("store (ms)", "store_ms")):
        assert latency.loc[row, "n"] == sum(r[column] is not None for r in rows)
        assert list(latency.loc[row, ["p50", "p95", "p99"]]) == pytest.approx(
            s.percentiles(column), rel=1e-9
        )

    tools = table(at, "tools").set_index("tool")
    assert tools["transactions"].to_dict() == Counter(r["tool"] for r in rows)
    assert tools.loc["generate", "failed"] == sum(
        r["status"] in FAILED for r in rows if r["tool"] == "generate"
    )
    tenants = table(at, "tenants").set_index("tenant")
    assert tenants["transactions"].to_dict() == Counter(r["tenant"] for r in rows)
    assert tenants["bytes"].to_dict() == {
        t: sum(r["size"] for r in rows if r["tenant"] == t) for t in ("acme", "globex")
    }
    errors = table(at, "errors").set_index("error_kind")
    assert errors["transactions"].to_dict() == Counter(
        r["error_kind"] for r in rows if r["error_kind"]
    )


def test_overview_follows_the_time_range(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    at = open_page()
    at.selectbox(key="range").set_value("Last 7 days").run()
    assert not at.exception
    assert metric(at, "Transactions") == str(len(s.in_range(24 * 7)))
    assert "initech" in set(table(at, "tenants")["tenant"])
    at.selectbox(key="range").set_value("Last 15 minutes").run()
    assert metric(at, "Transactions") == str(len(s.in_range(0.25)))
    assert len(s.in_range(0.25)) < len(s.in_range(24))


# -- Transactions -----------------------------------------------------------------------------
def test_transactions_search_and_filters(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    rows = s.in_range(24)
    at = open_page("views/transactions.py")
    assert [t.value for t in at.title] == ["Transactions"]
    assert set(table(at, "results")["id"]) == {str(r["id"]) for r in rows}

    at.multiselect(key="statuses").set_value(["failed"]).run()
    assert set(table(at, "results")["id"]) == {
        str(r["id"]) for r in rows if r["status"] == "failed"
    }
    at.multiselect(key="statuses").set_value([]).run()
    at.multiselect(key="tenants").set_value(["globex"]).run()
    at.multiselect(key="routes").set_value(["store"]).run()
    assert set(table(at, "results")["id"]) == {
        str(r["id"]) for r in rows if r["tenant"] == "globex" and r["route"] == "store"
    }
    at.multiselect(key="tenants").set_value([]).run()
    at.multiselect(key="routes").set_value([]).run()
    at.multiselect(key="tools").set_value(["fail"]).run()
    assert len(table(at, "results")) == 2

    wanted = next(r for r in s.live if str(r["id"]) == s.ids["fetched"][0])
    at.multiselect(key="tools").set_value([]).run()
    at.text_input(key="trace_id").input(wanted["trace_id"]).run()
    assert list(table(at, "results")["id"]) == [str(wanted["id"])]


def test_transaction_detail_shows_its_lifecycle(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    row = next(r for r in s.live if str(r["id"]) == s.ids["fetched"][0])
    at = open_page("views/transactions.py")
    at.text_input(key="tx_id").input(f"bustrail://transactions/{row['id']}").run()
    assert not at.exception
    assert list(table(at, "results")["id"]) == [str(row["id"])]
    assert metric(at, "Status") == "fetched"
    assert metric(at, "Route") == "store"
    assert metric(at, "Size") == mb(row["size"])
    assert (row["stored_size"], metric(at, "Stored size")) == (3 * MIB // 4, "768.0 KB")
    assert metric(at, "Fetches") == str(row["fetch_count"])
    steps = table(at, "lifecycle")
    assert list(steps["step"]) == ["created", "stored", "first fetched", "expires"]
    assert list(steps["after_seconds"]) == pytest.approx([0, 0.3, 2.0, 48 * 3600])
    assert steps["at"].iloc[0] == row["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    fields = table(at, "fields").set_index("field")["value"]
    assert fields["checksum (SHA-256)"] == row["checksum"]
    assert fields["tenant"] == "acme"
    assert fields["daemon"] == "d1"
    assert fields["archived"] == "no"
    assert TEMPLATE.format(trace_id=row["trace_id"]) in text(at)


def test_archived_and_failed_transactions_are_found_by_id(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    at = open_page("views/transactions.py")
    at.text_input(key="tx_id").input(s.ids["archived"][0]).run()
    assert metric(at, "Status") == "expired"
    assert table(at, "fields").set_index("field")["value"]["archived"] == "yes"
    assert "archived" in list(table(at, "lifecycle")["step"])

    at.text_input(key="tx_id").input(s.ids["outage1_oversize"][0]).run()
    assert metric(at, "Status") == "failed"
    assert [e.value for e in at.error] == [
        "**fallback_oversize**: 40 MB is over the client's 1 MB message cap"
    ]

    at.text_input(key="tx_id").input("not-an-id").run()
    assert not at.exception
    assert "is not a transaction id" in at.warning[0].value


# -- Circuit breaker --------------------------------------------------------------------------
def test_breaker_page_shows_outages_and_their_fallbacks(seeded: tuple[str, Seed]) -> None:
    at = open_page("views/breaker.py")
    assert [t.value for t in at.title] == ["Circuit breaker"]
    assert metric(at, "Trips") == "3"  # two outages, the first re-opened by a failed probe
    assert metric(at, "Outages") == "2"
    assert metric(at, "Time open") == f"{(30 + 30 + 45) / 60:.1f} min"
    assert metric(at, "Time half-open") == "3.0 s"
    assert metric(at, "Fallback oversize") == "1"
    outages = table(at, "outages")  # newest first
    assert list(outages["duration_seconds"]) == pytest.approx([46.0, 62.0])
    assert list(outages["opened"]) == [1, 2]
    assert list(outages["fallbacks"]) == [1, 4]  # the lone fallback 5 h ago is in neither
    assert list(outages["fallback_delivered"]) == [1, 3]
    assert list(outages["fallback_oversize"]) == [0, 1]
    assert not outages["ongoing"].any()
    assert len(table(at, "events")) == 8


# -- Silent failures / debt -------------------------------------------------------------------
def test_debt_page_shows_open_findings_and_burn_down(seeded: tuple[str, Seed]) -> None:
    _, s = seeded
    at = open_page("views/debt.py")
    assert [t.value for t in at.title] == ["Silent failures / debt"]
    assert metric(at, "Open findings") == "3"
    assert metric(at, "Acknowledged") == "1"
    assert metric(at, "Open regressions") == "1"
    assert metric(at, "Open after last run") == "4"
    findings = table(at, "findings")
    assert list(findings["id"]) == [2, 1, 3, 4]  # open by severity, then acknowledged
    assert list(findings["regression"]) == [True, False, False, False]

    at.selectbox(key="finding_id").set_value(1).run()
    assert not at.exception
    assert set(table(at, "samples")["id"]) == set(s.ids["stored"])
    assert "3 claim checks were stored and never fetched." in text(at)
    assert "Make the client fetch resource links." in text(at)

    at.multiselect(key="finding_statuses").set_value(["resolved"]).run()
    assert list(table(at, "findings")["id"]) == [5]


def test_acknowledge_a_finding_from_the_page(seeded: tuple[str, Seed]) -> None:
    url, _ = seeded
    at = open_page("views/debt.py")
    at.selectbox(key="finding_id").set_value(3).run()
    at.text_input(key="ack_by").input("bob").run()
    at.button(key="ack").click().run()
    assert not at.exception, [e.value for e in at.exception]

    db = Database(url)
    try:
        with db.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT status, acknowledged_by, acknowledged_at FROM findings WHERE id = 3"
                )
            ).one()
    finally:
        db.dispose()
    assert (str(row.status), row.acknowledged_by) == ("acknowledged", "bob")
    assert row.acknowledged_at is not None
    assert metric(at, "Open findings") == "2"
    assert metric(at, "Acknowledged") == "2"


# -- nothing to show ----------------------------------------------------------------------
PAGES = [None, "views/transactions.py", "views/breaker.py", "views/debt.py"]


@pytest.mark.parametrize("page", PAGES)
def test_missing_database_says_no_data_yet(
    page: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nothing" / "bustrail.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    at = open_page(page)
    assert "No data yet" in at.info[0].value
    assert "make demo" in at.info[0].value
    assert not path.exists()  # looking did not create it


@pytest.mark.parametrize("page", PAGES)
def test_empty_database_says_no_data_yet(
    page: str | None, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    at = open_page(page)
    notice = at.info[0].value
    assert (
        "No data yet" in notice
        or "No breaker has changed state" in notice
        or ("No findings yet" in notice)
    )


def test_unmigrated_database_says_no_data_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blank.db"
    db = Database(f"sqlite:///{path}")
    db.ping()  # creates the file, no tables
    db.dispose()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    at = open_page()
    assert "has no bustrail tables yet" in at.info[0].value


def test_seed_is_what_the_schema_accepts(sqlite_url: str) -> None:
    """The seed itself: every row written (so the tests above compare with real rows)."""
    db = Database(sqlite_url)
    upgrade(db)
    s = seed(db)
    with db.connect() as conn:
        live = conn.execute(sa.text("SELECT count(*) FROM transactions")).scalar()
        archived = conn.execute(sa.text("SELECT count(*) FROM transactions_archive")).scalar()
    db.dispose()
    assert (live, archived) == (len(s.live), len(s.archived))
