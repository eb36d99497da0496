"""Every error bustrail raises on purpose.

The hierarchy::

    BustrailError
    ├── SettingsError            a setting is missing or invalid (names the variable)
    ├── PayloadTooLarge          over MESSAGE_BUS_MAX_PAYLOAD_MB: the transaction is rejected
    ├── TransactionNotFound      unknown id, or another tenant's (indistinguishable on purpose)
    ├── TransactionUnavailable   known, but its payload is gone (expired) or never arrived
    ├── ChecksumMismatch         stored bytes no longer match their SHA-256: status corrupted
    ├── StoreError               the store could not do what was asked (database down, ...)
    │   └── CircuitOpenError     the breaker refused the call without trying (see breaker.py)
    └── SchemaError              the database schema is missing or older than this code

Errors carry the facts as attributes and a readable ``__str__``; lower-level causes are
chained with ``raise ... from``.
"""

from __future__ import annotations

import uuid

__all__ = [
    "BustrailError",
    "ChecksumMismatch",
    "PayloadTooLarge",
    "SchemaError",
    "SettingsError",
    "StoreError",
    "TransactionNotFound",
    "TransactionUnavailable",
]


class BustrailError(Exception):
    """Root of every error bustrail raises on purpose."""


class SettingsError(BustrailError):
    """One or more settings are invalid; the message names each variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


class PayloadTooLarge(BustrailError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload of {size:,} bytes is over the limit of {limit:,} bytes "
            "(MESSAGE_BUS_MAX_PAYLOAD_MB)"
        )


class TransactionNotFound(BustrailError):
    def __init__(self, transaction_id: uuid.UUID | str) -> None:
        self.transaction_id = str(transaction_id)
        super().__init__(f"transaction {self.transaction_id} not found")


class TransactionUnavailable(BustrailError):
    def __init__(self, transaction_id: uuid.UUID | str, status: str) -> None:
        self.transaction_id = str(transaction_id)
        self.status = status
        super().__init__(
            f"transaction {self.transaction_id} has no payload to read (status {status})"
        )


class ChecksumMismatch(BustrailError):
    def __init__(self, transaction_id: uuid.UUID | str, where: str) -> None:
        self.transaction_id = str(transaction_id)
        self.where = where
        super().__init__(
            f"transaction {self.transaction_id} is corrupted: {where} does not match its "
            "SHA-256 checksum; no bytes past the damage were returned"
        )


class StoreError(BustrailError):
    """The store failed (database unreachable, disk full, ...). Counts against the breaker."""


class SchemaError(BustrailError):
    """The database has no bustrail schema, or an older one: run `bustrail db upgrade`."""
