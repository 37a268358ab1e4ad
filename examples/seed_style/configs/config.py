"""配置 (config): the seed team's shape, one object with every knob; a plain dict in and out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class Config:
    # data: the built-in synthetic people (reid_core.synthetic), small so a CPU trains in seconds
    num_classes: int = 20  # identities
    images_per_id: int = 8
    image_size: tuple = (32, 32)  # (H, W); square for vit_tiny
    # model
    backbone: str = "vit_tiny"  # 'vit_tiny' (fast on a CPU) or 'resnet18' (random init)
    # optimisation (guide4.py: classifier head at a high LR, backbone conservative)
    batch_size: int = 16
    gradient_accumulation_steps: int = 1  # guide4.py: 临时化简为1
    lr_head: float = 1e-2  # bn_neck.classifier
    lr_backbone: float = 1e-5  # backbone + BNNeck BatchNorm (guide4.py: conservative)
    weight_decay: float = 5e-4
    max_steps: int = 100000  # the search ends a trial at its budget; set it for a plain run
    seed: int = 42
    log_every: int = 100  # [guide4-dbg] print interval

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise KeyError(f"unknown config keys: {sorted(unknown)}")
        return cls(**values)
