"""The search's record of its repairs (tuner.repairs.RepairBook): one repair per stuck trial and cause along a
chain, kept on disk, and after a resume a repair whose trial the experiment lost is proposed again."""

from __future__ import annotations

from reid_core.repair import Fix
from tuner.repairs import RepairBook, bounds_of

LOW = Fix("lr_too_low", {"head_lr": 2e-3}, "moved 0.07x")


def test_a_repair_stuck_again_for_the_same_cause_is_not_repaired_twice_but_for_another_cause_it_may_be(tmp_path):
    book = RepairBook(tmp_path)
    assert book.decide("a", LOW, {"head_lr": 1e-5})
    entry = book.pending()
    book.proposed(entry, "b")  # b is a's repair
    assert book.pending() is None and book.root_of("b") == "a"
    assert not book.decide("b", LOW, {"head_lr": 2e-3})  # the same cause along the chain
    assert book.decide("b", Fix("weight_decay_too_high", {"weight_decay": 4e-5}, "path 20x"), {"head_lr": 2e-3})
    assert not book.decide("a", LOW, {"head_lr": 1e-5})  # and never twice for one trial


def test_the_book_is_kept_on_disk_and_a_resume_repends_a_repair_whose_trial_was_lost(tmp_path):
    book = RepairBook(tmp_path)
    book.decide("a", LOW, {"head_lr": 1e-5})
    book.decide("c", LOW, {"head_lr": 3e-6})
    book.proposed(book.pending(), "b")
    book.proposed(book.pending(), "d")
    again = RepairBook(tmp_path)  # the driver restarted: a file of its own, the last session's entries
    assert [e["trial"] for e in again.entries] == ["b", "d"] and again.path != book.path
    again.resumed({"a", "b", "c"})  # the experiment Ray restored never saw d
    assert again.pending()["of"] == "c" and RepairBook(tmp_path).pending()["of"] == "c"
    again.resumed({"a", "b"})  # nor c: the searcher proposes c again, and it gets its own repair if stuck again
    assert [e["of"] for e in RepairBook(tmp_path).entries] == ["a"]


def test_the_searched_ranges_are_read_from_the_space_as_written():
    space = {"head_lr": "loguniform[1e-06, 0.1]", "grad_accum_steps": "choice[1, 2, 4, 8]", "ce_only_steps": "randint[0, 200]"}
    assert bounds_of(space) == {"head_lr": (1e-6, 0.1), "grad_accum_steps": (1, 8), "ce_only_steps": (0, 200)}
