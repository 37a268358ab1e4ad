"""One Ray session for every Ray test (``ray.init`` costs ~4 s here), and Ray's files kept in a temp folder.

Ray writes an authentication token under HOME on first start and its session
files under its temp dir: both point into a folder this fixture removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    root = tempfile.mkdtemp(prefix="rt-")  # short: Ray's socket paths must stay under 107 characters
    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = root
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=os.path.join(root, "ray"),
        configure_logging=False,
    )
    try:
        yield root
    finally:
        ray.shutdown()
        if saved_home is not None:
            os.environ["HOME"] = saved_home
        shutil.rmtree(root, ignore_errors=True)
