"""scripts/push_run_outputs.py as a command: help, bad input, no repository, no remote.
What it pushes is tested against a real server in tests/e2e/test_remotes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/push_run_outputs.py"
DVC = Path(sys.executable).parent / "dvc"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True)


def test_help_says_what_it_pushes(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "every run the run-cache records" in result.stdout and "--check-sizes" in result.stdout


def test_bad_jobs_is_one_error_line(tmp_path):
    result = run("--jobs", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [
        "python scripts/push_run_outputs.py: error: --jobs must be at least 1"
    ]


def test_outside_a_dvc_repository_is_one_error_line(tmp_path):
    result = run(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: you are not inside of a DVC repository") and result.stderr.count("\n") == 1


def test_without_a_remote_says_how_to_add_one(tmp_path):
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    result = run(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "dvc remote add -d" in result.stderr, result.stderr
