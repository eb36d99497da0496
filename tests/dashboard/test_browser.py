"""The dashboard in a real browser: `bustrail dashboard` serves a seeded SQLite file and
headless Chromium (Debian's, driven by Playwright, which downloads nothing here) opens
every page, finds no exception on any, and saves a screenshot of each.

Screenshots go to ``test-output/dashboard-browser/`` at the top of the repository.
Without Chromium or Playwright the test skips, loudly; with ``CI=true`` it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bus.db import Database
from bus.schema import upgrade
from tests.dashboard.seed import TEMPLATE, seed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "dashboard-browser"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# (path, heading): every page of dashboard/app.py
PAGES = [
    ("overview", "/", "Overview"),
    ("transactions", "/transactions", "Transactions"),
    ("breaker", "/breaker", "Circuit breaker"),
    ("debt", "/debt", "Silent failures / debt"),
]
TIMEOUT_MS = 60_000


def _missing(why: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true requires the browser test to run: {why}", pytrace=False)
    pytest.skip(f"SKIPPING BROWSER TEST: {why}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bustrail() -> list[str]:
    script = Path(sys.executable).with_name("bustrail")
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]


@pytest.fixture
def dashboard_url(tmp_path: Path) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """`bustrail dashboard --port N` over a freshly seeded SQLite file."""
    url = f"sqlite:///{tmp_path / 'bustrail.db'}"
    db = Database(url)
    upgrade(db)
    ids = seed(db).ids
    db.dispose()
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    env = {**os.environ, "DATABASE_URL": url, "BUSTRAIL_TRACE_URL_TEMPLATE": TEMPLATE}
    proc = subprocess.Popen(
        [*_bustrail(), "dashboard", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`bustrail dashboard` exited {proc.returncode}: {_read(tmp_path)}")
            try:
                if httpx.get(f"{base}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer within 60 s: {_read(tmp_path)}")
            time.sleep(0.2)
        yield base, ids
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _read(tmp_path: Path) -> str:
    return (tmp_path / "dashboard.log").read_text(errors="replace")[-3000:]


def test_every_page_renders_in_chromium(
    dashboard_url: tuple[str, dict[str, list[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed")
    base, ids = dashboard_url
    OUTPUT.mkdir(parents=True, exist_ok=True)
    fetched = ids["fetched"][0]
    visits = [*PAGES, ("transaction-detail", f"/transactions?id={fetched}", "Transactions")]
    page_errors: list[str] = []
    saved = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 2400},  # whole pages: Streamlit scrolls inside
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            for name, path, heading in visits:
                page.goto(base + path, timeout=TIMEOUT_MS)
                page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=TIMEOUT_MS)
                page.wait_for_selector(
                    '[data-testid="stApp"][data-test-script-state="notRunning"]',
                    timeout=TIMEOUT_MS,
                )
                shot = OUTPUT / f"{name}.png"
                try:
                    errors = page.locator('[data-testid="stException"]')
                    assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
                    if name != "transactions":  # every other page draws at least one chart
                        page.wait_for_selector(
                            ".vega-embed canvas, .vega-embed svg", timeout=TIMEOUT_MS
                        )
                    page.wait_for_timeout(1000)  # let the charts finish drawing
                finally:  # a picture of the page, failed or not
                    page.screenshot(path=str(shot), full_page=True)
                    saved.append(shot)
                assert page.locator('[data-testid="stException"]').count() == 0, name
                body = page.inner_text("body")
                assert "Traceback" not in body, f"{name}: {body[:2000]}"
                if name == "transaction-detail":
                    assert fetched in body
                    assert "first fetched" in body
        finally:
            context.close()
    with capsys.disabled():
        print(f"\ndashboard screenshots: {', '.join(str(s) for s in saved)}")
    assert page_errors == []
    assert [s.exists() and s.stat().st_size > 10_000 for s in saved] == [True] * len(visits)
