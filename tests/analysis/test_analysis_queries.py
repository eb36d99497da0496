"""The named SQL of analysis/sql: every block parses, every detector's query exists for
both dialects, and malformed files are refused with the place named."""

from __future__ import annotations

import pytest

from analysis.queries import canonical_id, parse_blocks, queries, query

_USED = {
    "window_size",
    "orphaned_claim_check",
    "checksum_mismatch",
    "stuck_pending",
    "lost_response",
    "fallback_oversize",
    "empty_success",
    "cleanup_lag",
    "compression_waste",
    "missing_trace",
    "duplicate_delivery",
    "breaker_transitions",
    "fallbacks_between",
    "call_errors_by_tool",
    "call_errors",
    "latency_by_tool",
    "slow_calls",
}


def test_every_query_exists_for_both_dialects() -> None:
    for name in _USED:
        for dialect in ("postgresql", "sqlite"):
            sql = query(name, dialect)
            assert sql.lstrip().upper().startswith(("SELECT", "WITH")), name
            assert "--" not in sql  # comments stay in the file


def test_variants_are_few_and_preferred_on_their_dialect() -> None:
    variants = sorted(name for name in queries() if "@" in name)
    assert variants == ["latency_by_tool@postgresql", "latency_by_tool@sqlite"]
    assert "percentile_cont" in query("latency_by_tool", "postgresql")
    assert "percentile_cont" not in query("latency_by_tool", "sqlite")


def test_no_query_goes_unused() -> None:
    assert {name.split("@")[0] for name in queries()} == _USED


def test_parse_blocks() -> None:
    text = (
        "-- header comment\n-- name: a\n-- what a does\nSELECT 1;\n\n-- name: b@sqlite\nSELECT 2\n"
    )
    assert parse_blocks(text) == {"a": "SELECT 1", "b@sqlite": "SELECT 2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "defined twice"),
        ("-- name: a\n-- only a comment\n", "empty"),
        ("-- name: Bad-Name\nSELECT 1\n", "malformed query header"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_blocks(text, "x.sql")


def test_unknown_names_and_dialects() -> None:
    with pytest.raises(KeyError, match="no query named 'nope'"):
        query("nope", "sqlite")
    with pytest.raises(ValueError, match="unknown dialect"):
        query("cleanup_lag", "mysql")


def test_canonical_ids() -> None:
    dashed = "01a21a39-1e7f-785a-befb-9d3174eb2285"
    assert canonical_id(dashed.replace("-", "")) == dashed
    assert canonical_id(dashed.upper()) == dashed
