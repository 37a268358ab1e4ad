"""The Ray releases this harness was tested with, and one note line when the installed Ray is not one of them.

No Ray import at module level: the check reads ``ray.__version__`` when it is called, where the search
starts Ray (`tuner.driver.run`).
"""

from __future__ import annotations

import re
import sys
from typing import Optional

RAY_CHECKED = "2.60.0"  # every fenced piece of tuner._ray_compat was checked against this release
TESTED_RAY = ">=2.50,<2.61"  # pyproject.toml's ray[tune] range, as pip writes it (a test keeps the two equal)
_LOWEST, _BEYOND = (2, 50), (2, 61)  # TESTED_RAY as (major, minor): the first tested, the first not


def in_tested_range(version: str) -> bool:
    """Whether a Ray version string (``2.60.0``, ``2.61.0rc1``, ``3.0.0.dev0``) is in `TESTED_RAY`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and _LOWEST <= (int(match[1]), int(match[2])) < _BEYOND


def ray_version_note(version: str) -> Optional[str]:
    """The one note line for a Ray outside `TESTED_RAY`; None inside it."""
    if in_tested_range(version):
        return None
    return (
        f"note: Ray {version} is outside the range reid-tune was tested with (ray[tune]{TESTED_RAY}, checked on "
        f"{RAY_CHECKED}); where Ray's internals changed the search falls back to Ray's own behaviour (slower "
        "per-step reporting, no PBT lineage, early-stopped trials told to Optuna as completed), and a changed "
        f"public API may fail; to be safe: pip install 'ray[tune]{TESTED_RAY}'"
    )


def check_ray_version() -> None:
    """Print `ray_version_note` for the installed Ray on stderr, if there is one (not an error: the search goes on)."""
    import ray

    note = ray_version_note(ray.__version__)
    if note:
        print(note, file=sys.stderr, flush=True)
