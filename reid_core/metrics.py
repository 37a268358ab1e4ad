"""Retrieval metrics with IRRA's definitions (R@K, mAP, mINP), as plain tensor functions."""

from __future__ import annotations

import torch


def retrieval_metrics(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> dict[str, float]:
    """R@1/5/10, mAP and mINP in percent for a (queries x gallery) similarity matrix.

    Ties keep gallery order (stable sort), so results do not depend on the backend.
    A query's AP averages precision at each of its matches; its INP is
    (number of matches) / (rank of the last match), as in IRRA's ``rank``.
    """
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    matches = gallery_pids[order] == query_pids.view(-1, 1)  # (Q, G) bool, in ranked order
    has_match = matches.any(dim=1)
    matches = matches[has_match].float()  # queries without a match in the gallery carry no signal
    if len(matches) == 0:
        raise ValueError("no query has a match in the gallery")
    hits = matches.cumsum(dim=1)
    ranks = torch.arange(1, matches.shape[1] + 1, dtype=torch.float32)
    out = {f"r{k}": float((hits[:, min(k, matches.shape[1]) - 1] > 0).float().mean() * 100) for k in (1, 5, 10)}
    num_rel = matches.sum(dim=1)
    out["map"] = float(((hits / ranks) * matches).sum(dim=1).div(num_rel).mean() * 100)
    last_match = matches.shape[1] - 1 - matches.flip(1).argmax(dim=1)  # 0-based rank of the last match
    out["minp"] = float((num_rel / (last_match + 1).float()).mean() * 100)
    return out
