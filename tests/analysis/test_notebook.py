"""The analysts' notebook: committed without outputs, and it runs top to bottom.

It is executed for real (nbclient, an ipykernel kernel of this interpreter) against a
database a fault-injecting workload just filled, with that workload's ground truth.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from analysis.workload import WorkloadConfig, parse_faults, run_workload

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis/notebooks/phase2c_silent_failures.ipynb"
KERNEL = "python3"


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    for cell in code:
        assert cell.outputs == [], cell.source[:80]
        assert cell.execution_count is None, cell.source[:80]
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    assert "widgets" not in nb.metadata


def _kernel_available() -> None:
    """A python3 kernelspec, installed into this environment if there is none."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
            check=True,
            capture_output=True,
        )


def _outputs(nb: Any) -> list[dict[str, Any]]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_a_workload_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    faults = "orphan=2,corrupt=1,empty=2,duplicate=1,waste=1,errors=2,slow=2,untraced=2"
    truth = run_workload(
        WorkloadConfig(
            database_url=url,
            seed=7,
            calls=40,
            faults=parse_faults(faults),
            workdir=tmp_path / "work",
        )
    )
    truth_file = tmp_path / "truth.json"
    truth.write(truth_file)

    _kernel_available()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BUSTRAIL_TRUTH", str(truth_file))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"ground truth of `bustrail load --seed {truth.seed}`" in text
    assert "recall: 100%" in text, text
    assert "finding kinds not injected: none" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # route/status over time, sizes, latency per tool, findings by kind
    assert len(images) >= 4
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("**Fix:**" in m and "checksum_mismatch" in m for m in markdown)
    # Running it left the file on disk as committed: without outputs.
    assert all(not c.get("outputs") for c in nbformat.read(NOTEBOOK, as_version=4).cells)
