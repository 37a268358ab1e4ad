"""Stuck-detection latency: how many reports past the grace window each stuck trial ran before it stopped.

    python benchmarks/stuck_latency.py [--num-trials 6] [--grace-steps 60] [--set key=value ...]
    python benchmarks/stuck_latency.py EXPERIMENT_DIR          # read a finished search instead

Without a folder it runs ``python -m tuner.search`` on a local Ray over a space
where every trial is stuck (``head_lr`` log-uniform in [1e-7, 1e-5]) with each
accumulation of the default space tried first (``grad_accum_steps`` 1, 2, 4,
8: a report is then 32 to 256 images) and two trials at a time, as the
default search runs. With a folder (e.g. ``benchmarks/early_stop.py --keep
DIR`` then ``DIR/early-stop``) it reads that experiment.

For each trial that ended ``stuck_at_chance``: the images it had seen at its
last report, minus the grace window, in reports (one report = one optimizer
step = ``batch_size * grad_accum_steps`` images). The chance-level rule can
judge no earlier than the first report past the window, so 0 to just under 1
report is the rule firing at once; each report more is a report the trial ran
after the verdict. A trial the rule left running at the window because its
``ce_ema`` was clearly falling, and stopped later when the fall stalled, is
listed apart: its distance from the window is the rule's design, not latency;
for it, the reports between the rule's verdict (replayed on its metrics) and
its stop are given.

Not visible in the metrics: with Ray's asynchronous reporting the trial's
thread computes at most one more step while the driver decides.

Target: at most one report past the grace window for every trial stuck there.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from common import local_ray, machine, quiet_search
from reid_core.flags import ArgumentParser, add_config_arguments
from reid_core.errors import UserError, cli_exit
from tuner.results import read_experiment
from reid_core.chance import ChanceLevelRule
from reid_core.schema import STUCK

TARGET_REPORTS = 1.0
STUCK_SPACE = "head_lr: {loguniform: [1.0e-7, 1.0e-5]}\ngrad_accum_steps: {choice: [1, 2, 4, 8]}\n"
POINTS = [{"head_lr": 1e-6, "grad_accum_steps": k} for k in (1, 2, 4, 8)]


def run_stuck_search(args, folder: Path) -> Path:
    (folder / "space.yaml").write_text(STUCK_SPACE)
    (folder / "points.json").write_text(json.dumps(POINTS[: args.num_trials]))
    argv = [
        *(["--config", args.config] if args.config else []),
        *(["--set", *args.overrides] if args.overrides else []),
        "--space", str(folder / "space.yaml"),
        "--points-to-evaluate", str(folder / "points.json"),
        "--num-trials", str(args.num_trials),
        "--max-steps", str(2 * args.grace_steps),
        "--grace-steps", str(args.grace_steps),
        "--verdict", "window",  # the window's latency: the early verdict stops these trials before it (section 12)
        "--skip-preflight",
        "--storage-path", str(folder / "results"),
        "--name", "stuck",
        "--quiet",
    ]  # fmt: skip
    code, printout = quiet_search(argv)
    if code == 2 or not (folder / "results" / "stuck" / "reid_tune.json").is_file():
        raise UserError(f"the search exited {code}: {printout.strip().splitlines()[-1] if printout.strip() else ''}")
    return folder / "results" / "stuck"


def latencies(exp: Path) -> tuple[dict, list[dict]]:
    """The search's settings and, per stuck trial, where it stopped relative to the window and the verdict."""
    search, trials, frame = read_experiment(exp)
    stuck_ids = set(frame.loc[frame["end_reason"] == STUCK, "trial_id"])
    grace = search.grace_samples
    out = []
    for trial in trials:
        if trial.trial_id not in stuck_ids or not trial.rows:
            continue
        rows = trial.rows
        per_report = rows[0]["samples"] / rows[0]["step"]  # images per optimizer step
        rule = ChanceLevelRule(grace, search.chance_margin, **search.rule_keywords(trial.sampled))
        verdict = next(r for r in rows if rule(r) is not None)  # end_reason says there is one
        first_past = next((r for r in rows if r["samples"] >= grace), None)  # none: stopped early, before the window
        out.append(
            {
                "trial_id": trial.trial_id,
                "grad_accum_steps": trial.sampled.get("grad_accum_steps", search.base["grad_accum_steps"]),
                "head_lr": trial.sampled.get("head_lr", search.base["head_lr"]),
                "images_per_report": per_report,
                "stopped_at": rows[-1]["samples"],
                "past_grace": (rows[-1]["samples"] - grace) / per_report,
                "after_verdict": (rows[-1]["samples"] - verdict["samples"]) / per_report,
                "at_window": verdict is first_past,  # stuck at the window, not a slow learner stopped later
                "early": first_past is None,  # the early verdict stopped it before the window
            }
        )
    return search, out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/stuck_latency.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", metavar="EXPERIMENT_DIR", help="read this search instead of running one")
    add_config_arguments(parser)
    parser.add_argument("--num-trials", type=int, default=6, help="trials of the stuck search (default 6)")
    parser.add_argument("--grace-steps", type=int, default=60, help="its grace window, steps at accumulation 1 (default 60)")
    args = parser.parse_args(argv)
    if args.num_trials < 1 or args.grace_steps < 1:
        parser.error(f"--num-trials is {args.num_trials} and --grace-steps {args.grace_steps}, but both must be >= 1")
    try:
        if args.experiment:
            search, stuck = latencies(Path(args.experiment))
            source = f"experiment {args.experiment}"
        else:
            with local_ray() as ray_session:
                search, stuck = latencies(run_stuck_search(args, ray_session.root))
            source = f"a search of {args.num_trials} stuck trials, grace {args.grace_steps} steps"
    except UserError as err:
        return cli_exit(err, parser.prog)

    print(f"stuck-detection latency: {source}; grace window {search.grace_samples:,} images\non {machine()}")
    print(f"{'trial':<10} {'accum':>5} {'head_lr':>8} {'img/report':>10} {'stopped at':>10} {'past grace':>10} {'after verdict':>13}")
    for t in sorted(stuck, key=lambda t: (not t["at_window"], t["grad_accum_steps"])):
        note = "" if t["at_window"] else "  early verdict, before the window" if t["early"] else "  falling at the window; stopped when its fall stalled"
        print(
            f"{t['trial_id']:<10} {t['grad_accum_steps']:>5} {t['head_lr']:>8.2g} {t['images_per_report']:>10.0f} "
            f"{t['stopped_at']:>10,} {t['past_grace']:>10.2f} {t['after_verdict']:>13.2f}{note}"
        )
    at_window = [t["past_grace"] for t in stuck if t["at_window"]]
    worst = max(at_window, default=math.nan)
    if not at_window:
        print("target: no trial was stuck at the grace window, nothing to judge")
    else:
        verdict = "met" if worst <= TARGET_REPORTS else "missed"
        print(f"target: <= {TARGET_REPORTS:g} report past the grace window, over {len(at_window)} trial(s): {worst:.2f}, {verdict}")
    print(f"stuck-detection latency (reports past the grace window, worst trial): {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
