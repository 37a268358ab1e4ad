"""Retrieval metrics with IRRA's definitions (R@K, mAP, mINP), as plain tensor functions.

The same function scores text-to-image retrieval (captions query images) and
image ReID (query images against a gallery, Market-1501's protocol): given
cameras, a gallery image of the query's identity taken by the query's camera is
left out of that query's ranking, as in the Market-1501 evaluation code and
torchreid's ``eval_market1501``.
"""

from __future__ import annotations

from typing import Optional

import torch

QUERY_CHUNK = 1024  # queries ranked at once: bounds memory to QUERY_CHUNK x gallery size


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    query_camids: Optional[torch.Tensor] = None,
    gallery_camids: Optional[torch.Tensor] = None,
) -> dict[str, float]:
    """R@1/5/10, mAP and mINP in percent for a (queries x gallery) similarity matrix.

    Ties keep gallery order (stable sort), so results do not depend on the backend.
    A query's AP averages precision at each of its matches; its INP is
    (number of matches) / (rank of the last match), as in IRRA's ``rank``.
    With cameras, same-identity same-camera gallery entries are removed from the
    query's ranking (neither matches nor misses; the ranks behind them move up).
    Queries left with no match in the gallery carry no signal and are not counted.
    """
    if (query_camids is None) != (gallery_camids is None):
        raise ValueError("pass cameras for both queries and gallery, or for neither")
    totals = torch.zeros(5, dtype=torch.float64)  # r1, r5, r10, AP, INP summed over counted queries
    counted = 0
    for start in range(0, len(query_pids), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        order = torch.sort(similarity[rows], dim=1, descending=True, stable=True).indices
        matches = gallery_pids[order] == query_pids[rows].view(-1, 1)  # (Q, G) bool, in ranked order
        kept = torch.ones_like(matches)
        if query_camids is not None:
            kept = ~(matches & (gallery_camids[order] == query_camids[rows].view(-1, 1)))
            matches = matches & kept
        has_match = matches.any(dim=1)  # queries without a match in the gallery carry no signal
        matches, kept = matches[has_match].double(), kept[has_match].double()
        rank = kept.cumsum(dim=1).clamp(min=1)  # 1-based rank among the kept entries (removed ones: unused)
        hits = matches.cumsum(dim=1)
        num_rel = matches.sum(dim=1)
        first_rank = torch.where(matches > 0, rank, torch.inf).min(dim=1).values
        for i, k in enumerate((1, 5, 10)):
            totals[i] += (first_rank <= k).double().sum()
        totals[3] += ((hits / rank) * matches).sum(dim=1).div(num_rel).sum()
        totals[4] += (num_rel / (rank * matches).max(dim=1).values).sum()  # rank of the last match
        counted += len(matches)
    if counted == 0:
        raise ValueError("no query has a match in the gallery")
    r1, r5, r10, ap, inp = (totals / counted * 100).tolist()
    return {"r1": r1, "r5": r5, "r10": r10, "map": ap, "minp": inp}
