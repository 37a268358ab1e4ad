"""模型 (model): a torchvision backbone (random init) + BNNeck, as the seed's models/model.py is laid out.

``backbone``: 'vit_tiny' (torchvision VisionTransformer, 2 layers of width 64 on 8x8 patches: milliseconds
a step on a CPU, what the tests use) or 'resnet18' (torchvision ResNet-18, ~0.1 s a step on a CPU).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class BNNeck(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)  # BNNeck: no shift
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(features))


def make_backbone(name: str, image_size) -> tuple[nn.Module, int]:
    if name == "resnet18":
        backbone = torchvision.models.resnet18(weights=None)
        backbone.fc = nn.Identity()  # 512-d pooled features
        return backbone, 512
    if name == "vit_tiny":
        backbone = torchvision.models.VisionTransformer(
            image_size=max(image_size), patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128
        )
        backbone.heads = nn.Identity()  # 64-d class token
        return backbone, 64
    raise ValueError(f"unknown backbone {name}")


class Model(nn.Module):
    def __init__(self, num_classes: int, backbone: str = "vit_tiny", image_size=(32, 32)):
        super().__init__()
        self.backbone, dim = make_backbone(backbone, image_size)
        self.bn_neck = BNNeck(dim, num_classes)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bn_neck(self.backbone(images))

    def get_learnable_params(self, cfg) -> list[dict]:
        classifier_params, other_params = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("bn_neck.classifier"):
                classifier_params.append(param)
            else:
                other_params.append(param)
        return [
            {"params": other_params, "lr": cfg.lr_backbone, "name": "backbone"},
            {"params": classifier_params, "lr": cfg.lr_head, "name": "classification_head"},  # guide4.py
        ]
