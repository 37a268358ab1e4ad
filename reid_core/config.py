"""`TrainConfig`: every knob of the training job, in one frozen dataclass.

A config is built from a dict, a JSON/YAML file, or ``key=value`` overrides
(the ``--set`` syntax of every command). Unknown keys are an error that names
the closest field; values are coerced to the field's type and validated, so a
bad value fails before any data is loaded or any trial is launched.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from reid_core.chance import DEFAULT_CHANCE_MARGIN
from reid_core.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or key that breaks a rule; the message names both."""


AMP_MODES = ("auto", "off", "bf16", "fp16")
LR_SCHEDULES = {"head_lr_schedule": "head_lr", "backbone_lr_schedule": "backbone_lr"}  # schedule field -> the LR it steps
SDM_STARTS = ("steps", "go_line")  # what ends the CE-only phase: a step count, or CE leaving chance
EVAL_SPLITS = ("test", "val")


@dataclass(frozen=True)
class TrainConfig:
    # --- data -------------------------------------------------------------
    data: str = "synthetic"  # 'synthetic' (built-in, generated in memory) or a data set folder/annotation file
    data_format: Optional[str] = None  # format of `data` (cuhk-pedes, icfg-pedes, rstpreid, market1501); None = detected from what is there
    eval_split: str = "test"  # split retrieval is evaluated on: 'test', or 'val' where the data set has one
    loader_workers: Optional[int] = None  # DataLoader processes decoding images of a data set on disk; None = up to 4 on CUDA (reid_core.pace.CUDA_WORKERS), 0 on CPU
    num_classes: Optional[int] = None  # identity classes of the head; None = number of training identities
    synthetic_identities: int = 400  # synthetic only: training identities (= classes); test identities are a quarter more
    synthetic_images_per_identity: int = 8  # synthetic only: images rendered per identity
    image_size: tuple[int, int] = (64, 32)  # (height, width) in pixels the images are resized to
    holdout_per_id: int = 1  # images of each training identity that has at least holdout_min_images held out of training (never trained on): the unseen-image CE (unseen_ce) is measured on them; 0 = off
    holdout_min_images: int = 3  # an identity gives holdout_per_id images only when it has at least this many (it keeps the rest: two or more at the defaults); an identity with fewer keeps all its images
    context_length: Optional[int] = None  # caption length in tokens; None = the model's own

    # --- model --------------------------------------------------------------
    model: str = "reid-tiny"  # open_clip model name; 'reid-tiny' is the shipped 2-layer CPU model
    pretrained: Optional[str] = "auto"  # 'auto' = the model's shipped weights (reid-tiny: 'synthetic'), random init for other models; None/'none' = random init; an open_clip tag (e.g. 'openai'); or a local weights file

    # --- optimisation ---------------------------------------------------------
    batch_size: int = 32  # images per micro-batch (one forward/backward)
    grad_accum_steps: int = 1  # micro-batches per optimizer step; images per step = batch_size * grad_accum_steps
    max_steps: int = 300  # optimizer steps to train for
    head_lr: float = 1e-2  # learning rate of the new modules (BNNeck, identity classifier)
    backbone_lr: float = 1e-5  # learning rate of the open_clip image and text encoders
    weight_decay: float = 4e-5  # AdamW decoupled weight decay; never applied to biases and norm weights
    lr_warmup_steps: int = 10  # optimizer steps of linear LR warm-up before the cosine decay to 0
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    head_lr_schedule: Optional[tuple[tuple[int, float], ...]] = None  # [[step, lr], ...] steps ascending: after `step` optimizer steps the head's LR is `lr` (warm-up and cosine still multiply it), before the first entry head_lr; None = head_lr throughout. What a --scheduler pbt winner exports
    backbone_lr_schedule: Optional[tuple[tuple[int, float], ...]] = None  # the same for backbone_lr

    # --- the run's own head-LR changes (reid_core.head_lr; each change is an event in summary.json) -----
    head_guard: bool = False  # automatic fallback: when the identity CE runs away (ce_ema above head_guard_ce_ratio x log(C) and rising), put the head back as it was at its lowest ce_ema and multiply its LR by head_guard_factor
    head_guard_ce_ratio: float = 2.0  # head_guard: fire above this multiple of chance, log(C) (2: 12 nats for 400 ids; healthy runs stay under 1.1x, a runaway head passes 2x within a few steps)
    head_guard_factor: float = 0.1  # head_guard: the head LR is multiplied by this at each firing
    head_lr_raise: float = 1.0  # progressive head LR: every head_lr_watch_steps, multiply the head LR by this while ce_ema is above the Go line and the diagnosis says lr_too_low; 1 = off
    head_lr_watch_steps: int = 100  # head_lr_raise: optimizer steps watched before each decision (the seed's 100)
    head_lr_raise_cap: Optional[float] = None  # head_lr_raise: the highest head LR a raise may reach; None = no cap

    # --- losses ----------------------------------------------------------------
    ce_only_steps: int = 50  # CE-only phase, optimizer steps: SDM weight is 0 and the text encoder is not run (not the LR warm-up)
    sdm_start: str = "steps"  # when the CE-only phase ends: 'steps' (after ce_only_steps) or 'go_line' (once ce_ema first reaches the Go line, log(C) - chance_margin)
    sdm_start_cap: Optional[int] = None  # sdm_start=go_line only: optimizer steps after which SDM starts anyway; None = never (a stuck run stays CE-only)
    sdm_weight: float = 1.0  # target weight of the SDM image-text loss after the ramp
    sdm_ramp_steps: int = 50  # optimizer steps over which the SDM weight rises linearly from 0 to sdm_weight
    logit_scale: float = 50.0  # SDM similarity scale (1 / temperature 0.02), fixed as in IRRA
    label_smoothing: float = 0.0  # identity cross-entropy label smoothing (0.1 is the usual ReID value)
    ce_ema_beta: float = 0.95  # smoothing of ce_ema, the CE decisions use, per batch_size images: time constant 1/(1-beta) batches (a step of k micro-batches counts k)
    chance_margin: float = DEFAULT_CHANCE_MARGIN  # Go line = log(C) - chance_margin, nats: where the run counts as learning (sdm_start=go_line, head_lr_raise) and where the chance-level rule judges; the search sets it from --chance-margin

    # --- evaluation ------------------------------------------------------------
    eval_every: int = 0  # optimizer steps between retrieval evaluations; 0 = only at the end of the run
    unseen_every: int = 50  # unseen_ce (identity CE on a fixed batch of held-out images, no grad, eval mode) is measured every this many steps, repeated between, NaN before the first (a forward of up to 32 images, about a third of a training step on the tiny CPU model: ~0.6% of a step at 50, benchmarks/unseen_cost.py)
    monitor_every: int = 5  # the head's tensor statistics (weight norm and change, gradient norm, logit std, feature norm) are measured at step 1 and every this many steps, repeated between; 1 = every step (~2% of a tiny CPU step)

    # --- runtime ---------------------------------------------------------------
    seed: int = 0  # seeds data order, augmentation and initialisation
    device: str = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'
    amp: str = "auto"  # mixed precision: 'auto' (bf16 on CUDA when supported, else fp16; off on CPU), 'off', 'bf16', 'fp16'
    threads: int = 1  # torch CPU threads; 0 = torch's default. Part of the config so a re-run reproduces the trial

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, int)):  # TrainConfig(image_size=[64, 32]) from Python code
            object.__setattr__(self, "image_size", coerce_value("image_size", self.image_size))
        for key in LR_SCHEDULES:  # a schedule given as lists from Python code
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, coerce_value(key, getattr(self, key)))
        for problem in _problems(self):
            raise ConfigError(problem)

    # --- construction ------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: Optional["TrainConfig"] = None) -> "TrainConfig":
        """Build a config from ``values`` on top of ``base`` (default: the defaults)."""
        base = base if base is not None else cls()
        coerced = {canonical_key(key): coerce_value(key, value) for key, value in values.items()}
        return dataclasses.replace(base, **coerced)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Load a JSON or YAML config; an exported ``{"config": {...}, ...}`` file works too."""
        return cls.from_dict(read_config_file(path))

    def with_overrides(self, overrides: Sequence[str]) -> "TrainConfig":
        """Apply ``key=value`` strings (the ``--set`` syntax)."""
        return TrainConfig.from_dict(parse_overrides(overrides), base=self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        for key in LR_SCHEDULES:
            if out[key] is not None:
                out[key] = [list(entry) for entry in out[key]]
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)

# Keys renamed since 0.1 (one name per concept): configs, best_config.json files, search spaces and
# experiments written with the old names still load, each old key noted once per process.
RENAMED_KEYS = {"lr_backbone": "backbone_lr", "warmup_steps": "ce_only_steps"}
_noted: set[str] = set()


def canonical_key(key: str) -> str:
    """The field ``key`` names today: an old name is mapped to its new one (with one note on stderr)."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    if key not in _noted:
        _noted.add(key)
        print(f"note: config key '{key}' is now '{new}'; read as '{new}'", file=sys.stderr)
    return new


def check_field_name(key: str) -> None:
    """Raise `ConfigError` naming the closest field when ``key`` is not a field (or an old name of one)."""
    if key in FIELDS or key in RENAMED_KEYS:
        return
    # Same words in another order first: the metric 'lr_head' is the field 'head_lr' (difflib says 'threads').
    words = sorted(key.split("_"))
    close = [name for name in FIELDS if sorted(name.split("_")) == words]
    close = close or difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(FIELDS)}"
    raise ConfigError(f"unknown config key '{key}'; {hint}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON/YAML config file into a dict of field values (safe loaders only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing .json or .yaml file")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot parse config file '{path}': {first}; fix the syntax") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of field: value, not {type(values).__name__}")
    # An exported best config keeps its provenance beside the fields.
    if isinstance(values.get("config"), dict):
        values = values["config"]
    return values


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["head_lr=1e-3", "image_size=64,32"]`` into a dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value; write e.g. --set head_lr=1e-3")
        check_field_name(key)
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key] = raw
    return out


def coerce_value(key: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``key`` or raise a `ConfigError` naming both."""
    check_field_name(key)
    key = canonical_key(key)
    hint = _HINTS[key]
    optional = type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key '{key}' must be {expected}, got {value!r}")

    if key in LR_SCHEDULES:
        return _coerce_schedule(value, bad("a list of [step, lr] pairs, e.g. [[300, 0.02], [400, 0.01]]"))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if hint is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise bad("an integer")
    if hint is float:
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad("a string")
    if typing.get_origin(hint) is tuple:  # image_size: (height, width)
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if isinstance(value, (list, tuple)) and len(value) == 2:
            try:
                return tuple(_coerce_int(v) for v in value)
            except ValueError:
                pass
        raise bad("[height, width] in pixels, e.g. 64,32")
    raise TypeError(f"no coercion for field {key} of type {hint}")  # a bug, not a user error


def _coerce_schedule(value: Any, error: ConfigError) -> tuple[tuple[int, float], ...]:
    """``[[step, lr], ...]`` (lists, tuples, or their YAML/JSON text) -> a tuple of ``(int step, float lr)``."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise error from None
    if not isinstance(value, (list, tuple)):
        raise error
    out = []
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise error
        step, lr = entry
        try:
            lr = float(lr)  # YAML 1.1 reads 1e-3 as a string
        except (TypeError, ValueError):
            raise error from None
        if isinstance(step, bool) or not (isinstance(step, int) or (isinstance(step, float) and step.is_integer())):
            raise error
        out.append((int(step), lr))
    return tuple(out)


def _schedule_ok(schedule: Optional[tuple[tuple[int, float], ...]], lowest: float) -> bool:
    """Steps >= 0 and strictly ascending, every LR finite and >= ``lowest``."""
    if schedule is None:
        return True
    steps = [step for step, _ in schedule]
    ascending = all(a < b for a, b in zip(steps, steps[1:])) and all(step >= 0 for step in steps)
    return ascending and all(math.isfinite(lr) and lr >= lowest for _, lr in schedule)


def _coerce_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return int(v)


def _problems(cfg: TrainConfig):
    """Yield one message per broken rule, naming the value and the rule."""

    def rule(name: str, ok: bool, text: str):
        if not ok:
            return f"config key '{name}' is {getattr(cfg, name)!r}, but must be {text}"
        return None

    checks = [
        rule("batch_size", cfg.batch_size >= 2, ">= 2 (BatchNorm needs two samples)"),
        rule("grad_accum_steps", cfg.grad_accum_steps >= 1, ">= 1"),
        rule("max_steps", cfg.max_steps >= 1, ">= 1"),
        rule("head_lr", math.isfinite(cfg.head_lr) and cfg.head_lr > 0, "> 0"),
        rule("backbone_lr", math.isfinite(cfg.backbone_lr) and cfg.backbone_lr >= 0, ">= 0"),
        rule("weight_decay", cfg.weight_decay >= 0, ">= 0"),
        rule("lr_warmup_steps", cfg.lr_warmup_steps >= 0, ">= 0"),
        rule("grad_clip", cfg.grad_clip >= 0, ">= 0 (0 turns clipping off)"),
        rule("head_guard_ce_ratio", cfg.head_guard_ce_ratio > 1, "> 1 (a multiple of chance, log C)"),
        rule("head_guard_factor", 0 < cfg.head_guard_factor < 1, "in (0, 1): the guard lowers the head LR"),
        rule("head_lr_raise", math.isfinite(cfg.head_lr_raise) and cfg.head_lr_raise >= 1, ">= 1 (1 turns the raise off)"),
        rule("head_lr_watch_steps", cfg.head_lr_watch_steps >= 1, ">= 1"),
        rule("head_lr_raise_cap", cfg.head_lr_raise_cap is None or cfg.head_lr_raise_cap > 0, "> 0 or unset"),
        rule(
            "head_lr_schedule",
            _schedule_ok(cfg.head_lr_schedule, 0.0) and all(lr > 0 for _, lr in cfg.head_lr_schedule or ()),
            "[[step, lr], ...] with steps >= 0 ascending and every lr > 0",
        ),
        rule("backbone_lr_schedule", _schedule_ok(cfg.backbone_lr_schedule, 0.0), "[[step, lr], ...] with steps >= 0 ascending and every lr >= 0"),
        rule("ce_only_steps", cfg.ce_only_steps >= 0, ">= 0"),
        rule("sdm_weight", cfg.sdm_weight >= 0, ">= 0"),
        rule("sdm_start", cfg.sdm_start in SDM_STARTS, f"one of {', '.join(SDM_STARTS)}"),
        rule("sdm_start_cap", cfg.sdm_start_cap is None or cfg.sdm_start_cap >= 0, ">= 0 or unset"),
        rule("sdm_ramp_steps", cfg.sdm_ramp_steps >= 0, ">= 0"),
        rule("logit_scale", cfg.logit_scale > 0, "> 0"),
        rule("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        rule("ce_ema_beta", 0 <= cfg.ce_ema_beta < 1, "in [0, 1)"),
        rule("chance_margin", math.isfinite(cfg.chance_margin) and cfg.chance_margin > 0, "> 0 (nats below log(C): the Go line)"),
        rule("eval_every", cfg.eval_every >= 0, ">= 0 (0 evaluates only at the end)"),
        rule("monitor_every", cfg.monitor_every >= 1, ">= 1 (1 measures the head every step)"),
        rule("eval_split", cfg.eval_split in EVAL_SPLITS, f"one of {', '.join(EVAL_SPLITS)}"),
        rule("loader_workers", cfg.loader_workers is None or cfg.loader_workers >= 0, ">= 0 or unset"),
        rule("threads", cfg.threads >= 0, ">= 0 (0 keeps torch's default)"),
        rule("num_classes", cfg.num_classes is None or cfg.num_classes >= 2, ">= 2 or unset"),
        rule("holdout_per_id", cfg.holdout_per_id >= 0, ">= 0 (0 holds no images out: no unseen_ce)"),
        rule(
            "holdout_min_images",
            cfg.holdout_min_images >= cfg.holdout_per_id + 1 and cfg.holdout_min_images >= 2,
            f"at least holdout_per_id + 1 ({cfg.holdout_per_id + 1}) and 2: an identity must keep an image to train on",
        ),
        rule("unseen_every", cfg.unseen_every >= 1, ">= 1 (1 measures unseen_ce every step)"),
        rule("synthetic_identities", cfg.synthetic_identities >= 2, ">= 2"),
        rule("synthetic_images_per_identity", cfg.synthetic_images_per_identity >= 2, ">= 2"),
        rule("image_size", min(cfg.image_size) >= 8, "at least 8 pixels on each side"),
        rule("amp", cfg.amp in AMP_MODES, f"one of {', '.join(AMP_MODES)}"),
        rule(
            "device",
            cfg.device in ("auto", "cpu", "cuda") or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()),
            "'auto', 'cpu', 'cuda' or 'cuda:N'",
        ),
        rule("data", bool(cfg.data), "'synthetic' or a path"),
        rule("model", bool(cfg.model), "an open_clip model name or 'reid-tiny'"),
    ]
    yield from (c for c in checks if c is not None)
