"""A real Prometheus scrapes a real daemon and sees its breaker trip.

The daemon runs on PostgreSQL through a TCP proxy; cutting the proxy is a real outage.
Prometheus (the Debian package, started here on a free port with the job of the
example config in deploy/prometheus/, 1 s intervals) scrapes the daemon's /metrics and
evaluates the real alert rules; the test reads everything back through Prometheus's
HTTP API.
Without the ``prometheus`` binary this skips loudly, except under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from daemon.client import Client
from tests.helpers.daemon import ThreadDaemon
from tests.helpers.tcpproxy import TCPProxy
from tests.observability.support import (
    REPO,
    UNIT,
    free_port,
    require_program,
    running_daemon,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DEPLOY = REPO / "deploy" / "prometheus"
BREAKER_THRESHOLD = 2  # CIRCUIT_BREAKER_THRESHOLD: consecutive store failures to open


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Prometheus scraping ``target`` every second with bustrail's rules; its base URL."""
    binary = require_program("prometheus")
    # The example config's job, scraping every second (JSON is YAML to Prometheus).
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "bustrail-alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "bustrail",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{log_path.read_text()}")
            try:
                return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, "prometheus to be ready", timeout=2 * UNIT)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(UNIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(UNIT)


def api(base: str, path: str, **params: str) -> Any:
    response = httpx.get(f"{base}/api/v1/{path}", params=params, timeout=UNIT)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> list[float]:
    """The values of an instant query's result, one per series."""
    return [float(item["value"][1]) for item in api(base, "query", query=promql)["result"]]


def proxied(url: str, proxy: TCPProxy) -> str:
    return (
        sa.engine.make_url(url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )


def call_generate(daemon: ThreadDaemon, calls: int, seed: int = 0) -> list[str | None]:
    """``calls`` results over the threshold; the route each one took."""

    async def run() -> list[str | None]:
        async with await Client.connect(daemon.url) as client:
            routes = []
            for i in range(calls):
                result = await client.call("generate", {"size": 5_000, "seed": seed + i})
                assert not result.is_error, result.raw
                routes.append(result.route)
            return routes

    return asyncio.run(run())


def test_prometheus_sees_the_daemon_up_and_its_breaker_trip(tmp_path: Path, pg_url: str) -> None:
    url = sa.engine.make_url(pg_url)
    proxy = TCPProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        with running_daemon(
            tmp_path,
            proxied(pg_url, proxy),
            message_bus_threshold_bytes=1024,
            circuit_breaker_threshold=BREAKER_THRESHOLD,
            circuit_breaker_open_seconds=600,  # stays open while Prometheus looks
            database_pool_size=2,
        ) as daemon:
            target = daemon.http.removeprefix("http://")
            with prometheus(tmp_path, target) as base:
                scenario(base, daemon, proxy, target)
    finally:
        proxy.close()


def scenario(base: str, daemon: ThreadDaemon, proxy: TCPProxy, target: str) -> None:
    # The target is up, and the breaker's series exist, closed, with no trip yet.
    def target_up() -> bool:
        active = api(base, "targets")["activeTargets"]
        return any(
            t["scrapeUrl"] == f"http://{target}/metrics" and t["health"] == "up" for t in active
        )

    wait_until(target_up, "prometheus to scrape the daemon")
    assert query(base, f'up{{job="bustrail", instance="{target}"}}') == [1.0]
    assert wait_until(
        lambda: query(base, 'bustrail_breaker_trips_total{breaker="store"}'),
        "the trips counter in prometheus",
    ) == [0.0]
    assert query(base, 'bustrail_breaker_state{breaker="store", state="closed"}') == [1.0]
    assert query(base, 'bustrail_breaker_state{breaker="store", state="open"}') == [0.0]

    # The real rule file loaded, every alert in it.
    loaded = {r["name"] for g in api(base, "rules")["groups"] for r in g["rules"]}
    assert {"BustrailBreakerOpen", "BustrailBreakerFlapping", "BustrailDaemonDown"} <= loaded

    assert call_generate(daemon, 1) == ["store"]  # the store works before the outage

    # A real outage: every store call fails, results take the fallback, the breaker opens.
    proxy.cut()
    routes = call_generate(daemon, BREAKER_THRESHOLD + 2, seed=100)
    assert set(routes) == {"fallback"}, routes
    assert daemon.runtime.breaker is not None
    assert daemon.runtime.breaker.state.value == "open"

    wait_until(
        lambda: query(base, 'bustrail_breaker_state{breaker="store", state="open"}') == [1.0],
        "prometheus to see the breaker open",
    )
    assert query(base, 'bustrail_breaker_state{breaker="store", state="closed"}') == [0.0]
    wait_until(
        lambda: query(base, 'bustrail_breaker_trips_total{breaker="store"}') == [1.0],
        "prometheus to see one trip",
    )
    assert query(base, 'increase(bustrail_breaker_trips_total{breaker="store"}[5m])')[0] > 0
    assert query(base, 'bustrail_fallbacks_total{outcome="delivered"}')[0] >= BREAKER_THRESHOLD
    # ... and the alert rule, evaluated on these very series, is on its way to firing.
    wait_until(
        lambda: query(base, 'ALERTS{alertname="BustrailBreakerOpen", breaker="store"}'),
        "BustrailBreakerOpen to become pending",
    )
    proxy.restore()
