"""Tools from the ``bustrail.tools`` entry-point group, as an installed plugin gives them.

Each test lays out real installed distributions in a temporary folder (a module and a
``*.dist-info`` with ``METADATA`` and ``entry_points.txt``), puts it on the PYTHONPATH
of a ``bustrail serve`` subprocess, and lets importlib.metadata find them there.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.client import Client
from tests.helpers.daemon import DaemonProcess, daemon_env

GOOD_TOOLS = '''
from daemon.tools import tool


@tool(name="shout")
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper() + "!"
'''


def install(
    site: Path, dist: str, entry: str, module: str, source: str, attr: str | None = None
) -> None:
    """Install distribution ``dist`` into ``site``: module ``module`` (``source``) and
    ``entry = module`` (or ``module:attr``) in the bustrail.tools group."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    value = f"{module}:{attr}" if attr else module
    (info / "entry_points.txt").write_text(f"[bustrail.tools]\n{entry} = {value}\n")


def plugin_env(tmp_path: Path, site: Path) -> dict[str, str]:
    env = daemon_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def refused_start_up(tmp_path: Path, site: Path) -> str:
    """Run ``bustrail serve`` with the distributions of ``site``: it must refuse to start
    (exit 2, no traceback); the one line of its error naming the entry point."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--port", "0"],
        env=plugin_env(tmp_path, site),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "listening" not in done.stdout
    (line,) = [line for line in done.stderr.splitlines() if "entry point" in line]
    return line


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder of installed distributions, with one good tool plugin in it."""
    folder = tmp_path / "site"
    folder.mkdir()
    install(folder, "bustrail-shout", "shouting", "bt_shout_tools", GOOD_TOOLS)
    return folder


def test_an_entry_point_s_tools_are_served(tmp_path: Path, site: Path) -> None:
    daemon = DaemonProcess(plugin_env(tmp_path, site))
    try:

        async def scenario() -> tuple[set[str], str, bool]:
            async with await Client.connect(daemon.url) as client:
                names = {t["name"] for t in await client.list_tools()}
                result = await client.call("shout", {"text": "plugged in"})
                return names, result.text, result.is_error

        names, text, is_error = asyncio.run(scenario())
    finally:
        daemon.stop()
    assert {"shout", "echo"} <= names
    assert (text, is_error) == ("PLUGGED IN!", False)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("raise RuntimeError('plugin exploded')\n", "RuntimeError: plugin exploded"),
        ("import bt_no_such_dependency\n", "No module named 'bt_no_such_dependency'"),
        (GOOD_TOOLS.replace('name="shout"', 'name="echo"'), "'echo' is registered twice"),
    ],
    ids=["raises-on-import", "missing-dependency", "name-taken"],
)
def test_a_broken_entry_point_refuses_start_up_naming_it(
    tmp_path: Path, site: Path, source: str, error: str
) -> None:
    install(site, "bustrail-broken", "broken", "bt_broken_tools", source)
    line = refused_start_up(tmp_path, site)
    assert "'broken' of bustrail-broken (bustrail.tools: bt_broken_tools)" in line
    assert error in line


TWO_TOOLS = (
    GOOD_TOOLS
    + '''

@tool(name="whisper")
def whisper(text: str) -> str:
    """Lower-case the text."""
    return text.lower()
'''
)


def _serve_and_list(tmp_path: Path, site: Path) -> set[str]:
    daemon = DaemonProcess(plugin_env(tmp_path, site))
    try:

        async def names() -> set[str]:
            async with await Client.connect(daemon.url) as client:
                return {t["name"] for t in await client.list_tools()}

        return asyncio.run(names())
    finally:
        daemon.stop()


def test_an_entry_point_naming_one_function_registers_only_that_one(
    tmp_path: Path, site: Path
) -> None:
    """The module also has a ``shout``, like the fixture's plugin: were it registered,
    the name would be taken twice and the daemon would refuse to start."""
    install(site, "bustrail-quiet", "quiet", "bt_quiet_tools", TWO_TOOLS, attr="whisper")
    names = _serve_and_list(tmp_path, site)
    assert {"whisper", "shout", "echo"} <= names


@pytest.mark.parametrize(
    ("attr", "error"),
    [
        ("nowhere", "module 'bt_attr_tools' has no 'nowhere'"),
        ("helper", "bt_attr_tools:helper is not a function marked with @tool"),
    ],
)
def test_an_entry_point_naming_a_missing_or_unmarked_object_refuses_start_up(
    tmp_path: Path, site: Path, attr: str, error: str
) -> None:
    source = TWO_TOOLS + "\n\ndef helper() -> None:\n    pass\n"
    install(site, "bustrail-attr", "attr", "bt_attr_tools", source, attr=attr)
    line = refused_start_up(tmp_path, site)
    assert f"'attr' of bustrail-attr (bustrail.tools: bt_attr_tools:{attr})" in line
    assert error in line
