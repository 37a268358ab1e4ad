"""Identity cross-entropy and IRRA's similarity distribution matching (SDM) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def id_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Identity cross-entropy, computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def sdm_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float = 50.0,
    epsilon: float = 1e-8,
) -> torch.Tensor:
    """SDM (Jiang & Ye, IRRA, CVPR 2023), image-to-text plus text-to-image.

    ``p = softmax(logit_scale * cos)`` over the batch, the target ``q`` is the
    row-normalised same-identity mask, and the loss is
    ``mean_i sum_j p_ij (log p_ij - log(q_ij + eps))`` in both directions.
    Features may be raw: they are L2-normalised here.
    """
    image_norm = F.normalize(image_features.float(), dim=-1)
    text_norm = F.normalize(text_features.float(), dim=-1)
    same_identity = (labels.view(-1, 1) == labels.view(1, -1)).float()
    target = same_identity / same_identity.sum(dim=1, keepdim=True)

    i2t = logit_scale * image_norm @ text_norm.t()
    t2i = i2t.t()
    loss = 0.0
    for logits in (i2t, t2i):
        log_p = F.log_softmax(logits, dim=1)
        loss = loss + (log_p.exp() * (log_p - torch.log(target + epsilon))).sum(dim=1).mean()
    return loss
