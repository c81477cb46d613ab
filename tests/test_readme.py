"""Every Python block of README.md runs verbatim, in order, in one namespace (later blocks use what the
earlier ones built, as a reader following the README would), in a temporary working directory."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


def test_every_python_block_runs(tmp_path, capsys):
    namespace: dict = {"__name__": "readme"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(BLOCKS):
            try:
                exec(compile(block, f"README.md block {i + 1}", "exec"), namespace)
            except Exception as exc:  # name the block: a failure must say which one
                pytest.fail(f"README.md python block {i + 1} failed: {type(exc).__name__}: {exc}\n{block}")
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "per_user" in out and "converged" in out  # the GAME report table and the update report printed
