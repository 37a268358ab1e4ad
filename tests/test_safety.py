"""Nothing from a user's path is unpickled; config and space files go through safe loaders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reid_core.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for pkg in ("reid_core", "tuner", "search_spaces") for p in (ROOT / pkg).rglob("*.py"))


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loader_in_the_package(path):
    for node, name in calls(path):
        assert name not in ("yaml.load", "yaml.unsafe_load", "pickle.load", "pickle.loads", "marshal.loads"), (path, name)
        if name == "torch.load":
            kwargs = {k.arg: k.value for k in node.keywords}
            assert "weights_only" in kwargs and ast.literal_eval(kwargs["weights_only"]) is True, path


def test_a_yaml_config_cannot_build_python_objects(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("head_lr: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        TrainConfig.from_file(evil)
