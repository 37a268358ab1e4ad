"""When does a search stop itself? The diagnosis benchmark's recorded runs replayed as searches through the rule.

    python benchmarks/diagnosis.py --save-rows rep.jsonl     # the reported set's runs (seeds 3-5), once
    python benchmarks/halt.py rep.jsonl

A search here is every recorded run of one planted kind on one config (its ways and seeds: trials with different
values), arriving one after another, each judged as it was live (its stuck verdict and cause at its step, or
learning: it crossed the Go line); a healthy search is every healthy run of one config and seed. They go through
`reid_core.actions.Agreement`, the rule the live search runs (``head_lr``, ``grad_accum_steps`` and
``ce_only_steps`` searched, as the default space). Printed per kind: searches stopped with the right cause, with a
wrong one, not stopped; the images spent before the stop in grace windows (the trials one at a time: the most a
search can spend; two at a time it is less); and the healthy searches stopped (target: 0). Targets (issue 25):
right cause >= 0.95 of the unfixable kinds' searches, 0 healthy searches stopped, under 2 windows of images.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
from typing import Optional, Sequence

from reid_core.actions import Agreement, halt_count
from reid_core.diagnostics import DECLARED, UNKNOWN
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser

SEARCHED = ("head_lr", "grad_accum_steps", "ce_only_steps")  # the default space
EXPECTED = {"identity_destroyed": "labels_no_signal", "label_smoothing_near_1": "label_smoothing_too_high", "head_lr_zeroed": "lr_too_low"}


def replay(runs: list[dict]) -> tuple[Optional[str], float]:
    """``(the cause the search stopped on or None, images spent before, in grace windows)``."""
    agreement, spent = Agreement(SEARCHED), 0.0
    for n, run in enumerate(runs):
        case, rows = run["case"], run["rows"]
        window = case["grace_steps"] * rows[0]["samples"] / rows[0]["step"] if rows else 1.0
        stop = run["step"] if run["step"] is not None else len(rows)
        spent += rows[min(stop, len(rows)) - 1]["samples"] / window if rows else 0.0
        if run["named"] not in ("not_stopped", "diverged"):
            cause = run["named"]
            if agreement.stuck(f"t{n}", cause, "", DECLARED.get(cause, DECLARED[UNKNOWN]).fix, {"head_lr": f"{case['way']}/{case['seed']}"}):
                return cause, spent
        elif run["go_step"] is not None:
            agreement.learned()
    return None, spent


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python benchmarks/halt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="a JSON-lines file benchmarks/diagnosis.py --save-rows wrote")
    args = p.parse_args(argv)
    try:
        runs = [json.loads(line) for line in open(args.rows)]
    except (OSError, ValueError) as err:
        return cli_exit(UserError(f"cannot read '{args.rows}' ({err}); pass a file benchmarks/diagnosis.py --save-rows wrote"), p.prog)
    searches: dict[tuple, list] = collections.defaultdict(list)
    for run in runs:
        c = run["case"]
        key = (c["kind"], c["config_name"]) if c["kind"] != "healthy" else ("healthy", c["config_name"], c["seed"])
        searches[key].append(run)
    print(f"searches that stop themselves: {len(runs)} recorded runs of {args.rows} as {len(searches)} searches")
    right = wrong = missed = healthy_stopped = healthy = unfixable = 0
    spent: list[float] = []
    for key, group in sorted(searches.items(), key=lambda kv: str(kv[0])):
        group.sort(key=lambda r: (r["case"]["seed"], r["case"]["way"]))
        stopped, windows = replay(group)
        kind = key[0]
        if kind == "healthy":
            healthy += 1
            healthy_stopped += stopped is not None
            continue
        expected = EXPECTED.get(kind, kind)
        if halt_count(expected, SEARCHED) is None:
            if stopped is not None:
                print(f"  {kind} on {key[1]}: a fixable kind stopped the search on {stopped}")
                wrong += 1
            continue
        unfixable += 1
        if stopped == expected:
            right += 1
            spent.append(windows)
        elif stopped is None:
            missed += 1
        else:
            wrong += 1
        print(f"  {kind:<22} {key[1]:<8} {len(group)} trials: {'stopped on ' + stopped if stopped else 'not stopped'}"
              + (f" after {windows:.2f} windows of images" if stopped else ""))  # fmt: skip
    print(f"unfixable kinds' searches: {right}/{unfixable} stopped on the right cause, {wrong} on a wrong one, {missed} not stopped")
    print(f"images before the stop (one trial at a time): median {statistics.median(spent):.2f}, most {max(spent):.2f} grace windows" if spent else "no stop")
    print(f"healthy searches stopped: {healthy_stopped} of {healthy}")
    share = right / unfixable if unfixable else float("nan")
    print(f"right-cause stops: {share:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
