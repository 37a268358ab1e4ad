"""Search space files: what ships loads, and every malformed file is refused before Ray starts."""

import pytest

from reid_core.config import FIELDS
from search_spaces import SpaceError, load_space, shipped_spaces, to_tune


@pytest.mark.parametrize("name", shipped_spaces())
def test_every_shipped_space_names_only_trainconfig_fields_and_converts_to_tune(name):
    space = load_space(name)
    assert space and set(space) <= set(FIELDS)
    assert set(to_tune(space)) == set(space)


def test_default_space_is_the_documented_one():
    space = load_space("default")
    assert space["head_lr"].kind == "loguniform" and space["head_lr"].args == (1e-6, 1e-1)
    assert space["grad_accum_steps"].args == (1, 2, 4, 8)
    assert space["ce_only_steps"].kind == "randint"


def test_a_space_naming_a_renamed_field_searches_the_field_under_its_new_name(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("warmup_steps: {randint: [0, 200]}\nlr_backbone: {loguniform: [1e-6, 1e-4]}\n")
    space = load_space(str(path))
    assert set(space) == {"ce_only_steps", "backbone_lr"} and space["ce_only_steps"].args == (0, 200)


def test_a_users_file_is_loaded_and_yaml_1_1_exponents_are_numbers(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("head_lr: {loguniform: [1e-5, 1e-2]}\nlabel_smoothing: {choice: [0.0, 0.1]}\n")
    space = load_space(str(path))
    assert space["head_lr"].args == (1e-5, 1e-2)
    assert to_tune(space)["head_lr"].lower == 1e-5


@pytest.mark.parametrize(
    "text, message",
    [
        ("head_lrr: {loguniform: [1.0e-6, 1.0e-1]}", "unknown config key 'head_lrr'; did you mean 'head_lr'"),
        ("head_lr: {logunifrom: [1.0e-6, 1.0e-1]}", "unknown domain 'logunifrom'"),
        ("head_lr: {loguniform: [1.0e-1, 1.0e-6]}", "needs low < high"),
        ("head_lr: {loguniform: [0, 1.0e-1]}", "needs low > 0"),
        ("head_lr: {loguniform: [1.0e-6]}", "needs 2 numbers"),
        ("head_lr: {loguniform: [a, b]}", "needs 2 numbers"),
        ("head_lr: {uniform: [-1, 1]}", "bound -1 is invalid"),
        ("head_lr: 0.01", "must be one domain"),
        ("grad_accum_steps: {uniform: [1, 8]}", "integer field"),
        ("grad_accum_steps: {choice: [1, two]}", "choice 'two' is invalid"),
        ("grad_accum_steps: {choice: []}", "choice takes"),
        ("ce_only_steps: {randint: [0.5, 10]}", "needs integers"),
        ("ce_only_steps: {quniform: [0, 10, 0]}", "needs q > 0"),
        ("[1, 2]", "must map TrainConfig fields"),
        ("head_lr: {loguniform: [1.0e-6, 1.0e-1]", "cannot parse search space"),
    ],
)
def test_malformed_space_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message.replace("[", r"\[")) as err:
        load_space(str(path))
    assert "\n" not in str(err.value)


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(SpaceError, match="unknown search space 'defualt'; shipped: default"):
        load_space("defualt")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(str(tmp_path / "nope.yaml"))
