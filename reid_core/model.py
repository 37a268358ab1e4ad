"""The re-identification model: an open_clip backbone plus a BNNeck identity head.

The identity head follows the ReID "bag of tricks" (Luo et al., 2019) as used
on CLIP features by IRRA-style models: the classifier sees the *raw* projected
image features (``encode_image(normalize=False)``), passed through a BatchNorm1d
whose bias is frozen (the BNNeck), then a bias-free Linear initialised with
std 0.001. A classifier on L2-normalised features without a scale has logits
bounded in [-|w|, |w|] and cannot leave chance, which is why the raw features
matter here.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile

import open_clip
import torch
from torch import nn

from reid_core.config import TrainConfig
from reid_core.errors import UserError
from reid_core.pretrained import check_model, resolve_pretrained


class ReIDModel(nn.Module):
    """open_clip CLIP + BNNeck + identity classifier."""

    def __init__(self, clip: nn.Module, num_classes: int):
        super().__init__()
        self.clip = clip
        # SDM uses a fixed scale (IRRA); CLIP's learned one is not trained here.
        clip.logit_scale.requires_grad_(False)
        embed_dim = _output_dim(clip)
        self.num_classes = num_classes
        self.bnneck = nn.BatchNorm1d(embed_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, so the feature space stays centred
        self.classifier = nn.Linear(embed_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) projected image features, the input of the identity head."""
        return self.clip.encode_image(images, normalize=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=False)

    def identity_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bnneck(image_features))

    def head_modules(self) -> list[nn.Module]:
        """The new modules that train at ``head_lr``."""
        return [self.bnneck, self.classifier]


def _output_dim(clip: nn.Module) -> int:
    """Width of the image embedding (the BNNeck's input)."""
    if isinstance(getattr(clip.visual, "output_dim", None), int):
        return clip.visual.output_dim
    with torch.no_grad():  # towers that do not say (e.g. timm): ask them
        size = clip.visual.image_size
        return clip.encode_image(torch.zeros(1, 3, *size)).shape[-1]


def build_model(cfg: TrainConfig, num_classes: int) -> ReIDModel:
    """Create the open_clip backbone named by ``cfg.model`` and wrap it with the identity head.

    Pretrained weights load at any ``image_size``: open_clip resizes the position embeddings
    (from a square grid, as every released CLIP has) to the new patch grid.
    """
    check_model(cfg)
    weights, quick_gelu = resolve_pretrained(cfg)
    kwargs = {}
    if cfg.context_length is not None:
        kwargs["force_context_length"] = cfg.context_length
    try:
        with quiet_random_init():
            clip = open_clip.create_model(
                cfg.model,
                pretrained=weights,
                force_image_size=tuple(cfg.image_size),
                force_quick_gelu=quick_gelu,  # what the tag was trained with (OpenAI's ViT-B-16: QuickGELU)
                weights_only=True,  # never unpickle arbitrary objects from a user's file
                require_pretrained=weights is not None,  # a file that fails to load is an error, not random init
                **kwargs,
            )
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        if weights is None:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load pretrained weights '{cfg.pretrained}' into model '{cfg.model}' at image size "
            f"{cfg.image_size[0]}x{cfg.image_size[1]}: {first}; pass weights saved from this model"
        ) from None
    return ReIDModel(clip, num_classes)


def state_bytes(cfg: TrainConfig, num_classes: int) -> dict[str, int]:
    """Bytes of the model's state, counted on PyTorch's meta device (no memory taken, no weights read): ``model``
    (parameters and buffers), ``trainable`` (the parameters the optimizer keeps moments of), ``classifier`` and
    ``head`` (BNNeck and classifier, their buffers included): what a checkpoint weighs before one is written."""
    kwargs = {"force_context_length": cfg.context_length} if cfg.context_length is not None else {}
    with torch.device("meta"), quiet_random_init():
        model = ReIDModel(open_clip.create_model(cfg.model, device="meta", force_image_size=tuple(cfg.image_size), **kwargs), num_classes)

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    head = [t for m in model.head_modules() for t in (*m.parameters(), *m.buffers())]
    return {
        "model": size([*model.parameters(), *model.buffers()]),
        "trainable": size(p for p in model.parameters() if p.requires_grad),
        "classifier": size([model.classifier.weight]),
        "head": size(head),
    }


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def quiet_random_init():
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger for every
    random-init model: for reid-tiny's default that is the expected case, not news, and the search
    builds the model several times. Other warnings still show."""
    root = logging.getLogger()
    notice = _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def context_length(cfg: TrainConfig) -> int:
    """Caption length in tokens: ``cfg.context_length`` or the model config's own."""
    if cfg.context_length is not None:
        return cfg.context_length
    model_cfg = open_clip.get_model_config(cfg.model) or {}
    return int(model_cfg.get("text_cfg", {}).get("context_length", 77))


def parameter_groups(model: ReIDModel, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: backbone at ``backbone_lr``, head at ``head_lr``; no decay on biases and norms.

    Every trainable parameter lands in exactly one group (pre-flight checks it):
    a head parameter left out of the optimizer is one way a trial sits at chance.
    """
    head_ids = {id(p) for m in model.head_modules() for p in m.parameters()}
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if id(param) in head_ids else "backbone"
        # open_clip's rule: 1-D tensors (biases, norm gains) and the embedding tables' scalars skip decay
        no_decay = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        key = f"{part}_no_decay" if no_decay else part
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": cfg.head_lr if part == "head" else cfg.backbone_lr,
                "base_lr": cfg.head_lr if part == "head" else cfg.backbone_lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
        groups[key]["params"].append(param)
    return list(groups.values())

