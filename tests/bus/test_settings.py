"""Tests for bus.settings: the defaults of DESIGN.md, one clear error per bad variable,
no secret ever echoed, and `bustrail config show` masking them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bus.breaker import BreakerConfig
from bus.errors import SettingsError
from bus.settings import DEFAULT_DATABASE_URL, Settings, load_settings, parse_auth_tokens

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _is_setting(name: str) -> bool:
    return name.lower() in Settings.model_fields


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No bustrail variable from the outside, and a working directory with no `.env`."""
    for name in list(os.environ):
        if _is_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


def _mentions(message: str, name: str) -> int:
    return len(re.findall(rf"\b{name}\b", message))


# -- defaults ---------------------------------------------------------------------------


def test_defaults_match_the_design() -> None:
    s = load_settings()
    assert s.message_bus_enabled is True
    assert s.message_bus_ttl_hours == 48
    assert s.message_bus_max_payload_mb == 100
    assert s.message_bus_compression == "zstd"
    assert s.circuit_breaker_enabled is True
    assert s.circuit_breaker_threshold == 5
    assert s.fallback_to_websocket is True
    assert s.message_bus_threshold_bytes == 1_048_576
    assert s.websocket_max_message_mb == 32
    assert s.database_url.get_secret_value() == DEFAULT_DATABASE_URL
    assert DEFAULT_DATABASE_URL.startswith("sqlite:///")
    assert s.bustrail_auth_tokens is None and s.bustrail_auth_disabled is False
    assert s.message_bus_compression_level is None
    # What the rest of bustrail reads from them.
    assert s.threshold_bytes == MIB
    assert s.max_payload_bytes == 100 * MIB
    assert s.websocket_max_message_bytes == 32 * MIB
    assert s.ttl_seconds == 48 * 3600
    assert s.auth_tokens() == {}
    assert s.breaker_config() == BreakerConfig(
        failure_threshold=5,
        window_size=s.circuit_breaker_window_size,
        minimum_calls=s.circuit_breaker_minimum_calls,
        failure_rate_threshold=s.circuit_breaker_failure_rate,
        slow_call_seconds=s.circuit_breaker_slow_call_seconds,
        open_seconds=s.circuit_breaker_open_seconds,
        half_open_max_calls=s.circuit_breaker_half_open_calls,
    )


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "MESSAGE_BUS_TTL_HOURS=12\nCIRCUIT_BREAKER_THRESHOLD=9\nMESSAGE_BUS_COMPRESSION_LEVEL=\n"
    )
    monkeypatch.setenv("CIRCUIT_BREAKER_THRESHOLD", "3")  # the environment wins
    monkeypatch.setenv("message_bus_enabled", "false")  # names are case-insensitive
    s = load_settings()
    assert s.message_bus_ttl_hours == 12
    assert s.circuit_breaker_threshold == 3
    assert s.message_bus_enabled is False
    assert s.message_bus_compression_level is None  # empty: the codec's default


def test_compression_level_within_the_codecs_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE_BUS_COMPRESSION", "gzip")
    monkeypatch.setenv("MESSAGE_BUS_COMPRESSION_LEVEL", "9")
    assert load_settings().message_bus_compression_level == 9
    monkeypatch.setenv("MESSAGE_BUS_COMPRESSION", "zstd")
    monkeypatch.setenv("MESSAGE_BUS_COMPRESSION_LEVEL", "19")
    assert load_settings().message_bus_compression_level == 19


# -- one clear error per bad variable ---------------------------------------------------------

BOOLEANS = "use true/false, 1/0, yes/no or on/off"
CHUNK_RANGE = "use an integer >= 65536 and <= 268435456"
BAD = [
    # (variable, value, fragments the message must hold)
    ("MESSAGE_BUS_ENABLED", "maybe", ["valid boolean", BOOLEANS]),
    ("CIRCUIT_BREAKER_ENABLED", "perhaps", ["valid boolean", BOOLEANS]),
    ("FALLBACK_TO_WEBSOCKET", "2", ["valid boolean", BOOLEANS]),
    ("BUSTRAIL_AUTH_DISABLED", "nah", ["valid boolean", BOOLEANS]),
    ("MESSAGE_BUS_TTL_HOURS", "-1", ["greater than 0"]),
    ("MESSAGE_BUS_TTL_HOURS", "0", ["greater than 0"]),
    ("MESSAGE_BUS_TTL_HOURS", "two days", ["valid number", "use a number > 0"]),
    ("MESSAGE_BUS_MAX_PAYLOAD_MB", "-5", ["greater than 0"]),
    ("CIRCUIT_BREAKER_THRESHOLD", "-4", ["greater than or equal to 1"]),
    ("CIRCUIT_BREAKER_THRESHOLD", "0", ["greater than or equal to 1"]),
    ("CIRCUIT_BREAKER_THRESHOLD", "five", ["valid integer", "use an integer >= 1"]),
    (
        "CIRCUIT_BREAKER_FAILURE_RATE",
        "1.5",
        ["less than or equal to 1", "use a number > 0 and <= 1"],
    ),
    ("CIRCUIT_BREAKER_FAILURE_RATE", "half", ["valid number", "use a number > 0 and <= 1"]),
    ("CIRCUIT_BREAKER_WINDOW_SIZE", "0", ["greater than or equal to 1"]),
    ("MESSAGE_BUS_THRESHOLD_BYTES", "100", ["greater than or equal to 1024"]),
    ("MESSAGE_BUS_CHUNK_BYTES", "1000", ["greater than or equal to 65536", CHUNK_RANGE]),
    ("MESSAGE_BUS_CHUNK_BYTES", str(512 * MIB), ["less than or equal to 268435456", CHUNK_RANGE]),
    ("DATABASE_POOL_SIZE", "2.5", ["valid integer", "use an integer >= 1 and <= 200"]),
    ("WEBSOCKET_MAX_MESSAGE_MB", "0", ["greater than 0"]),
    ("DATABASE_POOL_SIZE", "0", ["greater than or equal to 1"]),
    ("BUSTRAIL_AUDIT_BATCH_SIZE", "0", ["greater than or equal to 1"]),
    ("BUSTRAIL_ABANDON_PENDING_SECONDS", "-1", ["greater than 0"]),
    ("BUSTRAIL_TOOL_TIMEOUT_SECONDS", "0", ["greater than 0"]),
    ("MESSAGE_BUS_COMPRESSION", "brotli", ["'none'", "'gzip'", "'zstd'"]),
    ("ENVIRONMENT", "prod", ["'development'", "'test'", "'staging'", "'production'"]),
    ("BUSTRAIL_TRACE_EXPORTER", "jaeger", ["'none'", "'console'", "'otlp'"]),
    ("DATABASE_URL", "mysql://app:hunter2@db/prod", ["sqlite:///", "postgresql://"]),
    ("DATABASE_URL", "garbage", ["sqlite:///", "postgresql://"]),
    ("BUSTRAIL_AUTH_TOKENS", "s3cr3t-t0ken-no-tenant", ["token=tenant", "entry 1"]),
    ("BUSTRAIL_AUTH_TOKENS", "good-token=acme,s3cr3t-t0ken=", ["token=tenant", "entry 2"]),
    ("MESSAGE_BUS_COMPRESSION_LEVEL", "fast", ["valid integer"]),
    ("MESSAGE_BUS_COMPRESSION_LEVEL", "23", ["1-22", "zstd"]),
]


@pytest.mark.parametrize(("name", "value", "fragments"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_each_bad_setting_is_named_once_with_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragments: list[str]
) -> None:
    message = _error(monkeypatch, **{name: value})
    assert _mentions(message, name) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message and "pydantic" not in message


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        (
            "MESSAGE_BUS_ENABLED",
            "maybe",
            "MESSAGE_BUS_ENABLED='maybe': Input should be a valid boolean, unable to interpret "
            f"input; {BOOLEANS}",
        ),
        # One bound: pydantic's message already says it; nothing is added.
        ("MESSAGE_BUS_TTL_HOURS", "0", "MESSAGE_BUS_TTL_HOURS='0': Input should be greater than 0"),
        (
            "CIRCUIT_BREAKER_THRESHOLD",
            "0",
            "CIRCUIT_BREAKER_THRESHOLD='0': Input should be greater than or equal to 1",
        ),
        # No bounds: nothing to add to "a valid integer".
        (
            "MESSAGE_BUS_COMPRESSION_LEVEL",
            "fast",
            "MESSAGE_BUS_COMPRESSION_LEVEL='fast': Input should be a valid integer, unable to "
            "parse string as an integer",
        ),
    ],
)
def test_what_is_accepted_is_added_only_where_it_says_more(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, line: str
) -> None:
    assert _error(monkeypatch, **{name: value}).splitlines()[1:] == [f"  {line}"]


@pytest.mark.parametrize("pair", BOOLEANS.removeprefix("use ").replace(" or ", ", ").split(", "))
def test_the_boolean_spellings_the_error_offers_are_accepted(
    monkeypatch: pytest.MonkeyPatch, pair: str
) -> None:
    yes, no = pair.split("/")
    for value, expected in ((yes, True), (no, False), (yes.upper(), True), (no.upper(), False)):
        monkeypatch.setenv("MESSAGE_BUS_ENABLED", value)
        assert load_settings().message_bus_enabled is expected, value


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("DATABASE_URL", "mysql://app:hunter2@db.internal/prod", "hunter2"),
        ("BUSTRAIL_AUTH_TOKENS", "s3cr3t-t0ken-no-tenant", "s3cr3t"),
        ("BUSTRAIL_AUTH_TOKENS", "good-t0ken=acme,s3cr3t-t0ken=", "t0ken"),
        ("BUSTRAIL_AUTH_TOKENS", "s3cr3t-t0ken=acme,s3cr3t-t0ken", "s3cr"),
    ],
)
def test_secrets_are_not_echoed(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: str
) -> None:
    message = _error(monkeypatch, **{name: value})
    assert secret not in message
    assert f"{name}='***'" in message


def test_minimum_calls_over_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(
        monkeypatch, CIRCUIT_BREAKER_MINIMUM_CALLS="30", CIRCUIT_BREAKER_WINDOW_SIZE="20"
    )
    assert _mentions(message, "CIRCUIT_BREAKER_MINIMUM_CALLS") == 1
    assert "(30) must not exceed CIRCUIT_BREAKER_WINDOW_SIZE (20)" in message


def test_gzip_level_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(
        monkeypatch, MESSAGE_BUS_COMPRESSION="gzip", MESSAGE_BUS_COMPRESSION_LEVEL="12"
    )
    assert _mentions(message, "MESSAGE_BUS_COMPRESSION_LEVEL") == 1
    assert "must be 1-9 for gzip" in message


def test_several_bad_settings_are_each_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(
        monkeypatch,
        MESSAGE_BUS_COMPRESSION="brotli",
        CIRCUIT_BREAKER_THRESHOLD="-4",
        MESSAGE_BUS_ENABLED="sometimes",
    )
    lines = message.splitlines()[1:]
    assert len(lines) == 3
    for name in ("MESSAGE_BUS_COMPRESSION", "CIRCUIT_BREAKER_THRESHOLD", "MESSAGE_BUS_ENABLED"):
        assert _mentions(message, name) == 1
        assert sum(_mentions(line, name) for line in lines) == 1


# -- auth tokens ---------------------------------------------------------------------------


def test_auth_tokens_inline_and_from_a_file(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    monkeypatch.setenv("BUSTRAIL_AUTH_TOKENS", " tok1=acme , tok2 = globex ,")
    assert load_settings().auth_tokens() == {"tok1": "acme", "tok2": "globex"}

    tokens = clean_env / "tokens"
    tokens.write_text("# comment\ntok3=acme\n\n tok4=initech \n")
    monkeypatch.setenv("BUSTRAIL_AUTH_TOKENS", f"@{tokens}")
    assert load_settings().auth_tokens() == {"tok3": "acme", "tok4": "initech"}

    tokens.write_text("tok3=acme\nh1dden-t0ken\n")
    with pytest.raises(SettingsError) as info:
        load_settings().auth_tokens()
    assert "BUSTRAIL_AUTH_TOKENS" in str(info.value) and "h1dden" not in str(info.value)

    monkeypatch.setenv("BUSTRAIL_AUTH_TOKENS", f"@{clean_env / 'missing'}")
    with pytest.raises(SettingsError, match="BUSTRAIL_AUTH_TOKENS: cannot read token file"):
        load_settings().auth_tokens()


def test_parse_auth_tokens() -> None:
    assert parse_auth_tokens("") == {}
    assert parse_auth_tokens("a=b") == {"a": "b"}
    with pytest.raises(ValueError, match="entry 1: expected token=tenant, got '=acme'"):
        parse_auth_tokens("=acme")


# -- bustrail config show -------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        env={**base, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_config_show_masks_secrets(clean_env: Path) -> None:
    done = _cli(
        ["config", "show"],
        {
            "DATABASE_URL": "postgresql://app:hunter2@db.example.com:5432/prod",
            "BUSTRAIL_AUTH_TOKENS": "s3cr3t-t0ken=acme",
            "MESSAGE_BUS_TTL_HOURS": "12",
        },
        clean_env,
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr
    shown = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert shown["DATABASE_URL"] == "postgresql://app:***@db.example.com:5432/prod"
    assert shown["BUSTRAIL_AUTH_TOKENS"] == "********"
    assert shown["MESSAGE_BUS_TTL_HOURS"] == "12.0"
    assert shown["CIRCUIT_BREAKER_THRESHOLD"] == "5"
    assert {name.lower() for name in shown} >= set(Settings.model_fields)


def test_config_show_says_which_booleans_it_accepts(clean_env: Path) -> None:
    done = _cli(["config", "show"], {"MESSAGE_BUS_ENABLED": "maybe"}, clean_env)
    assert done.returncode == 2
    assert "MESSAGE_BUS_ENABLED='maybe': Input should be a valid boolean" in done.stderr
    assert BOOLEANS in done.stderr


def test_config_show_with_a_bad_setting_is_one_line_and_exit_2(clean_env: Path) -> None:
    done = _cli(["config", "show"], {"MESSAGE_BUS_TTL_HOURS": "-1"}, clean_env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("bustrail: invalid settings:")
    assert _mentions(done.stderr, "MESSAGE_BUS_TTL_HOURS") == 1
