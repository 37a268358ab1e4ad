"""The disk a search's checkpoints take: estimated before the first trial, checked against free space, reported after.

A trial checkpoints only when it may be retried (``--max-failures``, every ``--checkpoint-every`` steps) or under
``--scheduler pbt`` (where PBT looks). A ViT-B/16 trial checkpoint is ~1.9 GB (weights plus AdamW's two moments),
and Ray keeps the newest `KEPT_ASHA` (`KEPT_PBT` under PBT) of each running trial; once a trial
has ended its checkpoints are deleted (`tuner.checkpoints.CheckpointJanitor`) except the winner's last, so what
the search needs at its peak is::

    concurrent trials x kept x size  +  1 x size (the best ended trial's last)  [+ every ended trial's, --keep-checkpoints]

on the storage path's filesystem, and one checkpoint per concurrent trial in the trials' temporary folder (where
a trial writes it before Ray copies it to storage), counted with the rest when both are one filesystem. An
errored trial keeps its newest checkpoint (``--resume`` retries it from there): not counted, errors are not
planned. Storage on an object store (``s3://``...) is not checked: its free space is not a number a client can
read. Pure: no Ray, no torch.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from reid_core.errors import UserError
from tuner.settings import PBT, SearchSettings
from tuner.storage import Location, StoragePath

# Ray's num_to_keep, checkpoints kept of a running trial. Outside PBT 2: a retry restores the newest the driver
# registered, which a trial's next checkpoint could delete before the retry starts (seen once: "does not exist on
# storage anymore" after a lost node). Under PBT 4: Ray registers a checkpoint up to twice per perturbation point; a
# copied one must outlive one more point of its trial (the copying trial, paused with less progress, restarts first).
KEPT_ASHA = 2
KEPT_PBT = 4
MARGIN = 1.05  # room for Ray's own files and the results, over the checkpoints


def gb(n: float) -> str:
    """Bytes for a person: GB from 0.1 GB up, MB below."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class DiskPlan:
    """What a search's checkpoints will take at their peak (`plan`)."""

    checkpoint_bytes: int  # one trial checkpoint
    concurrent: int  # trials running at once
    kept: int  # checkpoints Ray keeps of a running trial
    kept_after: int  # checkpoints kept of ended trials: the winner's last, or all with --keep-checkpoints
    concurrency_note: str = ""  # how `concurrent` was decided, when not by --max-concurrent
    keep_all: bool = False  # --keep-checkpoints

    @property
    def storage_bytes(self) -> int:
        return (self.concurrent * self.kept + self.kept_after) * self.checkpoint_bytes

    @property
    def staging_bytes(self) -> int:
        return self.concurrent * self.checkpoint_bytes

    def formula(self) -> str:
        return (
            f"{self.concurrent} concurrent trial(s){self.concurrency_note} x {self.kept} kept x {gb(self.checkpoint_bytes)} "
            f"+ {self.kept_after} kept after"
        )


def concurrency(num_trials: int, max_concurrent: Optional[int], cpus_per_trial: float, gpus_per_trial: float,
                cpus: int, gpus: int, cluster: bool) -> tuple[int, str]:  # fmt: skip
    """Trials at once as Ray will run them: ``--max-concurrent``, else what this machine's CPUs and GPUs hold; on a
    cluster without ``--max-concurrent``, every trial (its size is not known before Ray starts)."""
    if max_concurrent:
        return min(num_trials, max_concurrent), ""
    if cluster:
        return num_trials, " (a cluster: every trial counted; --max-concurrent to say fewer)"
    fits = math.floor(cpus / cpus_per_trial)
    if gpus_per_trial > 0:
        fits = min(fits, math.floor(gpus / gpus_per_trial))
    return max(1, min(num_trials, fits)), " (what this machine's CPUs and GPUs hold)"


def plan(checkpoint_bytes: Optional[int], *, checkpointing: bool, pbt: bool, steps: int, checkpoint_every: int,
         concurrent: int, num_trials: int, keep_checkpoints: bool, concurrency_note: str = "") -> Optional[DiskPlan]:  # fmt: skip
    """The plan, or None when no trial checkpoints (or the function offers no checkpoint to size)."""
    if not checkpointing or not checkpoint_bytes:
        return None
    kept = KEPT_PBT if pbt else KEPT_ASHA
    if checkpoint_every and not pbt:
        kept = max(1, min(kept, steps // checkpoint_every))  # a short trial checkpoints fewer times
    # at the peak, near the end: every trial but the running ones has ended and keeps its own, or only the best's last
    kept_after = max(0, num_trials - concurrent) * kept if keep_checkpoints else 1
    return DiskPlan(checkpoint_bytes, concurrent, kept, kept_after, concurrency_note, keep_checkpoints)


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem of ``folder`` (its nearest existing parent): what this user may write there."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def _device(folder: Path) -> int:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.stat(existing).st_dev


def fixes(disk: DiskPlan) -> str:
    """The flags that change what the checkpoints take."""
    keep = "without --keep-checkpoints, " if disk.keep_all else ""
    return (
        f"--max-failures 0 (no retries, no checkpoints outside PBT), a larger --checkpoint-every, fewer trials at once "
        f"(--max-concurrent), {keep}or a --storage-path with more room"
    )


def check(disk: Optional[DiskPlan], storage: Location, staging: Optional[Path] = None, log: Callable[[str], None] = print) -> None:
    """Say what the checkpoints will take against the free space there; one-line `UserError` when it cannot fit."""
    if disk is None:
        return
    staging = Path(tempfile.gettempdir()) if staging is None else staging
    if isinstance(storage, StoragePath):
        log(f"checkpoints: {gb(disk.storage_bytes)} on {storage} ({disk.formula()}); an object store's free space is not checked")
        return
    need = {storage: disk.storage_bytes}
    if _device(staging) == _device(storage):
        need[storage] += disk.staging_bytes  # written there first, then copied: both at once
    else:
        need[staging] = disk.staging_bytes
    for folder, bytes_ in need.items():
        free = free_bytes(folder)
        what = "the trials' temporary folder (each writes a checkpoint there before Ray copies it)" if folder == staging else "--storage-path"
        if bytes_ * MARGIN > free:
            raise UserError(
                f"checkpoints need {gb(bytes_)} on {what} '{folder}' ({disk.formula()}"
                f"{', + 1 being written per running trial' if folder == storage else ''}) but it has {gb(free)} free; "
                f"change it with {fixes(disk)}"
            )
    log(f"checkpoints: up to {gb(need[storage])} on '{storage}' ({disk.formula()}), {gb(free_bytes(storage))} free")


def folder_bytes(folder: Location) -> int:
    """Bytes of every file under ``folder`` (a local folder or a storage URI)."""
    if isinstance(folder, StoragePath):
        import pyarrow.fs as pafs

        infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def search_plan(settings: SearchSettings, checkpoint_bytes: Callable[[], Optional[int]], max_concurrent: Optional[int],
                cpus_per_trial: float, gpus_per_trial: Optional[float], on_cluster: bool) -> Optional[DiskPlan]:  # fmt: skip
    """What a search's checkpoints will take at their peak; None when no trial checkpoints. ``checkpoint_bytes``
    is asked only then (the job's estimate of one checkpoint); ``gpus_per_trial`` None: one when CUDA is here."""
    from reid_core.data import available_cpus

    pbt = settings.scheduler == PBT
    if not (settings.checkpoint_every or pbt):
        return None
    import torch

    gpus = gpus_per_trial if gpus_per_trial is not None else float(torch.cuda.is_available())
    concurrent, note = concurrency(
        settings.num_trials, max_concurrent, cpus_per_trial, gpus, available_cpus(), torch.cuda.device_count(), cluster=on_cluster
    )
    return plan(
        checkpoint_bytes(), checkpointing=True, pbt=pbt, steps=round(settings.max_samples / settings.images_per_step),
        checkpoint_every=settings.checkpoint_every, concurrent=concurrent, num_trials=settings.num_trials,
        keep_checkpoints=settings.keep_checkpoints, concurrency_note=note,
    )  # fmt: skip
