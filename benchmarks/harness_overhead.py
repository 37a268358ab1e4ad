"""Harness overhead: one config for the same steps as a plain training job and as a one-trial search.

    python benchmarks/harness_overhead.py [--steps 300] [--repeats 2] [--config FILE] [--set key=value ...]

The plain side is what ``python -m reid_core.train`` runs: `reid_core.train.train`
with its `RunWriter` (metrics.csv, progress lines). The search side is
``python -m tuner.search`` in this process, on a local Ray started for it, over
a one-point space (``head_lr: {choice: [the config's head_lr]}``), one trial,
``--grace-steps`` = ``--max-steps`` (nothing is stopped early) and
``--skip-preflight``: the same config, every step reported to ``tune.report``.
The runs alternate plain, search, search, plain, ... so a slow spell on a
shared machine hits both sides.

The target is the *steady-state* step rate, measured inside each run so that
Ray's start-up is kept apart:

- search: each result's ``timestamp`` is the second in which the trial called
  ``tune.report``; between the first and the last report that opens a new second
  (the first report, which carries start-up, and the final one, which carries
  the evaluation, left out) lie a whole number of seconds, exact to one step at
  each end;
- plain: the same steps, timed by the clock at each report.

Ratio = search rate / plain rate over the same steps. The start-up and teardown
(wall time minus the steps at the steady rate: Ray's start, the trial's actor,
the search's exports and pictures) and the wall-clock ratio are printed too. The
synthetic data set is generated once before timing; the trial's worker process
generates its own copy, which counts in the search's start-up. Both sides must
compute the same curve (printed: the largest CE difference, 0.0 on CPU).

Target: search / plain steady-state step rate >= 0.95 on CPU with the embedded
default, >= 0.98 on a GPU. Run it on a quiet machine or with more --repeats:
other jobs sharing the cores move both sides, but not always equally.
"""

from __future__ import annotations

import dataclasses
import io
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from common import local_ray, machine, quiet_search
from reid_core.chance import DEFAULT_GRACE_STEPS
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.config import TrainConfig
from reid_core.data import load_data
from reid_core.errors import UserError, cli_exit
from reid_core.model import context_length
from reid_core.runner import RunWriter
from reid_core.train import load_cli_config, train
from reid_core.trainer import resolve_device
from reid_core.shipped_weights import effective_pretrained
from tuner.results import read_trials
from tuner.settings import SearchSettings

CPU_TARGET, GPU_TARGET = 0.95, 0.98  # search / plain steady-state step rate


@dataclass
class Run:
    side: str  # "plain" or "search"
    wall_s: float  # the whole run: plain: Trainer build + train; search: ray.init, tuner.search.main, ray.shutdown
    steps: list[int]  # step of each report
    seconds: list[float]  # when each report was made (plain: perf_counter; search: whole seconds)
    ce: list[float]
    step_s: list[float]  # time train_step took (from the reported images_per_s): the rest is reporting
    ray_init_s: float = 0.0


def plain_run(cfg: TrainConfig, out: Path) -> Run:
    """The plain job's train() + RunWriter, with the clock read at every report."""
    grace = DEFAULT_GRACE_STEPS * cfg.images_per_step  # the plain run's default window
    writer = RunWriter(cfg, out, grace_samples=grace, max_steps=cfg.max_steps, stream=io.StringIO())  # progress lines kept off our printout
    steps, seconds, ce, step_s = [], [], [], []

    def report(metrics: dict) -> None:
        writer(metrics)
        steps.append(metrics["step"])
        seconds.append(time.perf_counter())
        ce.append(metrics["ce"])
        step_s.append(cfg.images_per_step / metrics["images_per_s"])

    started = time.perf_counter()
    try:
        train(cfg, report)
    finally:
        writer.close()
    return Run("plain", time.perf_counter() - started, steps, seconds, ce, step_s)


def search_argv(cfg: TrainConfig, args, space_file: Path, storage: Path) -> list[str]:
    return [
        *(["--config", args.config] if args.config else []),
        "--set", *args.overrides, f"threads={cfg.threads}",
        "--space", str(space_file),
        "--num-trials", "1",
        "--max-steps", str(cfg.max_steps),
        "--grace-steps", str(cfg.max_steps),  # the chance-level rule and ASHA only look at the last step
        "--skip-preflight",
        "--storage-path", str(storage),
        "--name", "one-trial",
        "--quiet",
    ]  # fmt: skip


def search_run(cfg: TrainConfig, args, folder: Path) -> Run:
    """tuner.search.main on a fresh local Ray; the trial's reports read back from its result.json."""
    space_file = folder / "space.yaml"
    space_file.write_text(f"head_lr: {{choice: [{cfg.head_lr!r}]}}\n")
    storage = folder / "results"
    started = time.perf_counter()
    with local_ray() as ray_session:
        code, printout = quiet_search(search_argv(cfg, args, space_file, storage))
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"the search exited {code}:\n{printout}")
    exp = storage / "one-trial"
    base = TrainConfig.from_dict(SearchSettings.load(exp).base)
    if dataclasses.replace(base, data=cfg.data, pretrained=cfg.pretrained) != cfg:  # paths made absolute
        raise RuntimeError(f"the search trained another config than the plain job: {base} != {cfg}")
    (trial,) = read_trials(exp)
    rows = trial.rows
    return Run(
        "search", wall, [r["step"] for r in rows], [float(r["timestamp"]) for r in rows],
        [r["ce"] for r in rows], [cfg.images_per_step / r["images_per_s"] for r in rows], ray_session.init_s,
    )  # fmt: skip


def search_window(run: Run) -> Optional[tuple[int, int]]:
    """Indices (first, last) of the reports that open a new second, the first and the final report left
    out; None when the run spans fewer than two such reports (too short to time)."""
    opens = [i for i in range(2, len(run.steps) - 1) if run.seconds[i] > run.seconds[i - 1]]
    if len(opens) < 2:
        return None
    return opens[0], opens[-1]


def plain_seconds(plain: Run, first_step: int, last_step: int) -> float:
    return plain.seconds[plain.steps.index(last_step)] - plain.seconds[plain.steps.index(first_step)]


def train_step_seconds(run: Run, first_step: int, last_step: int) -> float:
    """Time spent inside train_step over the steps after ``first_step`` up to ``last_step``."""
    return sum(run.step_s[run.steps.index(first_step) + 1 : run.steps.index(last_step) + 1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/harness_overhead.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="plain + search pairs, alternating (default 2)")
    args = parser.parse_args(argv)
    if args.steps < 4 or args.repeats < 1:
        parser.error(f"--steps is {args.steps} and --repeats {args.repeats}, but must be --steps >= 4 and --repeats >= 1")
    try:
        cfg = load_cli_config(args.config, [*args.overrides, f"max_steps={args.steps}"])
        data = load_data(cfg, context_length(cfg))  # generated once here: the plain runs and the driver reuse it
        device = resolve_device(cfg)
    except UserError as err:
        return cli_exit(err, parser.prog)

    print(
        f"harness overhead of {cfg.model} ({effective_pretrained(cfg.model, cfg.pretrained) or 'random init'}), {cfg.image_size[0]}x{cfg.image_size[1]} "
        f"images, batch {cfg.batch_size} x {cfg.grad_accum_steps}, {data.num_classes} identities, {cfg.max_steps} steps, "
        f"{cfg.threads} thread(s), {device}; {args.repeats} plain + search pair(s)\non {machine()}",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="reid-bench-") as tmp:
        for repeat in range(args.repeats):
            order = ("plain", "search") if repeat % 2 == 0 else ("search", "plain")
            for side in order:
                folder = Path(tmp) / f"{side}-{repeat}"
                folder.mkdir()
                run = plain_run(cfg, folder / "run") if side == "plain" else search_run(cfg, args, folder)
                runs.append(run)
                print(f"  {side:<6} run {repeat + 1}: {run.wall_s:6.1f} s wall", flush=True)
    plains = [r for r in runs if r.side == "plain"]
    searches = [r for r in runs if r.side == "search"]

    # Steady state: each search's window, and the same steps in every plain run (their mean).
    search_s, plain_s, window_steps = 0.0, 0.0, 0
    search_inside, plain_inside = 0.0, 0.0  # of which inside train_step
    for run in searches:
        window = search_window(run)
        if window is None:
            first, last = 0, len(run.steps) - 1  # too short for whole seconds: a rough figure, start-up included
            print(f"  search run too short to time in whole seconds ({run.steps[-1]} steps): rough figure")
        else:
            first, last = window
        search_s += max(run.seconds[last] - run.seconds[first], 1.0)
        plain_s += statistics.mean(plain_seconds(p, run.steps[first], run.steps[last]) for p in plains)
        search_inside += train_step_seconds(run, run.steps[first], run.steps[last])
        plain_inside += statistics.mean(train_step_seconds(p, run.steps[first], run.steps[last]) for p in plains)
        window_steps += run.steps[last] - run.steps[first]
    plain_rate, search_rate = window_steps / plain_s, window_steps / search_s
    ratio = search_rate / plain_rate

    plain_wall = statistics.mean(r.wall_s for r in plains)
    search_wall = statistics.mean(r.wall_s for r in searches)
    ray_init = statistics.mean(r.ray_init_s for r in searches)
    ce_diff = max(
        (abs(a - b) for p in plains for s in searches for a, b in zip(p.ce, s.ce) if math.isfinite(a - b)),
        default=math.nan,
    )
    print(
        f"steady state over {window_steps} steps: plain {plain_rate:.2f} steps/s, search {search_rate:.2f} steps/s; "
        f"the harness adds {1000 * (1 / search_rate - 1 / plain_rate):.1f} ms per step"
    )
    ms = 1000 / window_steps
    print(
        f"per step: plain {plain_s * ms:.1f} ms = {plain_inside * ms:.1f} in train_step + {(plain_s - plain_inside) * ms:.1f} "
        f"reporting; search {search_s * ms:.1f} ms = {search_inside * ms:.1f} in train_step + "
        f"{(search_s - search_inside) * ms:.1f} reporting"
    )
    print(
        f"start-up and teardown: plain {plain_wall - cfg.max_steps / plain_rate:.1f} s, "
        f"search {search_wall - cfg.max_steps / search_rate:.1f} s (ray.init {ray_init:.1f} s)"
    )
    print(f"same computation: largest |ce plain - ce search| over the steps {ce_diff:.2g}")
    print(f"wall-clock ratio including start-up (plain wall / search wall): {plain_wall / search_wall:.3f}")
    target = GPU_TARGET if device.type == "cuda" else CPU_TARGET
    verdict = "met" if ratio >= target else "missed"
    print(f"target: search / plain step rate >= {target:.2f} ({device.type}): {ratio:.3f}, {verdict}")
    print(f"step-rate ratio (search / plain): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
