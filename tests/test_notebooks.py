"""The notebooks in ``experiments/notebooks/``: committed without outputs, and executed end to end.

The execution tests run every notebook with nbclient at the quick size (``JAXMM_NOTEBOOK_QUICK=1``)
in a fresh kernel of this interpreter, its outputs written to a temporary folder
(``JAXMM_NOTEBOOK_OUT``); any cell that raises fails the test. Executed copies stay in that
folder, never in the repository. Two are slow (the homework notebook trains four small PPO agents
in child processes); the run of the real-data notebook without tapes (the CI case) is fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTEBOOK_DIR = ROOT / "experiments" / "notebooks"
NOTEBOOKS = ("homework", "real_data")


def committed_notebooks() -> list[Path]:
    """Every ``.ipynb`` tracked by git (the notebook folder's, when git is not available)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    return sorted(ROOT / name for name in listed) or sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_both_notebooks_are_there():
    assert {f"{name}.ipynb" for name in NOTEBOOKS} <= {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")}


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    """Outputs, execution counts and execution timings are stripped before committing."""
    notebook = json.loads(path.read_text())
    assert notebook["cells"], f"{path.name}: no cells"
    for index, cell in enumerate(notebook["cells"]):
        where = f"{path.name} cell {index}"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{where} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{where} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{where} has execution timings"


def test_the_sizes_come_from_one_flag():
    """Each notebook reads ``JAXMM_NOTEBOOK_QUICK`` once, in its first code cell."""
    for name in NOTEBOOKS:
        notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
        sources = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
        assert "JAXMM_NOTEBOOK_QUICK" in sources[0], name
        assert not any("JAXMM_NOTEBOOK_QUICK" in source for source in sources[1:]), name


def kernel_spec(folder: Path) -> dict[str, str]:
    """Environment variables that make kernel ``jaxmm-test`` this interpreter's ipykernel (a
    kernelspec of the machine's own could point at another Python)."""
    spec = folder / "kernels" / "jaxmm-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "jaxmm test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return {"JUPYTER_PATH": str(folder)}


def execute(name: str, tmp_path: Path, monkeypatch, **env: str):
    """Run notebook ``name`` at the quick size; return the executed notebook (also written to
    ``tmp_path``). nbclient raises ``CellExecutionError`` at the first failing cell."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    settings = {
        "JAXMM_NOTEBOOK_QUICK": "1",
        "JAXMM_NOTEBOOK_OUT": str(tmp_path / "out"),
        **kernel_spec(tmp_path / "jupyter"),
        **env,
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="jaxmm-test",
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    return notebook


def stdout(notebook) -> str:
    return "".join(
        "".join(output.get("text", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


@pytest.mark.slow
def test_homework_notebook_runs(tmp_path, monkeypatch):
    notebook = execute("homework", tmp_path, monkeypatch)
    text = stdout(notebook)
    assert "check_env passed" in text and "standard errors" in text
    out = tmp_path / "out" / "homework"
    for figure in (
        "monte_carlo/pnl_hist.png",
        "heatmap/sharpe_heatmap.png",
        "rewards/training_curves.png",
        "compare/equity_curves.png",
        "regime/regime.png",
    ):
        assert (out / figure).stat().st_size > 10_000, figure


@pytest.mark.slow
def test_real_data_notebook_runs(tmp_path, monkeypatch):
    from experiments.common import data_dir

    have_tapes = (data_dir() / "lobster-amzn-2012-06-21").is_dir()
    notebook = execute("real_data", tmp_path, monkeypatch)
    text = stdout(notebook)
    if have_tapes:
        assert "skipped: no LOBSTER tapes" not in text
        assert (tmp_path / "out" / "real_data" / "backtest" / "results.json").is_file()
    else:
        assert "skipped: no LOBSTER tapes" in text


def test_real_data_notebook_skips_cleanly_without_tapes(tmp_path, monkeypatch):
    """A machine without the tapes (CI): the notebook says so and every data cell is skipped."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    notebook = execute("real_data", tmp_path, monkeypatch, JAXMM_DATA_DIR=str(empty))
    text = stdout(notebook)
    assert text.count("skipped: no LOBSTER tapes") == 5
    shown = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "display_data"
    ]
    assert any("No LOBSTER tapes" in o["data"].get("text/markdown", "") for o in shown)
    assert not (tmp_path / "out" / "real_data" / "backtest").exists()
