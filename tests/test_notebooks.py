"""The notebooks in ``notebooks/`` run: each is executed from a fresh kernel (nbclient, a timeout per cell) and must
finish without an error and draw at least one image; the committed files keep their outputs (so that they render
on GitHub).

The kernel runs this interpreter (``sys.executable``, through a kernelspec written for the test and found first
on ``JUPYTER_PATH``), so the notebooks see the same installed lljax as the tests. Needs the notebooks' packages
(nbclient, ipykernel, matplotlib, pandas, pyarrow, lambda-learner, pyspark) and, for ``spark.ipynb``, Java 17 or
21; ``game_movielens.ipynb`` downloads the MovieLens data once (``pip download`` of the recbole wheel into
``~/.cache/lljax`` or ``$LLJAX_DATA``). About two and a half minutes on a shared 2-core machine in
all, one and a half of them ``spark.ipynb`` (a local Spark session).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"quickstart.ipynb", "game_movielens.ipynb", "streaming_and_bandits.ipynb", "performance.ipynb",
            "spark.ipynb"}
CELL_TIMEOUT_S = 300
KERNEL = "lljax-notebook-test"


def _images(nb) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A kernelspec running this interpreter, on a JUPYTER_PATH searched before the user's and the system's."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lljax tests", "language": "python"}))
    return str(root)


def test_the_notebooks_are_there():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_outputs(path):
    """The file in the repository was saved executed: every code cell has run, and the plots are in it."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    assert all(cell.get("execution_count") for cell in code), f"{path.name}: a code cell was saved unexecuted"
    assert _images(nb) >= 1, f"{path.name} was committed without its plots"
    errors = [o for cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes_from_a_fresh_kernel(path, kernel_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", kernel_path)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # nothing of the committed run may leak into this one
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    seconds = time.perf_counter() - started
    assert _images(nb) >= 1, f"{path.name} drew no image"
    print(f"{path.name}: executed in {seconds:.1f}s")
