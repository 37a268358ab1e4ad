"""The driver's sustained results per second: a real Ray search of replayed curves (no training), and where its time goes.

    python benchmarks/driver_rate.py [--trials 1000] [--max-steps 60] [--grace-steps 20] [--cpus 2]

One real search on a local Ray (HOME and Ray's temp dir in a temp folder): the
default space, ``tuner.simulation.trainable.replay_trial`` reporting every step of its
parametric curve at once, and the live search's driver pieces (PruningOptunaSearch,
RecheckingASHA on ``samples``, the chance-level stopper, ``result.json`` only,
the fast reporting). The trials never wait on training, so the driver is the
bottleneck: results/s is what it sustains. The driver's time is profiled
(cProfile, its own thread) and grouped by who spends it. Last line: results/s.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict
from typing import Optional, Sequence

from common import local_ray, machine
from reid_core.flags import ArgumentParser

GROUPS = (  # (name, a path fragment of the functions it owns), first match wins
    ("optuna (TPE)", "/optuna/"),
    ("our scheduler, stopper, searcher", "/tuner/"),
    ("Tune's result logging (result.json)", "/tune/logger/"),
    ("Tune's controller", "/ray/tune/"),
    ("Ray core (object store, actor calls, waiting)", "/ray/"),
    ("Python and libraries", ""),
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="benchmarks/driver_rate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--max-steps", type=int, default=60, help="steps per trial at accumulation 1 (default 60)")
    p.add_argument("--grace-steps", type=int, default=20)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args(argv)

    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search_spaces import load_space, to_tune
    from tuner.simulation.trainable import replay_trial
    from tuner.schedulers import RecheckingASHA
    from tuner.driver import fast_reporting
    from tuner.searchers import PruningOptunaSearch
    from tuner.stoppers import ChanceLevelStopper

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    fast_reporting()
    batch = 32
    grace, budget = args.grace_steps * batch, args.max_steps * batch
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}; {args.trials} trials of up to {args.max_steps} steps, {args.cpus} CPUs")
    with local_ray(num_cpus=args.cpus) as ray_session:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(replay_trial, max_steps=args.max_steps, batch_size=batch), {"cpu": 1}),
            param_space=to_tune(load_space("default")),
            tune_config=tune.TuneConfig(
                metric="ce_ema",
                mode="min",
                search_alg=PruningOptunaSearch(metric="ce_ema", mode="min", seed=0, budget_attr="samples", max_budget=budget),
                scheduler=RecheckingASHA(time_attr="samples", grace_period=grace, max_t=budget, reduction_factor=2),
                num_samples=args.trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="driver-rate",
                storage_path=str(ray_session.root / "results"),
                stop=ChanceLevelStopper(grace, 0.39),
                callbacks=[JsonLoggerCallback()],
                verbose=0,
            ),
        )
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        grid = tuner.fit()
        profile.disable()
        wall = time.perf_counter() - started
        frame = grid.get_dataframe()
    results = int(frame["training_iteration"].sum())
    stats = pstats.Stats(profile)
    spent: dict[str, float] = defaultdict(float)
    for (path, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        spent[next(name for name, part in GROUPS if part in path)] += tottime
    total = sum(spent.values())
    print(f"{len(frame)} trials, {results} results in {wall:.1f} s (driver, Ray start excluded)")
    print("driver time by who spends it (cProfile, tottime):")
    for name, _ in GROUPS:
        print(f"  {name:<48} {spent[name]:6.1f} s  {spent[name] / total:5.1%}")
    print("top functions:")
    for (path, line, name), row in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]:  # type: ignore[attr-defined]
        print(f"  {row[2]:6.2f} s  {name} ({'/'.join(path.split('/')[-3:])}:{line})")
    print(f"{results / wall:.0f} results/s, {len(frame) / wall:.1f} trials/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
