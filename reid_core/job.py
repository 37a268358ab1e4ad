"""What differs between our training function and a user's: one object, which the search's settings carry.

Everything the harness does with a training function (a search's trial, the plain run of ``reid-tune
train`` / ``reid-tune run``, the pre-flight, the points file, the export of the winner) is the same code
for both: the function is called under the contract (`reid_core.contract`), ``fn(config, report)``.
What is not the same is asked of a `Job`:

- its **config**: ours is a `reid_core.config.TrainConfig` (old key names mapped, values typed, the
  search's budget, threads and Go-line margin written into it); a user's is their own mapping;
- its **space**: which keys a search space may name, and the space searched by default (ours only);
- its **images per optimizer step**, the unit of every budget: ours reads it off the config, a user's
  function is run up to its first report to learn it;
- its **pre-flight**: ours checks data, wiring and an overfit run (`reid_core.preflight`); a user's
  function is checked on its first report;
- what a search may **optimise** and **perturb** (retrieval metrics and PBT need our job), and the
  command that **re-runs** a config.

`job_for(spec)` gives the one for ``--trainable package.module:function`` (None: ours). No Ray.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

from reid_core.config import TrainConfig, canonical_key, coerce_value, read_config_file
from reid_core.contract import first_report, load_trainable, preflight_checks, state_bytes, trainable_root
from reid_core.errors import UserError
from reid_core.schema import EVAL_METRICS

OURS = "reid_core.train:train"  # our training function: the reference implementation of the contract
Log = Callable[[str], None]


class Job:
    """A user's training function (``--trainable package.module:function``) and what the harness knows of it."""

    default_space: Optional[str] = None  # the space searched without --space (a user's must be given)
    metrics: tuple[str, ...] = ("ce_ema", "ce")  # what a search may optimise: what every function reports
    perturbable: tuple[str, ...] = ()  # fields PBT may change mid-run; none: a function must honour a copied checkpoint's new LR

    def __init__(self, spec: str, root: Optional[str] = None):
        self.spec = spec  # 'package.module:function'
        self.root = root  # the folder holding its top-level package (for the workers' sys.path)
        self._first: Optional[dict[str, Any]] = None  # its first report at the base config, once run
        self._checkpoint_bytes: Optional[int] = None  # the checkpoint its first report offered, in bytes (None: none offered)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def function(self) -> Callable[..., Any]:
        """The function itself (one line naming the problem if it cannot be imported)."""
        return load_trainable(self.spec, self.root)

    def exported(self) -> dict[str, Any]:
        """What ``best_config.json`` says of the function, so that ``reid-tune run --config`` finds it."""
        return {"trainable": self.spec}

    def located(self) -> dict[str, Any]:
        """What the search's settings say of the function: its spec, and the folder a Ray worker imports it from."""
        self.function()  # imported: its folder is known
        return {"trainable": self.spec, "trainable_root": trainable_root(self.spec)}

    def rerun_command(self, config_file: str | Path = "best_config.json") -> str:
        return f"reid-tune run --trainable {self.spec} --config {config_file} --out DIR"

    # --- configs ------------------------------------------------------------------------------

    def read_config(self, path: Optional[str], overrides: Sequence[str] = (), shortcuts: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """The base config: a YAML/JSON mapping (an exported best_config.json works), ``--set`` on top."""
        if shortcuts:
            flag = f"--{next(iter(shortcuts)).replace('_', '-')}"
            raise UserError(f"{flag} sets reid_core's own config; with --trainable set a key of your config with --set KEY=VALUE")
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

    def key(self, name: str) -> str:
        """A config key as today's config names it (a user's keys are theirs, never renamed)."""
        return name

    def value(self, key: str, value: Any) -> Any:
        """A searched value typed as the config wants it (YAML 1.1 reads 1e-6 as a string)."""
        return _number(value)

    def trial_config(self, base: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's complete config: the base with the sampled values on top."""
        return {**base, **sampled}

    def with_harness(self, config: Mapping[str, Any], *, max_steps: Optional[int] = None, threads: Optional[int] = None,
                     chance_margin: Optional[float] = None) -> dict[str, Any]:  # fmt: skip
        """``config`` with what the harness decides written into it where the function's config has a place for it
        (a user's: none; the harness enforces the budget in images, sets the threads and judges by the margin)."""
        return dict(config)

    def space_keys(self, base: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        """The keys a search space may name (`search_spaces.load_space`'s ``fields``): those of the user's config."""
        return base

    # --- before the first trial ----------------------------------------------------------------

    def check(self, config: Mapping[str, Any], log: Log = print) -> None:
        """What must hold before Ray starts, also on ``--resume`` and with ``--skip-preflight``: it imports."""
        self.function()

    def images_per_step(self, config: Mapping[str, Any], threads: int = 1) -> float:
        """Images per optimizer step at ``config``: the unit of the search's budgets. The function is run in
        this process up to its first report to learn it (kept for `preflight`)."""
        if self._first is None:
            self._first = first_report(self.function(), dict(config), threads, on_checkpoint=self._measure_checkpoint)
        first = self._first
        per_step = first["samples"] / max(first["step"], 1)
        if not per_step > 0 or not math.isfinite(per_step):
            raise UserError(f"the first report says step {first['step']}, samples {first['samples']}: samples must count the images seen")
        return per_step

    def preflight(self, config: Mapping[str, Any], *, head_lr: Optional[float] = None, threads: int = 1, log: Log = print) -> None:
        """The checks one step allows, on the function's first report (`reid_core.contract.preflight_checks`)."""
        self.images_per_step(config, threads)
        preflight_checks(self._first, log)

    def _measure_checkpoint(self, state: Any) -> None:
        self._checkpoint_bytes = state_bytes(state)

    def checkpoint_bytes(self, config: Mapping[str, Any], threads: int = 1) -> Optional[int]:
        """Bytes of one trial checkpoint: the state the function's first report offers (`images_per_step` runs it up to
        there); None when it offers none (it is never checkpointed)."""
        self.images_per_step(config, threads)
        return self._checkpoint_bytes


class ReIDJob(Job):
    """Our own training function, `reid_core.train.train`, whose config is a `TrainConfig`."""

    default_space = "default"
    metrics = ("ce_ema", "ce", "loss", *EVAL_METRICS)  # it evaluates retrieval when a search ranks by it
    perturbable = ("head_lr", "backbone_lr")  # it trains at a restored checkpoint's new LR (Trainer.load_state_dict)

    def __init__(self) -> None:
        super().__init__(OURS)

    def exported(self) -> dict[str, Any]:
        return {}  # the default function: a best_config.json without `trainable` is ours

    def located(self) -> dict[str, Any]:
        return {}  # settings without `trainable` are ours (as every experiment before user functions)

    def rerun_command(self, config_file: str | Path = "best_config.json") -> str:
        return f"reid-tune train --config {config_file} --out DIR"

    def read_config(self, path: Optional[str], overrides: Sequence[str] = (), shortcuts: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        base = TrainConfig.from_file(path) if path else TrainConfig()
        return TrainConfig.from_dict(dict(shortcuts or {}), base=base.with_overrides(overrides)).to_dict()

    def key(self, name: str) -> str:
        return canonical_key(name)  # an old field name is read as today's (one note line)

    def value(self, key: str, value: Any) -> Any:
        return coerce_value(key, value)

    def trial_config(self, base: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The base plus the sampled values, its step budget scaled so that every trial sees the same images.

        ``base["max_steps"]`` is the budget in optimizer steps at the base's accumulation: a trial with
        ``grad_accum_steps=k`` trains ``ceil(max_steps * base_k / k)`` steps.
        """
        base_cfg = TrainConfig.from_dict(base)
        cfg = TrainConfig.from_dict(sampled, base=base_cfg)
        steps = math.ceil(base_cfg.max_steps * base_cfg.grad_accum_steps / cfg.grad_accum_steps)
        return TrainConfig.from_dict({"max_steps": max(1, steps)}, base=cfg).to_dict()

    def with_harness(self, config: Mapping[str, Any], *, max_steps: Optional[int] = None, threads: Optional[int] = None,
                     chance_margin: Optional[float] = None) -> dict[str, Any]:  # fmt: skip
        """The step budget, the torch threads and the Go-line margin (the run's raise and ``sdm_start=go_line``
        judge by it) written into the config where given, with data and weights paths made absolute: Ray runs
        each trial in its own working folder."""
        cfg = TrainConfig.from_dict(config)
        given = {"max_steps": max_steps, "threads": threads, "chance_margin": chance_margin}
        values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if cfg.data != "synthetic" and Path(cfg.data).expanduser().exists():
            values["data"] = str(Path(cfg.data).expanduser().resolve())
        if cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_file():
            values["pretrained"] = str(Path(cfg.pretrained).expanduser().resolve())
        return TrainConfig.from_dict(values, base=cfg).to_dict()

    def space_keys(self, base: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
        return None  # TrainConfig's fields, old names mapped (search_spaces' default)

    def check(self, config: Mapping[str, Any], log: Log = print) -> None:
        """In the driver, once: pretrained weights fetched (or, offline, one line naming the fix) and the data set
        read and checked, not in every trial; what the data set changes (no captions: no SDM) said once."""
        from reid_core.data import load_data
        from reid_core.model import context_length
        from reid_core.pretrained import check_model, resolve_pretrained

        cfg = TrainConfig.from_dict(config)
        check_model(cfg)
        resolve_pretrained(cfg)
        data = load_data(cfg, context_length(cfg))  # cached in this process: the pre-flight reads it again for free
        for note in data.notes:
            log(note)

    def images_per_step(self, config: Mapping[str, Any], threads: int = 1) -> float:
        return float(TrainConfig.from_dict(config).images_per_step)

    def preflight(self, config: Mapping[str, Any], *, head_lr: Optional[float] = None, threads: int = 1, log: Log = print) -> None:
        """Data, wiring and an overfit run at ``head_lr`` (the most favourable one the search will try)."""
        from reid_core.contract import out_of_memory, out_of_memory_error
        from reid_core.preflight import preflight

        try:
            preflight(TrainConfig.from_dict(config), overfit_head_lr=head_lr, log=log)
        except (RuntimeError, MemoryError) as err:  # a model too large for this machine: one line, as in a trial
            where = out_of_memory(err)
            if where is None:
                raise
            raise out_of_memory_error(where, None, err, config, "the pre-flight") from None

    def checkpoint_bytes(self, config: Mapping[str, Any], threads: int = 1) -> Optional[int]:
        """Bytes of one trial checkpoint (`reid_core.trainer.Trainer.state_dict`), counted, not written: the weights and
        buffers, AdamW's two moments of every trainable parameter, the monitor's copy of the classifier at step 0, and
        with ``head_guard`` its best head and that head's moments. The data set is read for its identities (cached).
        An upper bound: until the text tower trains (the CE-only phase) it has no moments (tiny model: 15 MB against 42)."""
        from reid_core.data import load_data
        from reid_core.model import context_length, state_bytes as model_state_bytes

        cfg = TrainConfig.from_dict(config)
        sizes = model_state_bytes(cfg, load_data(cfg, context_length(cfg)).num_classes)
        return sizes["model"] + 2 * sizes["trainable"] + sizes["classifier"] + (3 * sizes["head"] if cfg.head_guard else 0)


def job_for(spec: Optional[str] = None, root: Optional[str] = None) -> Job:
    """The job of ``--trainable spec`` (None, or ours named: our own)."""
    return ReIDJob() if spec in (None, OURS) else Job(spec, root)


def _known(key: str, base: Mapping[str, Any], what: str) -> None:
    if key not in base:
        close = difflib.get_close_matches(key, list(base), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"its keys: {', '.join(base)}"
        raise UserError(f"{what} names '{key}', which is not a key of your config; {hint}")


EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-6 (no dot) as a string: make it the number it means (as YAML 1.2 and JSON do)."""
    if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value
