"""``--scheduler pbt``: what it may perturb, its record of who copied whom, and the schedule its winner re-runs
as. No Ray, no torch.

Under PBT a trial that falls into the bottom quarter continues from a copy of a top trial's checkpoint
with that trial's config, ``head_lr`` (and ``backbone_lr`` where searched) perturbed. Its weights then
come from a chain of trials: the *lineage* ``[(root, 0..s1, its sampled values), (T1, s1..s2, values
after the first exploit), ..., (the trial, sn..end, its values now)]``. Every trial runs on the same seed
and data order and a restore is exact, so the lineage is one training run whose LRs change at
``s1, ..., sn``: the plain job with ``head_lr`` = the root's and ``head_lr_schedule`` = ``[[s1, v1], ...]``
retraces it step for step (`tests/tuner/test_pbt.py` compares every step of the winner's lineage).

``pbt_lineage.json`` (beside ``reid_tune.json``; written by `tuner.pbt.LineagePBT` in the driver)::

    {"perturbed": ["head_lr"],
     "trials": {"<id>": {"initial": {"head_lr": v0},                 # the lineage root's sampled values
                         "changes": [{"step": s1, "samples": n1, "from": "<id>", "into": "<id>",
                                      "values": {"head_lr": v1}}, ...]}},
     "exploits": [{"trial": "<id>", "cloned": "<id>", "step": s, "samples": n, "at_step": t,
                   "old": {...}, "new": {...}}, ...]}                  # every exploit, in order

``step`` is the checkpoint's optimizer step (the clone's step when it was saved), which is where the
copy continues. Ray's own ``pbt_policy_<id>.txt`` holds the clone's *latest* result's iteration
instead, later than its checkpoint in asynchronous PBT, so it is not what the export reads.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Optional

from reid_core.errors import UserError
from tuner.ray_files import read_reports
from tuner.storage import Location

LINEAGE_FILE = "pbt_lineage.json"
# A field PBT may change mid-run -> the config field a plain re-run follows it with. Only the LRs: the
# trainer takes a new LR at any step and the plain job can replay it. Not accumulation or batch size (the
# step count, the data position and the budget depend on them), nor ce_only_steps (the phase is decided
# by then), lr_warmup_steps or max_steps (the schedule's shape), seed or the model.
PERTURBABLE = {"head_lr": "head_lr_schedule", "backbone_lr": "backbone_lr_schedule"}


def check_pbt_flags(args: Any, perturbable: Iterable[str]) -> None:
    """What ``--scheduler pbt`` cannot do (one line each, exit 2); ``perturbable``: what the training function lets PBT
    change mid-run (`reid_core.job.Job.perturbable`); the space is checked once loaded (`perturbed_fields`)."""
    if not perturbable:
        raise UserError(
            "--scheduler pbt works with reid_core's own training job only: PBT changes head_lr mid-run from a copied "
            "checkpoint, which a user's function would have to honour; use --scheduler asha with --trainable"
        )
    if args.checkpoint_every is not None:
        raise UserError("--checkpoint-every does not apply to --scheduler pbt: trials checkpoint at every perturbation point")
    if args.searcher == "optuna":
        raise UserError("--scheduler pbt draws its starting configs at random (Ray 2.60's PBT refuses a search algorithm); drop --searcher optuna")
    if args.num_trials < 2:
        raise UserError(f"--scheduler pbt needs a population: --num-trials is {args.num_trials}, use 2 or more (4+ to copy anything)")


def perturbed_fields(space: Mapping[str, Any], space_name: str) -> list[str]:
    """The fields PBT may change mid-run that the space searches; none is a `UserError`."""
    perturbed = [k for k in space if k in PERTURBABLE]
    if not perturbed:
        raise UserError(
            f"--scheduler pbt changes {' or '.join(PERTURBABLE)} mid-run, and the space '{space_name}' searches neither "
            f"({', '.join(space)}); add one of them to the space, or use --scheduler asha"
        )
    return perturbed


def empty_record(perturbed: Iterable[str]) -> dict[str, Any]:
    return {"perturbed": list(perturbed), "trials": {}, "exploits": []}


def read_lineage(exp_dir: Location) -> Optional[dict[str, Any]]:
    """The experiment's ``pbt_lineage.json``, or None (an ASHA search, or a PBT search before its first trial)."""
    path = exp_dir / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("trials"), dict) else None


def pbt_round(samples: float, burn_in: float, interval: float) -> int:
    """Which perturbation round a result is in: 0 before ``burn_in`` images, then 1 + how many ``interval``
    images past it. PBT's time axis (`tuner.pbt.LineagePBT`): every trial, whatever its images per step,
    meets the same thresholds ``burn_in + k * interval`` (images seen: equal compute), and a copy of another
    trial's checkpoint continues on them."""
    return 0 if samples < burn_in else 1 + int((samples - burn_in) // interval)


def perturbation_due(step: int, images_per_step: int, burn_in: float, interval: float, max_steps: int) -> bool:
    """Whether PBT looks at the result of optimizer ``step`` (the trial checkpoints there): the first step of
    a new round. The last step is left out: a trial at its budget is done."""
    if step >= max_steps:
        return False
    return pbt_round(step * images_per_step, burn_in, interval) > pbt_round((step - 1) * images_per_step, burn_in, interval)


def exploits_into(record: Optional[Mapping[str, Any]], trial_id: str) -> int:
    """How many times the trial continued from another trial's checkpoint."""
    return sum(e["trial"] == trial_id for e in (record or {}).get("exploits", ()))


def schedule(entry: Mapping[str, Any], key: str) -> tuple[float, list[list[float]]]:
    """``(starting value, [[step, value], ...])`` of one perturbed field along a lineage; steps where the
    value stayed the same are left out."""
    start = entry["initial"][key]
    steps, current = [], start
    for change in entry.get("changes", ()):
        value = change["values"][key]
        if value != current:
            steps.append([change["step"], value])
            current = value
    return start, steps


def schedule_text(entry: Optional[Mapping[str, Any]], key: str) -> Optional[str]:
    """A lineage's schedule of ``key`` for a table cell: ``1.2e-03, 300: 2.4e-03, 350: 1.9e-03``."""
    if not entry:
        return None
    start, steps = schedule(entry, key)
    return ", ".join([f"{start:.3g}", *(f"{step}: {value:.3g}" for step, value in steps)])


def rerun_overrides(entry: Mapping[str, Any], perturbed: Iterable[str]) -> dict[str, Any]:
    """The config fields the plain re-run of a lineage takes: each perturbed field at its root value, and its
    schedule (None where it never changed)."""
    out: dict[str, Any] = {}
    for key in perturbed:
        start, steps = schedule(entry, key)
        out[key] = start
        out[PERTURBABLE[key]] = steps or None
    return out


def segments(entry: Mapping[str, Any], trial_id: str) -> list[dict[str, Any]]:
    """The lineage's pieces: ``{"trial", "after_step", "values"}``; piece k ran from ``after_step`` to the
    next piece's, under ``values``. The first is the root from step 0, the last the trial itself."""
    changes = list(entry.get("changes", ()))
    root = changes[0]["from"] if changes else trial_id
    out = [{"trial": root, "after_step": 0, "values": dict(entry["initial"])}]
    for change in changes:
        out.append({"trial": change["into"], "after_step": change["step"], "values": dict(change["values"])})
    return out


def lineage_rows(exp_dir: Location, trial_dirs: Mapping[str, Location], entry: Mapping[str, Any], trial_id: str) -> list[dict[str, Any]]:
    """Every step of a trial's lineage, each read from the trial that trained it (``trial_dirs``: trial_id ->
    its folder). Piece k is the run of consecutive steps that trial reported after restoring at
    ``after_step`` under the piece's values (Ray's ``iterations_since_restore`` is 1 at a restore). Stops at
    the first piece it cannot find, so a short list says how far the record could be followed."""
    pieces = segments(entry, trial_id)
    rows: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        end = pieces[k + 1]["after_step"] if k + 1 < len(pieces) else math.inf
        folder = trial_dirs.get(piece["trial"])
        reports = read_reports(folder / "result.json")[0] if folder is not None else []
        found = _piece(reports, piece["after_step"], end, piece["values"])
        if not found:
            break
        rows.extend(found)
        if len(found) < end - piece["after_step"] and k + 1 < len(pieces):
            break
    return rows


def _piece(reports: list[dict[str, Any]], after: int, end: float, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The consecutive steps ``after+1 .. end`` a trial reported from a start at ``after`` under ``values``."""

    def starts(i: int) -> bool:
        row = reports[i]
        if row["step"] != after + 1 or any((row.get("config") or {}).get(k) != v for k, v in values.items()):
            return False
        return after == 0 or row.get("iterations_since_restore") == 1

    begin = next((i for i in reversed(range(len(reports))) if starts(i)), None)
    if begin is None:
        return []
    out = [reports[begin]]
    for row in reports[begin + 1 :]:
        if row["step"] != out[-1]["step"] + 1 or row["step"] > end:
            break
        out.append(row)
    return out
