"""The suite's two tiers: ``python -m pytest`` runs every test (CI, the README); ``python -m pytest -m "not slow"``
is the edit-test loop. A test is ``slow`` when it runs a real Ray search, starts Ray, a subprocess or a cluster,
or takes more than ~3 s alone; a test that uses Ray is also ``ray``.

Tests that use one of the fixtures below are marked here, once, so a new test that uses one lands in the
right tier without a marker of its own; the other slow tests carry ``pytest.mark.slow`` themselves.
"""

from __future__ import annotations

import pytest

MARKS_OF_FIXTURES = {
    "ray_session": ("ray", "slow"),  # tests/tuner/conftest.py: the shared Ray session and the searches run in it
    "smokes": ("ray", "slow"),  # tests/benchmarks: the benchmark scripts, several starting a Ray of their own
    "run_python": ("slow",),  # tests/reid_core/conftest.py: a fresh interpreter (~7 s of imports each)
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = getattr(item, "fixturenames", ())  # every fixture the test needs, also through other fixtures
        for name in sorted({mark for fixture, marks in MARKS_OF_FIXTURES.items() if fixture in used for mark in marks}):
            item.add_marker(name)
