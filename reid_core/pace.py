"""Is the data loader the bottleneck? The default worker count and the warning that says so, from one step metric.

``data_wait_share`` (`reid_core.schema`): the share of a step's wall time spent in ``next(stream)`` waiting for its
batches (`reid_core.trainer.Trainer.backward`). With DataLoader workers it is ~0 while they keep up; when they
cannot, the step waits. `LoaderWatch` judges a run's steps once and gives the warning the plain run prints and the
search prints for the first trial it fires on. Pure: no torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

# DataLoader workers on CUDA when the config does not say. One worker decodes and flips a 384x128 JPEG in 0.66 ms
# of CPU (~1,500 images per CPU-second, BENCHMARKS.md "real scale"); a ViT-B/16 step consumes ~390 images/s on an
# RTX 3090 (timm's training benchmark, AMP) and a few times that on an H100-class GPU: two workers keep up, four
# leave room for a slower CPU or disk. More only crowd the CPUs when trials share a machine (each starts its own).
CUDA_WORKERS = 4
LOADER_WAIT_SHARE = 0.1  # steps waiting this share of their time for images: the loader, not the model, sets the pace
LOADER_WATCH = (20, 40)  # judged once, on the mean over these steps: after the workers' prefetched batches are used up


class LoaderWatch:
    """Says once, from a run's ``data_wait_share`` (the step metric), that the loader is the bottleneck: the mean over
    steps `LOADER_WATCH` above `LOADER_WAIT_SHARE`. Call it with every step's metrics; it returns the warning once."""

    def __init__(self) -> None:
        self._shares: list[float] = []
        self.judged = False

    def __call__(self, metrics: Mapping[str, Any]) -> Optional[str]:
        first, last = LOADER_WATCH
        share, step = metrics.get("data_wait_share"), metrics.get("step", 0)
        if self.judged or share is None or step <= first:
            return None
        self._shares.append(float(share))
        if step < last:
            return None
        self.judged = True
        mean = sum(self._shares) / len(self._shares)
        if mean <= LOADER_WAIT_SHARE:
            return None
        return (
            f"the data loader is the bottleneck: steps {first + 1}-{step} waited for images {mean:.0%} of their time; "
            f"raise loader_workers (--set loader_workers=N; default {CUDA_WORKERS} on CUDA, 0 on CPU) and the CPUs each "
            "trial holds (--cpus-per-trial), or store the images at the size trained (image_size)"
        )
