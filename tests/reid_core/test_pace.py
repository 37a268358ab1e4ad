"""The loader-bottleneck warning: judged once, from the steps' data_wait_share (issue 27)."""

from __future__ import annotations

from reid_core.pace import LOADER_WATCH, LoaderWatch


def said(shares: list[float]) -> list[tuple[int, str]]:
    watch = LoaderWatch()
    out = []
    for step, share in enumerate(shares, start=1):
        line = watch({"step": step, "data_wait_share": share})
        if line:
            out.append((step, line))
    return out


def test_a_run_waiting_for_its_images_is_told_once_after_the_prefetched_batches():
    first, last = LOADER_WATCH
    # the workers' prefetch queue hides the loader for the first steps: waiting 0 there, 40% after
    lines = said([0.0] * first + [0.4] * 100)
    assert len(lines) == 1 and lines[0][0] == last
    assert lines[0][1].startswith(f"the data loader is the bottleneck: steps {first + 1}-{last} waited for images 40% of their time")
    assert "--set loader_workers=N" in lines[0][1] and "--cpus-per-trial" in lines[0][1]


def test_a_run_the_loader_keeps_up_with_is_not_told():
    assert said([0.9] * LOADER_WATCH[0] + [0.02] * 100) == []  # start-up waits do not count
    assert said([0.5] * (LOADER_WATCH[1] - 1)) == []  # too short to judge
    assert said([{"no": "share"}.get("x", 0.0)] * 50) == []


def test_a_function_that_does_not_report_the_share_is_never_told():
    watch = LoaderWatch()
    assert all(watch({"step": s, "ce": 5.0}) is None for s in range(1, 100))
