"""lljax is a typed package (PEP 561): it ships ``py.typed``, mypy is clean on it at the strictness of
``[tool.mypy]`` in pyproject.toml, and a typed user script (``tests/typed_usage.py``, held to stricter
options) passes mypy and runs.

mypy runs once, as one subprocess on the package and the script together (the script imports the package,
so mypy analyses it either way), with its cache in a temporary directory.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "tests/typed_usage.py"


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    cache = tmp_path_factory.mktemp("mypy-cache")
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "lljax", SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _errors(run: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in run.stdout.splitlines() if re.match(r"^[^:]+:\d+: error:", line) and line.startswith(prefix)]


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "lljax" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^"lljax" = \["py.typed"\]', pyproject, flags=re.M), "py.typed must be package data"


def test_the_typed_user_script_passes_mypy(mypy_run: subprocess.CompletedProcess) -> None:
    errors = _errors(mypy_run, SCRIPT)
    assert not errors, "\n".join(errors)


def test_the_package_passes_mypy(mypy_run: subprocess.CompletedProcess) -> None:
    assert not _errors(mypy_run, "lljax/"), mypy_run.stdout
    assert mypy_run.returncode == 0, mypy_run.stdout + mypy_run.stderr


def test_the_typed_user_script_runs(tmp_path: Path) -> None:
    from tests import typed_usage

    typed_usage.main(str(tmp_path))
