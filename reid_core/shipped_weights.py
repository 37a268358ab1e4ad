"""Weights shipped inside the package, and which weights a model starts from by default.

``TrainConfig.pretrained`` defaults to ``'auto'``: the model's shipped weights where the
package has some (``reid-tiny``: the ``synthetic`` tag, pretrained by ``python -m
reid_core.pretrain``), random init for every other model (open_clip's own default). A
shipped tag resolves to an ordinary open_clip state-dict file, loaded through the same
``open_clip.create_model(pretrained=FILE)`` path as a user's weights file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from reid_core.errors import UserError

AUTO = "auto"  # TrainConfig.pretrained's default: the model's shipped weights, else random init

_WEIGHTS = Path(__file__).parent / "weights"
# model -> tag -> file in the package; a plain dict, so an unknown tag lists the known ones.
SHIPPED: dict[str, dict[str, Path]] = {
    "reid-tiny": {"synthetic": _WEIGHTS / "reid-tiny-synthetic.safetensors"},
}
# The tag 'auto' stands for, per model; a model missing here starts from random init.
DEFAULT_TAG: dict[str, str] = {"reid-tiny": "synthetic"}


def effective_pretrained(model: str, pretrained: Optional[str]) -> Optional[str]:
    """What ``pretrained`` means for ``model``: 'auto' becomes the model's default tag (or None)."""
    if pretrained == AUTO:
        return DEFAULT_TAG.get(model)
    return pretrained


def shipped_file(model: str, tag: str) -> Optional[str]:
    """The package's weights file for ``model``'s ``tag``, or None if the package ships none."""
    path = SHIPPED.get(model, {}).get(tag)
    return str(path) if path is not None else None


def shipped_tags(model: str) -> list[str]:
    return list(SHIPPED.get(model, {}))


def trained_image_size(path: str) -> Optional[tuple[int, int]]:
    """(height, width) a shipped file was pretrained at, from the recipe in its metadata."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        recipe = json.loads((f.metadata() or {}).get("reid_tune_recipe", "{}"))
    size = recipe.get("image_size")
    return (int(size[0]), int(size[1])) if size else None


def check_fits(model: str, tag: str, path: str, image_size: tuple[int, int]) -> None:
    """Shipped weights load only at the image size they were pretrained at: their position grid is not
    square (64x32: 8x4 patches) and open_clip resizes only square grids."""
    trained = trained_image_size(path)
    if trained is not None and tuple(image_size) != trained:
        h, w = image_size
        raise UserError(
            f"the shipped '{tag}' weights of {model} are for {trained[0]}x{trained[1]} images, not {h}x{w} "
            f"(open_clip resizes only square position grids); use image_size={trained[0]},{trained[1]}, "
            f"or pretrained=none for random init at {h}x{w}"
        )
