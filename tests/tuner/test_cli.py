"""The ``reid-tune`` console script that ``pip install -e .`` puts beside the interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs the installed reid-tune command in a fresh interpreter

SCRIPT = Path(sys.executable).parent / "reid-tune"


def reid_tune(*args: str) -> subprocess.CompletedProcess:
    if not SCRIPT.is_file():
        pytest.fail(f"{SCRIPT} is missing: install the project with pip install -e .")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600)  # a hang guard


@pytest.mark.parametrize("command, flag", [("search", "--grace-steps"), ("report", "--compare"), ("train", "--preflight")])
def test_each_command_has_its_help_under_its_own_name(command, flag):
    done = reid_tune(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: reid-tune {command}") and flag in done.stdout


def test_an_unknown_command_is_one_line_and_exit_2():
    done = reid_tune("serch")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["reid-tune: error: unknown command 'serch'; use one of search, report, train, diagnose, simulate, run"]


def test_a_bad_flag_names_the_command_it_was_given_to():
    done = reid_tune("report", "--top")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reid-tune report: error:")
