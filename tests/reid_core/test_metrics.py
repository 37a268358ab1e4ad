"""Retrieval metrics (IRRA's R@K, mAP, mINP; Market-1501's camera filter) against ranks worked out by hand."""

from __future__ import annotations

import pytest
import torch

from reid_core.metrics import retrieval_metrics

# Twelve gallery images; identity 1 and 2 appear twice.
#            idx:  0  1  2  3  4  5  6  7  8  9  10 11
GALLERY_PIDS = [1, 2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 2]
G = len(GALLERY_PIDS)


def ranked(order: list[int], size: int = G) -> list[float]:
    """Similarity row over ``size`` gallery images that ranks gallery indices in ``order`` (first = most similar)."""
    row = [0.0] * size
    for position, idx in enumerate(order):
        row[idx] = 1.0 - position / size
    return row


# Query A, identity 1: idx 3 scores 0.9, all others tie at 0.0. Ties keep gallery
#   order, so the ranking is 3, 0, 1, 2, ...: matches at ranks 1 and 2.
#   hit@1 yes; AP = (1/1 + 2/2) / 2 = 1; INP = 2 matches / rank 2 of the last = 1.
QUERY_A = [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
# Query B, identity 2: every score ties, so the ranking is the gallery order 0..11:
#   matches at idx 1 (rank 2) and idx 11 (rank 12). (An unstable sort could put
#   idx 11 first and report a hit at 1.)
#   hit@1 no, hit@5 yes; AP = (1/2 + 2/12) / 2 = 1/3; INP = 2 / 12 = 1/6.
QUERY_B = [0.5] * G
# Query C, identity 10: its one match (idx 10) is ranked 7th.
#   hit@5 no, hit@10 yes; AP = 1/7; INP = 1/7.
QUERY_C = ranked([0, 1, 2, 3, 4, 5, 10, 6, 7, 8, 9, 11])
# Query D, identity 3: its one match (idx 2) is ranked 11th.
#   hit@10 no; AP = 1/11; INP = 1/11.
QUERY_D = ranked([0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 2, 11])

QUERY_PIDS = [1, 2, 10, 3]
EXPECTED = {
    "r1": 100 * 1 / 4,  # A
    "r5": 100 * 2 / 4,  # A, B
    "r10": 100 * 3 / 4,  # A, B, C
    "map": 100 * (1 + 1 / 3 + 1 / 7 + 1 / 11) / 4,
    "minp": 100 * (1 + 1 / 6 + 1 / 7 + 1 / 11) / 4,
}


def test_retrieval_metrics_by_hand():
    similarity = torch.tensor([QUERY_A, QUERY_B, QUERY_C, QUERY_D])
    got = retrieval_metrics(similarity, torch.tensor(QUERY_PIDS), torch.tensor(GALLERY_PIDS))
    assert got.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize(
    "row, pid, expected",
    [
        (QUERY_A, 1, {"r1": 100, "r5": 100, "r10": 100, "map": 100, "minp": 100}),
        (QUERY_B, 2, {"r1": 0, "r5": 100, "r10": 100, "map": 100 / 3, "minp": 100 / 6}),
        (QUERY_C, 10, {"r1": 0, "r5": 0, "r10": 100, "map": 100 / 7, "minp": 100 / 7}),
        (QUERY_D, 3, {"r1": 0, "r5": 0, "r10": 0, "map": 100 / 11, "minp": 100 / 11}),
    ],
)
def test_single_query(row: list[float], pid: int, expected: dict[str, float]):
    got = retrieval_metrics(torch.tensor([row]), torch.tensor([pid]), torch.tensor(GALLERY_PIDS))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_query_without_match_in_gallery_is_left_out():
    """A caption whose identity is not in the gallery has no rank; it must not count as a miss."""
    with_orphan = torch.tensor([QUERY_A, QUERY_B, QUERY_C, QUERY_D, [0.3] * G])
    got = retrieval_metrics(with_orphan, torch.tensor(QUERY_PIDS + [99]), torch.tensor(GALLERY_PIDS))
    assert got == pytest.approx(EXPECTED, rel=1e-5)


def test_no_query_with_a_match_is_an_error():
    with pytest.raises(ValueError, match="no query has a match in the gallery"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([8, 9]), torch.tensor([1, 2, 3]))


def test_gallery_smaller_than_ten():
    """R@10 on a 3-image gallery is R@3: a match anywhere counts."""
    similarity = torch.tensor([[0.1, 0.2, 0.9]])  # ranking 2, 1, 0; the match (idx 0) is last
    got = retrieval_metrics(similarity, torch.tensor([5]), torch.tensor([5, 6, 7]))
    assert got == pytest.approx({"r1": 0, "r5": 100, "r10": 100, "map": 100 / 3, "minp": 100 / 3})


# --- image ReID: same-identity same-camera gallery entries are left out (Market-1501's protocol) ------

# Eight gallery images as (identity, camera).
#                  idx:  0       1       2       3       4       5       6       7
MARKET_GALLERY = [(1, 1), (2, 1), (1, 2), (3, 2), (1, 1), (2, 2), (5, 3), (3, 1)]
MG = len(MARKET_GALLERY)


def market_ranked(order: list[int]) -> list[float]:
    return ranked(order, MG)


# Query P, identity 1 camera 1, ranking 0..7: idx 0 and 4 (identity 1, camera 1) are removed, leaving
#   1, 2, 3, 5, 6, 7: its one remaining match (idx 2) is at rank 2. AP = 1/2; INP = 1/2.
#   (Without cameras: matches at ranks 1, 3, 5, a hit at 1.)
# Query Q, identity 2 camera 2, ranking 7..0: idx 5 is removed, leaving 7, 6, 4, 3, 2, 1, 0:
#   the match (idx 1) is at rank 6. AP = 1/6; INP = 1/6.
# Query R, identity 3 camera 2, every score tied (gallery order): idx 3 is removed; the match idx 7
#   is at rank 7 of the 7 left. AP = 1/7; INP = 1/7.
# Query S, identity 1 camera 3 (no gallery image from camera 3 of identity 1), ranking 4, 3, 2, 1, 0, 5, 6, 7:
#   matches at ranks 1, 3, 5. AP = (1/1 + 2/3 + 3/5) / 3; INP = 3/5.
# Query U, identity 5 camera 3: its only gallery image is from its own camera; nothing left to find,
#   so it is not counted (as a query without a match).
MARKET_QUERIES = [
    ((1, 1), market_ranked([0, 1, 2, 3, 4, 5, 6, 7])),
    ((2, 2), market_ranked([7, 6, 5, 4, 3, 2, 1, 0])),
    ((3, 2), [0.5] * MG),
    ((1, 3), market_ranked([4, 3, 2, 1, 0, 5, 6, 7])),
    ((5, 3), market_ranked([6, 0, 1, 2, 3, 4, 5, 7])),
]
MARKET_EXPECTED = {
    "r1": 100 * 1 / 4,  # S
    "r5": 100 * 2 / 4,  # P, S
    "r10": 100.0,
    "map": 100 * (1 / 2 + 1 / 6 + 1 / 7 + (1 + 2 / 3 + 3 / 5) / 3) / 4,
    "minp": 100 * (1 / 2 + 1 / 6 + 1 / 7 + 3 / 5) / 4,
}


def market_tensors():
    similarity = torch.tensor([row for _, row in MARKET_QUERIES])
    query_pids = torch.tensor([pid for (pid, _), _ in MARKET_QUERIES])
    query_cams = torch.tensor([cam for (_, cam), _ in MARKET_QUERIES])
    gallery_pids = torch.tensor([pid for pid, _ in MARKET_GALLERY])
    gallery_cams = torch.tensor([cam for _, cam in MARKET_GALLERY])
    return similarity, query_pids, gallery_pids, query_cams, gallery_cams


def test_market_camera_filter_by_hand():
    got = retrieval_metrics(*market_tensors())
    assert got == pytest.approx(MARKET_EXPECTED, rel=1e-5)


def test_without_cameras_nothing_is_removed():
    similarity, query_pids, gallery_pids, _, _ = market_tensors()
    got = retrieval_metrics(similarity[:1], query_pids[:1], gallery_pids)  # query P, all three matches count
    assert got == pytest.approx({"r1": 100, "r5": 100, "r10": 100, "map": 100 * (1 + 2 / 3 + 3 / 5) / 3, "minp": 100 * 3 / 5})


def test_queries_are_ranked_in_chunks_with_the_same_result(monkeypatch):
    monkeypatch.setattr("reid_core.metrics.QUERY_CHUNK", 2)  # chunks of 2, 2, 1 queries
    assert retrieval_metrics(*market_tensors()) == pytest.approx(MARKET_EXPECTED, rel=1e-5)


def test_cameras_for_one_side_only_is_an_error():
    similarity, query_pids, gallery_pids, query_cams, _ = market_tensors()
    with pytest.raises(ValueError, match="cameras for both"):
        retrieval_metrics(similarity, query_pids, gallery_pids, query_cams, None)
