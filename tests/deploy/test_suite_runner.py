"""The way make test runs the suite: tests of one xdist_group stay on one worker (a stack fixture starts once).

pytest 9 with pytest-xdist 3.8 split every group silently (xdist renames a node id pytest 9 no longer reads), and
the suite still passed, only slower: this checks the grouping itself, on a throwaway suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SUITE = """
import pytest

@pytest.mark.xdist_group("stack")
@pytest.mark.parametrize("n", range(6))
def test_grouped(n):
    pass

@pytest.mark.parametrize("n", range(6))
def test_free(n):
    pass
"""


def test_a_group_runs_on_one_worker_under_make_tests_options(tmp_path: Path) -> None:
    (tmp_path / "test_throwaway.py").write_text(SUITE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ran = re.findall(r"\[(gw\d+)\] .*PASSED test_throwaway.py::(test_\w+)\[", run.stdout)
    grouped = {worker for worker, test in ran if test == "test_grouped"}
    assert len([t for _, t in ran if t == "test_grouped"]) == 6, run.stdout
    assert len(grouped) == 1, f"the group ran on {sorted(grouped)}"
