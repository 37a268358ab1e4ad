"""Search spaces: YAML files a user reads and edits, and the loader that checks them.

A space file maps ``TrainConfig`` field names to one Ray Tune domain each::

    head_lr: {loguniform: [1.0e-6, 1.0e-1]}
    grad_accum_steps: {choice: [1, 2, 4, 8]}
    ce_only_steps: {randint: [0, 200]}

`load_space` validates a file into plain `Domain` values (no Ray needed, so a
bad file fails before Ray starts); `to_tune` turns them into Tune domains. For a
user's training function (``--trainable``) the keys are those of the user's own
config instead (``load_space(path, fields=their_config)``).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from reid_core.config import TrainConfig, canonical_key, check_field_name, coerce_value
from reid_core.errors import UserError

SPACES_DIR = Path(__file__).parent

# Domain name -> (arguments it takes, whether it yields integers). Bounds follow Tune:
# randint/qrandint/lograndint exclude nothing special; randint's upper bound is exclusive.
DOMAINS: dict[str, tuple[str, bool]] = {
    "uniform": ("[low, high]", False),
    "quniform": ("[low, high, q]", False),
    "loguniform": ("[low, high] with 0 < low", False),
    "qloguniform": ("[low, high, q] with 0 < low", False),
    "randint": ("[low, high] integers, high exclusive", True),
    "qrandint": ("[low, high, q] integers", True),
    "lograndint": ("[low, high] integers with 0 < low, high exclusive", True),
    "choice": ("[value, value, ...]", False),
}


class SpaceError(UserError, ValueError):
    """A search space that cannot be used; the message names the key and the rule."""


@dataclass(frozen=True)
class Domain:
    kind: str  # one of DOMAINS
    args: tuple  # the domain's arguments as written

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A shipped space name (``default``) or a path to a user's YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise SpaceError(f"search space file '{path}' does not exist; pass an existing YAML file")
        return path
    shipped = SPACES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise SpaceError(f"unknown search space '{name_or_path}'; shipped: {', '.join(shipped_spaces())}, or pass a .yaml path")
    return shipped


def load_space(name_or_path: str, fields: Optional[Mapping[str, Any]] = None) -> dict[str, Domain]:
    """Read and validate a space: every key a `TrainConfig` field (or, given ``fields``, a user's
    config, a key of it), every domain well formed."""
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"cannot parse search space '{path}': {str(err).splitlines()[0]}; fix the YAML") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"search space '{path}' must map TrainConfig fields to domains, e.g. head_lr: {{loguniform: [1.0e-6, 1.0e-1]}}")
    if fields is not None:
        return {str(key): parse_domain(str(key), value, fields) for key, value in raw.items()}
    return {canonical_key(str(key)): parse_domain(str(key), value) for key, value in raw.items()}


def _check_user_key(key: str, fields: Mapping[str, Any]) -> None:
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"its keys: {', '.join(fields)}"
        raise SpaceError(f"search space key '{key}' is not a key of your config; {hint}")


def parse_domain(key: str, spec: Any, fields: Optional[Mapping[str, Any]] = None) -> Domain:
    if fields is not None:
        _check_user_key(key, fields)
    else:
        try:
            check_field_name(key)
        except ValueError as err:
            raise SpaceError(f"search space: {err}") from None
        key = canonical_key(key)  # a space written before a field was renamed still loads
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"search space key '{key}' must be one domain, e.g. {{loguniform: [1.0e-6, 1.0e-1]}}; got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DOMAINS:
        raise SpaceError(f"search space key '{key}': unknown domain '{kind}'; known: {', '.join(DOMAINS)}")
    form, integer = DOMAINS[kind]
    if not isinstance(args, list) or not args:
        raise SpaceError(f"search space key '{key}': {kind} takes {form}, got {args!r}")

    def bad(rule: str) -> SpaceError:
        return SpaceError(f"search space key '{key}': {kind}{args} {rule}; {kind} takes {form}")

    if kind == "choice":
        for value in args if fields is None else ():  # each choice must be a valid value of the field
            try:
                coerce_value(key, value)
            except ValueError as err:
                raise SpaceError(f"search space key '{key}': choice {value!r} is invalid: {err}") from None
        return Domain(kind, tuple(args))

    expected = 3 if kind.startswith("q") else 2
    if len(args) != expected or not all(_is_number(a) for a in args):
        raise bad(f"needs {expected} numbers")
    args = [float(a) if isinstance(a, str) else a for a in args]
    low, high = args[0], args[1]
    if not low < high:
        raise bad("needs low < high")
    if "log" in kind and low <= 0:
        raise bad("needs low > 0 on a log scale")
    if expected == 3 and args[2] <= 0:
        raise bad("needs q > 0")
    if integer and not all(float(a).is_integer() for a in args):
        raise bad("needs integers")
    field_type = type(getattr(TrainConfig(), key) if fields is None else fields[key])
    if field_type is int and not integer:
        raise SpaceError(f"search space key '{key}' is an integer field; use randint, qrandint, lograndint or choice, not {kind}")
    for bound in (low, high - 1 if integer and kind in ("randint", "lograndint") else high) if fields is None else ():
        try:
            TrainConfig.from_dict({key: bound})
        except ValueError as err:
            raise SpaceError(f"search space key '{key}': bound {bound!r} is invalid: {err}") from None
    return Domain(kind, tuple(int(a) if integer else a for a in args))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def to_tune(space: dict[str, Domain]) -> dict[str, Any]:
    """The same space as Ray Tune domains (imports ray; call it in the tuner only)."""
    from ray import tune

    return {key: getattr(tune, d.kind)(list(d.args)) if d.kind == "choice" else getattr(tune, d.kind)(*d.args) for key, d in space.items()}
