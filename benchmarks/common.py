"""What the Ray benchmarks share: a throwaway local Ray, a quiet search, and the machine in words.

Not a benchmark itself. The scripts beside it import it by name (Python puts a
script's own folder first on ``sys.path``).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import torch

if TYPE_CHECKING:
    from reid_core.trainer import Trainer


@dataclass
class LocalRay:
    root: Path  # temp folder of this session: Ray's files, and whatever the caller puts there; removed at the end
    init_s: float  # seconds ray.init took


_home: Optional[Path] = None  # this process's HOME for Ray: one for all its sessions


def _ray_home() -> Path:
    """A temp HOME for this process's Ray sessions, removed at exit.

    One per process, not one per session: Ray keeps the auth token it generated on the
    first start in memory, so a second ``ray.init`` under a new, empty HOME starts a GCS
    server that finds no token and dies.
    """
    global _home
    if _home is None:
        _home = Path(tempfile.mkdtemp(prefix="rtb-"))  # short: Ray's socket paths must stay under 107 characters
        atexit.register(shutil.rmtree, _home, ignore_errors=True)
    return _home


@contextlib.contextmanager
def local_ray(num_cpus: Optional[int] = None) -> Iterator[LocalRay]:
    """Start a local Ray whose session files live in a temp folder, removed afterwards.

    Ray writes an authentication token under HOME on first start, so HOME points to a
    temp folder while Ray runs (its worker processes inherit it). The Hugging Face cache
    is pinned to the real home first, so pretrained weights are still found.
    """
    import ray

    home = _ray_home()
    root = Path(tempfile.mkdtemp(prefix="s-", dir=home))
    saved_home = os.environ.get("HOME")
    os.environ.setdefault("HF_HOME", str(Path("~/.cache/huggingface").expanduser()))
    os.environ["HOME"] = str(home)
    try:
        started = time.perf_counter()
        ray.init(
            address="local",  # a new local instance even where RAY_ADDRESS points at another
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
            _temp_dir=str(root / "ray"),
        )
        session = LocalRay(root=root, init_s=time.perf_counter() - started)
        try:
            yield session
        finally:
            ray.shutdown()
    finally:
        if saved_home is not None:
            os.environ["HOME"] = saved_home
        shutil.rmtree(root, ignore_errors=True)


def quiet_search(argv: Sequence[str]) -> tuple[int, str]:
    """``python -m tuner.search ARGV`` in this process (it joins the Ray already running), its
    printout captured: ``(exit code, printout)``. The caller shows the printout if the code is not 0."""
    from tuner.search import main as search_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = search_main(list(argv))
    return code, out.getvalue()


def run_searches(runs: Sequence[tuple[str, str, list[str]]], storage_root: Optional[Path]) -> dict[str, dict]:
    """Run each ``(folder name, title, search argv)`` on one local Ray, one after the other, into
    ``storage_root`` (default: the session's temp folder); each run's settings, table and wall time."""
    from reid_core.errors import UserError
    from tuner.results import read_experiment

    results: dict[str, dict] = {}
    with local_ray() as ray_session:
        storage = storage_root or ray_session.root / "results"
        for name, title, argv in runs:
            started = time.perf_counter()
            code, printout = quiet_search([*argv, "--storage-path", str(storage), "--name", name])
            wall = time.perf_counter() - started
            if code == 2 or not (storage / name / "reid_tune.json").is_file():
                raise UserError(f"the search {title} exited {code}: {printout.strip()[-500:]}")
            search, _, frame = read_experiment(storage / name)
            results[name] = {"search": search, "frame": frame, "wall": wall}
            print(f"  {title}: {wall:.0f} s{' (some trials failed: see the table)' if code else ''}", flush=True)
    return results


def read_searches(folder: Path, names: Sequence[str]) -> dict[str, dict]:
    """The experiments a ``--keep`` run left in ``folder``, as `run_searches` returns them (wall time unknown)."""
    from tuner.results import read_experiment

    results = {}
    for name in names:
        search, _, frame = read_experiment(folder / name)
        results[name] = {"search": search, "frame": frame, "wall": float("nan")}
    return results


def machine() -> str:
    """CPU model, cores and the accelerator, for the first line of a benchmark's printout."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


def seconds_per_step(trainer: "Trainer", phase_step: int, warmup: int, steps: int) -> float:
    """Mean seconds per ``trainer.train_step()`` over ``steps`` after ``warmup`` untimed ones, the
    schedule held at ``phase_step`` (same SDM weight and LR every step); CUDA synchronised."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    started = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            started = time.perf_counter()
        trainer.step = phase_step  # hold the phase: same SDM weight, same LR, whatever the count
        trainer.train_step()
    sync()
    return (time.perf_counter() - started) / steps


def step_cost_trainer(prog: str, description: str, argv: Optional[Sequence[str]], steps: str, warmup: str):
    """The step-cost scripts' flags (a config with ``--set``, ``--steps``, ``--warmup``) and the Trainer they time:
    ``(parser, args, cfg, trainer)``, or the exit code of a bad input (its one line printed)."""
    from reid_core.errors import UserError, cli_exit
    from reid_core.flags import ArgumentParser, add_config_arguments
    from reid_core.train import load_cli_config
    from reid_core.trainer import Trainer

    parser = ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=100, help=steps)
    parser.add_argument("--warmup", type=int, default=5, help=warmup)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps is {args.steps} and --warmup {args.warmup}, but must be --steps >= 1 and --warmup >= 0")
    try:
        cfg = load_cli_config(args.config, args.overrides)
        return parser, args, cfg, Trainer(cfg)
    except UserError as err:
        return cli_exit(err, parser.prog)

