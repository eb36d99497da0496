"""Tests for bus.db's transaction ids: UUIDv7 with the creation time inside, random bits
from the operating system's CSPRNG (drawn a block at a time), never shared with a fork;
and the masking of secrets in database URLs."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from bus.db import _RandomPool, created_at_of, mask_url, new_transaction_id


def test_a_transaction_id_is_a_uuid7_carrying_its_creation_time() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    tx_id, created_at = new_transaction_id()
    assert tx_id.version == 7
    assert tx_id.variant == uuid.RFC_4122
    assert created_at == created_at_of(tx_id)
    assert created_at.microsecond % 1000 == 0  # millisecond precision
    assert before <= created_at <= datetime.now(UTC)


def test_ids_for_a_given_time_carry_it_and_are_all_different() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    ids = [new_transaction_id(at) for _ in range(5000)]
    assert {created for _id, created in ids} == {at}
    assert len({tx_id for tx_id, _created in ids}) == len(ids)


def test_the_pool_hands_out_fresh_bytes_across_blocks() -> None:
    pool = _RandomPool(block=64)
    drawn = [pool.integer(10) for _ in range(100)]  # 16 blocks' worth
    assert len(set(drawn)) == len(drawn)
    assert all(0 <= n < 1 << 80 for n in drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    new_transaction_id()  # the parent's pool holds a block now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, as text, to the parent
        try:
            os.write(write, str(new_transaction_id()[0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_id = uuid.UUID(pipe.read())
    os.waitpid(pid, 0)
    parent_id = new_transaction_id()[0]
    # Same millisecond or not, the random bits differ: the child started a new block.
    assert child_id.int & ((1 << 74) - 1) != parent_id.int & ((1 << 74) - 1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cr3t@db:5432/bus", "postgresql://app:***@db:5432/bus"),
        ("postgresql://db/bus?password=qpw", "postgresql://db/bus?password=***"),
        (
            "postgresql://app@db/bus?sslmode=verify-full&sslpassword=keypw&application_name=a%20b",
            "postgresql://app@db/bus?application_name=a+b&sslmode=verify-full&sslpassword=***",
        ),
        (
            "postgresql+psycopg://u:pw@db/bus?PassWord=one&password=two&auth_token=t0k",
            "postgresql+psycopg://u:***@db/bus?PassWord=***&auth_token=***&password=***",
        ),
        ("sqlite:///var/bustrail.db", "sqlite:///var/bustrail.db"),
        ("postgresql://db/bus?connect_timeout=5", "postgresql://db/bus?connect_timeout=5"),
        ("not a url", "<unparseable database URL>"),
    ],
)
def test_mask_url_hides_passwords_in_the_credentials_and_the_query(url: str, shown: str) -> None:
    masked = mask_url(url)
    assert masked == shown
    for secret in ("s3cr3t", "qpw", "keypw", "one", "two", "t0k"):
        assert f"={secret}" not in masked and f":{secret}@" not in masked
