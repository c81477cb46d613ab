"""lljax is a typed package (PEP 561): it ships ``py.typed``, mypy is clean on it at the strictness of
``[tool.mypy]`` in pyproject.toml, and a typed user script (``tests/typed_usage.py``) passes mypy and runs.

mypy runs once, as a subprocess on the package and the script together (the script imports the package, so
mypy analyses it either way), with its cache in a temporary directory.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "tests/typed_usage.py"
# Phase 1 of issue 17 item 5: these modules are being edited elsewhere and are typed next; until then their
# errors are set aside (the script and every other module must already be clean).
PENDING = ("lljax/solve/", "lljax/game/", "lljax/spark.py", "lljax/spark/", "lljax/rounds/round.py")

@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    cache = tmp_path_factory.mktemp("mypy-cache")
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary",
                           "lljax", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _errors(run: subprocess.CompletedProcess) -> list[str]:
    assert not run.stderr.strip() or "error" not in run.stderr.lower(), run.stderr
    return [line for line in run.stdout.splitlines() if re.match(r"^[^:]+:\d+: error:", line)]


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "lljax" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^"lljax" = \["py.typed"\]', pyproject, flags=re.M), "py.typed must be package data"


def test_the_typed_user_script_passes_mypy(mypy_run: subprocess.CompletedProcess) -> None:
    errors = [e for e in _errors(mypy_run) if e.startswith(SCRIPT)]
    assert not errors, "\n".join(errors)


def test_the_package_passes_mypy(mypy_run: subprocess.CompletedProcess) -> None:
    errors = [e for e in _errors(mypy_run) if e.startswith("lljax/") and not e.startswith(PENDING)]
    assert not errors, "\n".join(errors)


def test_the_typed_user_script_runs(tmp_path: Path) -> None:
    from tests import typed_usage

    typed_usage.main(str(tmp_path))
