"""Identity cross-entropy and IRRA's SDM loss against direct, loop-based implementations."""

from __future__ import annotations

import math

import pytest
import torch

from reid_core.losses import id_loss, sdm_loss


def sdm_by_loops(image: list[list[float]], text: list[list[float]], pids: list[int], scale: float, eps: float = 1e-8) -> float:
    """IRRA's SDM written out element by element (Jiang & Ye, CVPR 2023, eq. 1-4).

    For each image i: p_ij = softmax_j(scale * cos(image_i, text_j)),
    q_ij = [pid_i == pid_j] / #{k : pid_k == pid_i}, and
    L_i2t = 1/N sum_i sum_j p_ij (log p_ij - log(q_ij + eps)); the same with
    texts as rows for L_t2i; SDM = L_i2t + L_t2i.
    """

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    image, text = [unit(v) for v in image], [unit(v) for v in text]
    n = len(pids)

    def direction(rows, cols):
        total = 0.0
        for i in range(n):
            logits = [scale * sum(a * b for a, b in zip(rows[i], cols[j])) for j in range(n)]
            top = max(logits)
            z = sum(math.exp(x - top) for x in logits)
            same = sum(1 for j in range(n) if pids[j] == pids[i])
            for j in range(n):
                p = math.exp(logits[j] - top) / z
                q = (1.0 if pids[j] == pids[i] else 0.0) / same
                total += p * (math.log(p) - math.log(q + eps))
        return total / n

    return direction(image, text) + direction(text, image)


# Six samples of three identities, ids repeated and not contiguous (7, 7, 3, 9, 3, 7).
PIDS = [7, 7, 3, 9, 3, 7]
IMAGE = [
    [1.0, 0.2, 0.0, -0.3],
    [0.9, 0.1, 0.2, -0.1],
    [-0.2, 1.0, 0.3, 0.0],
    [0.0, -0.1, 0.2, 1.5],
    [-0.1, 0.8, 0.5, 0.1],
    [2.0, 0.5, -0.4, 0.0],  # a longer vector: SDM must normalise it
]
TEXT = [
    [0.8, 0.3, 0.1, 0.0],
    [1.1, -0.2, 0.0, 0.2],
    [0.1, 0.9, -0.2, 0.3],
    [0.2, 0.0, 0.1, 0.7],
    [0.3, 1.2, 0.2, -0.4],
    [0.5, 0.5, 0.5, 0.5],
]


@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
def test_sdm_equals_irra_formula(scale: float):
    expected = sdm_by_loops(IMAGE, TEXT, PIDS, scale)
    got = sdm_loss(torch.tensor(IMAGE), torch.tensor(TEXT), torch.tensor(PIDS), logit_scale=scale)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_sdm_default_scale_is_irra_50():
    """IRRA fixes the temperature at 0.02 (scale 50)."""
    image, text, pids = torch.tensor(IMAGE), torch.tensor(TEXT), torch.tensor(PIDS)
    assert float(sdm_loss(image, text, pids)) == pytest.approx(float(sdm_loss(image, text, pids, logit_scale=50.0)))


def test_sdm_ignores_feature_length():
    """Raw features may be passed: only directions matter."""
    image, text, pids = torch.tensor(IMAGE), torch.tensor(TEXT), torch.tensor(PIDS)
    lengths = torch.tensor([[0.5], [3.0], [1.0], [7.0], [0.1], [2.0]])
    assert float(sdm_loss(image * lengths, text / lengths, pids)) == pytest.approx(float(sdm_loss(image, text, pids)), rel=1e-5)


def test_sdm_is_small_when_each_text_matches_its_identity_only():
    """Perfectly separated identities at a high scale: p is (almost) q, the loss (almost) 0."""
    pids = torch.tensor([0, 0, 1, 1, 2])
    directions = torch.eye(3)[pids]
    matched = float(sdm_loss(directions, directions, pids))
    shuffled = float(sdm_loss(directions, directions[torch.tensor([2, 3, 4, 0, 1])], pids))
    assert abs(matched) < 1e-3  # not exactly >= 0: log(q + 1e-8) makes the target sum to 1 + 1e-8
    assert shuffled > 10


def test_sdm_gradient_reaches_both_towers():
    image = torch.tensor(IMAGE, requires_grad=True)
    text = torch.tensor(TEXT, requires_grad=True)
    sdm_loss(image, text, torch.tensor(PIDS)).backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0


def test_id_loss_is_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 1])

    def ce(row, label):
        return -row[label] + math.log(sum(math.exp(x) for x in row))

    expected = (ce([2.0, 0.5, -1.0], 0) + ce([0.1, 0.2, 3.0], 1)) / 2
    assert float(id_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_id_loss_label_smoothing():
    """Smoothing eps puts (1 - eps) on the label and eps / C on every class."""
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    log_p = torch.log_softmax(logits, dim=1)[0].tolist()
    eps, classes = 0.1, 3
    expected = -((1 - eps) * log_p[0] + eps / classes * sum(log_p))
    assert float(id_loss(logits, torch.tensor([0]), label_smoothing=eps)) == pytest.approx(expected, rel=1e-6)


def test_id_loss_of_uniform_logits_is_chance():
    """A head that knows nothing sits at log(C): the number the stuck-at-chance rule compares against."""
    logits = torch.zeros(8, 400)
    assert float(id_loss(logits, torch.arange(8))) == pytest.approx(math.log(400))


def test_id_loss_in_fp32_from_half_logits():
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.bfloat16)
    assert id_loss(logits, torch.tensor([0])).dtype == torch.float32
