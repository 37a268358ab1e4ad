"""Shared fixtures of the reid_core tests: a small, fast config and a fresh-interpreter runner.

They live here rather than in ``tests/conftest.py`` so that the tuner tests,
written beside these, see none of them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

from reid_core.config import TrainConfig

# The project's convention (TrainConfig.threads = 1), for the tests that call torch directly too:
# on a 2-core machine shared with a running search, two OpenMP threads make each small op ~500x slower.
torch.set_num_threads(1)


@pytest.fixture
def small_cfg() -> TrainConfig:
    """20 synthetic identities (160 images), batch 8, one thread: a few steps take well under a second."""
    return TrainConfig(synthetic_identities=20, batch_size=8, max_steps=4, threads=1, device="cpu")


@pytest.fixture
def run_python(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_python(*args)`` runs ``python ARGS`` in a fresh interpreter in ``tmp_path``: the real
    command line, with its real stderr and exit code. Each start pays torch's import (~7 s here)."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:  # a hang guard, not a time limit
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )

    return run


def import_script(path: Path, name: str) -> ModuleType:
    """A ``benchmarks/`` script as a module, importable as when run: it imports ``benchmarks/common.py`` by name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
