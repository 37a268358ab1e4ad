"""TrainConfig: round trips through dicts and files, `--set` parsing, coercion and validation."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import reid_core.config
from reid_core.config import FIELDS, ConfigError, TrainConfig, parse_overrides
from reid_core.errors import UserError

# A config that differs from the defaults in every kind of field (int, float, str, Optional, tuple).
CUSTOM = {
    "data": "synthetic",
    "data_format": "synthetic",
    "num_classes": 37,
    "synthetic_identities": 37,
    "image_size": [96, 48],
    "context_length": 16,
    "head_lr": 3e-3,
    "grad_accum_steps": 4,
    "ce_only_steps": 120,
    "label_smoothing": 0.1,
    "seed": 7,
}


# --- round trips ------------------------------------------------------------------


def test_dict_round_trip_keeps_every_field():
    cfg = TrainConfig.from_dict(CUSTOM)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.image_size == (96, 48)
    assert cfg.num_classes == 37 and cfg.head_lr == 3e-3


def test_to_dict_is_plain_json():
    cfg = TrainConfig.from_dict(CUSTOM)
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    assert set(cfg.to_dict()) == set(FIELDS)


def test_save_then_from_file_json(tmp_path: Path):
    cfg = TrainConfig.from_dict(CUSTOM)
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.from_file(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_from_file_yaml(tmp_path: Path, suffix: str):
    cfg = TrainConfig.from_dict(CUSTOM)
    path = tmp_path / f"config{suffix}"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert TrainConfig.from_file(path) == cfg


def test_exported_best_config_layout_loads(tmp_path: Path):
    """The search exports ``{"config": {...}, "trial": ..., "metrics": ...}``; --config takes it as is."""
    cfg = TrainConfig.from_dict(CUSTOM)
    exported = {"config": cfg.to_dict(), "trial": "trial_00003", "metrics": {"ce_ema": 2.1, "step": 300}}
    path = tmp_path / "best_config.json"
    path.write_text(json.dumps(exported))
    assert TrainConfig.from_file(path) == cfg


def test_partial_file_keeps_defaults_for_missing_fields(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("head_lr: 0.001\n")
    cfg = TrainConfig.from_file(path)
    assert cfg == dataclasses.replace(TrainConfig(), head_lr=0.001)


def test_a_config_written_before_chance_margin_loads_with_the_seeds_go_line(tmp_path: Path):
    old = {key: value for key, value in TrainConfig.from_dict(CUSTOM).to_dict().items() if key != "chance_margin"}
    path = tmp_path / "best_config.json"
    path.write_text(json.dumps({"config": old, "trial": "trial_00003"}))
    cfg = TrainConfig.from_file(path)
    assert cfg.chance_margin == 0.39 and cfg == TrainConfig.from_dict(CUSTOM)


def test_empty_yaml_file_is_the_defaults(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert TrainConfig.from_file(path) == TrainConfig()


# --- coercion ------------------------------------------------------------------------


def test_yaml_exponent_without_dot_becomes_float(tmp_path: Path):
    """YAML 1.1 reads ``1e-3`` as the *string* '1e-3'; the config must still get the number."""
    assert yaml.safe_load("head_lr: 1e-3") == {"head_lr": "1e-3"}  # the trap this guards against
    path = tmp_path / "c.yaml"
    path.write_text("head_lr: 1e-3\nbackbone_lr: 5e-6\n")
    cfg = TrainConfig.from_file(path)
    assert cfg.head_lr == 1e-3 and isinstance(cfg.head_lr, float)
    assert cfg.backbone_lr == 5e-6


@pytest.mark.parametrize(
    "override, expected",
    [
        ("image_size=64,32", (64, 32)),
        ("image_size=128, 64", (128, 64)),
        ("image_size=[96, 48]", (96, 48)),
        ("image_size=64x32", (64, 32)),
        ("image_size=48", (48, 48)),
    ],
)
def test_set_image_size(override: str, expected: tuple[int, int]):
    assert TrainConfig().with_overrides([override]).image_size == expected


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("head_lr=1e-3", "head_lr", 1e-3),
        ("head_lr=0.5", "head_lr", 0.5),
        ("head_lr=1", "head_lr", 1.0),  # an integer for a float field
        ("grad_accum_steps=4", "grad_accum_steps", 4),
        ("max_steps=3.0", "max_steps", 3),  # a whole float for an int field
        ("batch_size=16", "batch_size", 16),
        ("num_classes=none", "num_classes", None),
        ("num_classes=null", "num_classes", None),
        ("num_classes=12", "num_classes", 12),
        ("data_format=synthetic", "data_format", "synthetic"),
        ("model=reid-tiny", "model", "reid-tiny"),
        ("device=cpu", "device", "cpu"),
    ],
)
def test_set_values_are_coerced_to_the_field_type(override: str, field: str, expected):
    value = getattr(TrainConfig().with_overrides([override]), field)
    assert value == expected
    assert type(value) is type(expected)


def test_later_overrides_win_and_keep_the_base():
    base = TrainConfig(seed=3)
    cfg = base.with_overrides(["head_lr=1e-3", "head_lr=2e-3"])
    assert cfg.head_lr == 2e-3 and cfg.seed == 3


def test_parse_overrides_returns_plain_values():
    assert parse_overrides(["head_lr=1e-3", "grad_accum_steps=2"]) == {"head_lr": "1e-3", "grad_accum_steps": 2}


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, closest",
    [("head_lrr", "head_lr"), ("grad_accum_step", "grad_accum_steps"), ("ce_only_step", "ce_only_steps"), ("lr_head", "head_lr")],
)
def test_unknown_key_names_the_closest_field(key: str, closest: str):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'; did you mean '{closest}'"):
        TrainConfig.from_dict({key: 1})


def test_unknown_key_in_set_names_the_closest_field():
    with pytest.raises(ConfigError, match="did you mean 'head_lr'"):
        TrainConfig().with_overrides(["head_lrr=0.01"])


def test_unknown_key_with_no_close_field_lists_the_fields():
    with pytest.raises(ConfigError, match="known keys: data, data_format"):
        TrainConfig.from_dict({"zzzzzz": 1})


@pytest.mark.parametrize("item", ["head_lr", "=1e-3", "  =3"])
def test_set_without_key_value_is_an_error(item: str):
    with pytest.raises(ConfigError, match="is not key=value"):
        TrainConfig().with_overrides([item])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": "abc"}, "'batch_size' must be an integer, got 'abc'"),
        ({"batch_size": 2.5}, "'batch_size' must be an integer, got 2.5"),
        ({"batch_size": True}, "'batch_size' must be an integer"),
        ({"head_lr": "fast"}, "'head_lr' must be a number, got 'fast'"),
        ({"head_lr": [1, 2]}, "'head_lr' must be a number"),
        ({"model": 3}, "'model' must be a string, got 3"),
        ({"image_size": "64"}, r"'image_size' must be \[height, width\]"),
        ({"image_size": [64, 32, 3]}, r"'image_size' must be \[height, width\]"),
        ({"image_size": "tall,thin"}, r"'image_size' must be \[height, width\]"),
    ],
)
def test_wrong_type_names_key_and_value(values: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize(
    "key, value, rule",
    [
        ("batch_size", 1, ">= 2"),
        ("grad_accum_steps", 0, ">= 1"),
        ("max_steps", 0, ">= 1"),
        ("head_lr", -1.0, "> 0"),
        ("head_lr", 0.0, "> 0"),
        ("head_lr", math.nan, "> 0"),
        ("head_lr", math.inf, "> 0"),
        ("backbone_lr", -1e-5, ">= 0"),
        ("weight_decay", -0.1, ">= 0"),
        ("lr_warmup_steps", -1, ">= 0"),
        ("grad_clip", -1.0, ">= 0"),
        ("ce_only_steps", -5, ">= 0"),
        ("sdm_weight", -1.0, ">= 0"),
        ("sdm_ramp_steps", -1, ">= 0"),
        ("logit_scale", 0.0, "> 0"),
        ("label_smoothing", 1.0, r"in \[0, 1\)"),
        ("ce_ema_beta", 1.0, r"in \[0, 1\)"),
        ("chance_margin", 0.0, "> 0"),
        ("chance_margin", -0.39, "> 0"),
        ("chance_margin", math.nan, "> 0"),
        ("eval_every", -1, ">= 0"),
        ("threads", -1, ">= 0"),
        ("num_classes", 1, ">= 2 or unset"),
        ("synthetic_identities", 1, ">= 2"),
        ("synthetic_images_per_identity", 1, ">= 2"),
        ("image_size", (4, 32), "at least 8 pixels"),
        ("amp", "fp8", "one of auto, off, bf16, fp16"),
        ("device", "tpu", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("device", "cuda:x", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("data", "", "'synthetic' or a path"),
        ("model", "", "an open_clip model name"),
    ],
)
def test_invalid_value_names_key_value_and_rule(key: str, value, rule: str):
    with pytest.raises(ConfigError, match=rf"config key '{key}' is .*, but must be {rule}"):
        TrainConfig.from_dict({key: value})


def test_invalid_value_from_set_is_a_user_error():
    """The CLI turns `UserError` into one line and exit code 2; a config error must be one."""
    with pytest.raises(UserError, match="'head_lr' is -1.0, but must be > 0"):
        TrainConfig().with_overrides(["head_lr=-1"])


def test_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.head_lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"head_lr": 1e-3,', "cannot parse config file"),
        ("[1, 2]", "must hold a mapping of field: value, not list"),
    ],
)
def test_bad_json_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_file(path)


def test_bad_yaml_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("head_lr: [1e-3\n")
    with pytest.raises(ConfigError, match="cannot parse config file .*c.yaml"):
        TrainConfig.from_file(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file '.*nope.json' does not exist"):
        TrainConfig.from_file(tmp_path / "nope.json")


# --- documentation ------------------------------------------------------------------------


def test_every_field_has_a_comment():
    """DESIGN: every TrainConfig field carries a comment saying what it does and its unit."""
    source = Path(reid_core.config.__file__).read_text()
    lines = source.splitlines()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    fields = [n for n in cls.body if isinstance(n, ast.AnnAssign)]
    assert {n.target.id for n in fields} == set(FIELDS)
    undocumented = [n.target.id for n in fields if "#" not in lines[n.end_lineno - 1]]
    assert undocumented == []


def test_images_per_step():
    assert TrainConfig(batch_size=16, grad_accum_steps=4).images_per_step == 64


def test_reading_a_config_pulls_in_neither_torch_nor_ray():
    """A config (and a search space) can be checked where neither is installed: the package stays light."""
    code = "import sys, reid_core.config, search_spaces; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
