"""PBT's rounds, lineages and exported schedules as plain numbers: no Ray (tuner.lineage, tuner.pbt's clipping)."""

from __future__ import annotations

import pytest

from tuner.lineage import exploits_into, pbt_round, perturbation_due, rerun_overrides, schedule, schedule_text, segments

BURN_IN, INTERVAL = 300 * 32, 50 * 32  # the default: grace window 300 steps, a round every 50, batch 32


@pytest.mark.parametrize("images_per_step", [32, 64, 128, 256, 96])
def test_every_round_has_exactly_one_due_step_whatever_the_accumulation(images_per_step):
    max_steps = -(-450 * 32 // images_per_step)  # the same images for every accumulation
    due = [s for s in range(1, max_steps + 1) if perturbation_due(s, images_per_step, BURN_IN, INTERVAL, max_steps)]
    rounds = [pbt_round(s * images_per_step, BURN_IN, INTERVAL) for s in due]
    assert rounds == list(range(1, len(rounds) + 1))  # one look per round, none skipped
    assert due[0] * images_per_step >= BURN_IN and (due[0] - 1) * images_per_step < BURN_IN  # the first at the grace window
    assert max_steps not in due  # a trial at its budget is done, not paused


def test_at_accumulation_1_the_looks_are_at_the_grace_window_and_every_interval():
    due = [s for s in range(1, 451) if perturbation_due(s, 32, BURN_IN, INTERVAL, 450)]
    assert due == [300, 350, 400]


LINEAGE = {
    "initial": {"head_lr": 1e-3},
    "changes": [
        {"step": 300, "samples": 9600, "from": "a", "into": "b", "values": {"head_lr": 2e-3}},
        {"step": 350, "samples": 11200, "from": "b", "into": "c", "values": {"head_lr": 2e-3}},  # copied, value kept
        {"step": 400, "samples": 12800, "from": "c", "into": "d", "values": {"head_lr": 1e-3}},
    ],
}


def test_a_schedule_keeps_the_steps_where_the_value_changed():
    assert schedule(LINEAGE, "head_lr") == (1e-3, [[300, 2e-3], [400, 1e-3]])
    assert schedule_text(LINEAGE, "head_lr") == "0.001, 300: 0.002, 400: 0.001"
    assert rerun_overrides(LINEAGE, ["head_lr"]) == {"head_lr": 1e-3, "head_lr_schedule": [[300, 2e-3], [400, 1e-3]]}


def test_a_lineage_never_perturbed_reruns_without_a_schedule():
    assert rerun_overrides({"initial": {"head_lr": 3e-3}, "changes": []}, ["head_lr"]) == {"head_lr": 3e-3, "head_lr_schedule": None}


def test_segments_name_the_trial_that_trained_each_piece():
    assert [(s["trial"], s["after_step"]) for s in segments(LINEAGE, "d")] == [("a", 0), ("b", 300), ("c", 350), ("d", 400)]


def test_exploits_are_counted_per_trial():
    record = {"exploits": [{"trial": "b"}, {"trial": "d"}, {"trial": "b"}]}
    assert exploits_into(record, "b") == 2 and exploits_into(record, "a") == 0 and exploits_into(None, "b") == 0


def test_a_perturbed_value_is_clipped_to_its_domain():
    from tuner.pbt import _ClipToSpace

    clip = _ClipToSpace({"head_lr": (1e-6, 1e-1)})
    assert clip({"head_lr": 0.2, "grad_accum_steps": 8}) == {"head_lr": 0.1, "grad_accum_steps": 8}
    assert clip({"head_lr": 5e-7})["head_lr"] == 1e-6


def test_a_redraw_is_seeded_and_inside_the_domain():
    from search_spaces import load_space
    from tuner.pbt import mutations

    first, again = (mutations(load_space("head_lr"), seed=3)["head_lr"] for _ in range(2))
    draws = [first() for _ in range(20)]
    assert draws == [again() for _ in range(20)]  # --seed decides PBT's redraws
    assert all(1e-6 <= d <= 1e-1 for d in draws) and len(set(draws)) == 20
