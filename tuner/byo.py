"""``reid-tune search --trainable package.module:function``: a search over the user's own training loop.

Everything the user can get wrong is checked here, before Ray starts (one line, exit 2): the
function imports and is callable, the base config is a mapping, every space key is one of its
keys (the error names the closest), the function's first report keeps the contract
(`reid_core.contract`). Then the search runs as for reid_core's own job: Optuna, ASHA on
images seen, the chance-level rule, the same tables, pictures and exports.

The budget. The search's time axis is ``samples`` (images seen). The function is run once in
the driver up to its first report (the probe; also the pre-flight), and ``samples / step`` there
is the base config's images per optimizer step. ``--max-steps`` and ``--grace-steps`` count
optimizer steps *at the base config*: a trial may see ``max_steps x images_per_step`` images
(the harness ends it there, whatever its own step budget), and is judged by the chance-level
rule and ASHA's first rung after ``grace_steps x images_per_step``. A trial whose sampled values
change its images per step (e.g. ``accum``) takes more or fewer steps for the same images.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from reid_core.contract import load_trainable, preflight_checks, probe, trainable_root
from reid_core.errors import UserError
from reid_core.flags import SHORTCUTS
from search_spaces import Domain, load_space
from tuner.settings import settings_from_flags

USER_METRICS = ("ce_ema", "ce")  # what every user's function reports (or the harness derives)


def read_user_config(path: Optional[str], overrides: list[str]) -> dict[str, Any]:
    """The user's base config: a YAML/JSON mapping (an exported best_config.json works), ``--set`` on top."""
    from reid_core.config import read_config_file

    if not path:
        raise UserError("--trainable needs --config FILE: your function's base config, a YAML or JSON mapping")
    base = {key: _number(value) for key, value in read_config_file(path).items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value; write e.g. --set lr_head=1e-3")
        _known(key, base, "--set")
        base[key] = _number(yaml.safe_load(raw)) if raw.strip() else raw
    return base


def _known(key: str, base: dict[str, Any], what: str) -> None:
    if key not in base:
        import difflib

        close = difflib.get_close_matches(key, list(base), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"its keys: {', '.join(base)}"
        raise UserError(f"{what} names '{key}', which is not a key of your config; {hint}")


EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-6 (no dot) as a string: make it the number it means (as YAML 1.2 and JSON do)."""
    if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def read_user_points(path: Optional[str], space: dict[str, Domain]) -> list[dict[str, Any]]:
    from tuner.search import read_points_file

    if path is None:
        return []
    points = read_points_file(path)
    for point in points:
        for key in point:
            if key not in space:
                raise UserError(f"--points-to-evaluate names '{key}', which the space does not search ({', '.join(space)})")
    return [{k: _number(v) for k, v in point.items()} for point in points]


def _check_flags(args) -> None:
    given = [f"--{key.replace('_', '-')}" for key in SHORTCUTS if getattr(args, key, None) is not None]
    if given:
        raise UserError(f"{given[0]} sets reid_core's own config; with --trainable set a key of your config with --set KEY=VALUE")
    if args.space == "default":
        raise UserError("--trainable needs --space FILE: a YAML space naming keys of your --config (e.g. lr_head: {loguniform: [1.0e-6, 1.0e-1]})")
    if args.metric not in USER_METRICS:
        raise UserError(f"--metric {args.metric}: with --trainable the search optimises {' or '.join(USER_METRICS)}")


def user_search(args, experiment_dir: Callable[[Any], Path], log: Callable[[str], None], checkpoint_every: int):
    """Check everything and probe the function; ``(settings, exp_dir, space, points)`` for the driver."""
    _check_flags(args)
    from tuner.search import _parse_fault

    fault = _parse_fault(args.inject_fault, coerce=lambda key, value: _number(value))  # the user's keys, untyped
    fn = load_trainable(args.trainable)
    base = read_user_config(args.config, list(args.overrides))
    space = load_space(args.space, fields=base)
    points = read_user_points(args.points_to_evaluate, space)
    exp_dir = experiment_dir(args)
    threads = max(1, int(args.cpus_per_trial))  # a trial holds that many CPUs; its torch threads follow
    first = probe(fn, base, threads)
    per_step = first["samples"] / max(first["step"], 1)
    if not per_step > 0 or not math.isfinite(per_step):
        raise UserError(f"the first report says step {first['step']}, samples {first['samples']}: samples must count the images seen")
    if not args.skip_preflight:
        preflight_checks(first, log)
    max_samples, grace_samples = round(args.max_steps * per_step), round(args.grace_steps * per_step)
    log(
        f"{args.trainable}: {per_step:g} images per optimizer step at the base config, chance CE {first['chance_ce']:.3f}; "
        f"each trial may see {max_samples} images ({args.max_steps} steps there), judged after {grace_samples}"
    )
    settings = settings_from_flags(
        args,
        base=base,
        space={k: d.describe() for k, d in space.items()},
        grace_samples=grace_samples,
        max_samples=max_samples,
        checkpoint_every=checkpoint_every,
        inject_fault=fault,
        trainable=args.trainable,
        trainable_root=trainable_root(args.trainable),
        threads=threads,
    )
    return settings, exp_dir, space, points
