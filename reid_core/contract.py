"""The training-function contract: what ``reid-tune search --trainable`` tunes and ``reid-tune run`` re-runs.

Any function of this shape can be tuned, not only ours (no Ray in it, nothing to subclass)::

    def fn(config: dict, report) -> None | dict:
        ...                                   # build the model, data and optimizer from config
        for step in range(1, max_steps + 1):
            ...                               # one optimizer step
            report({"step": step, "samples": step * images_per_step, "ce": ce, "num_classes": C})
        return {"anything": "for summary.json"}  # optional

``config`` is the user's own mapping: the ``--config`` file with the trial's sampled values on top
(a search space may only name its keys). ``report(metrics)`` is called **once per optimizer step**
with at least (`REQUIRED`):

- ``step``: optimizer steps taken (1, 2, ...); ``samples``: training images seen so far (the
  search's time axis: ASHA and the chance-level rule compare trials at equal images, whatever
  their batch size or accumulation); ``ce``: the identity cross-entropy of the step;
- ``num_classes`` (identities of the head) or ``chance_ce`` (its chance CE, ``log(num_classes)``).

The harness derives what is missing, so the stopping rule (`reid_core.chance`), ASHA, tables and
pictures work on that minimum:

- ``chance_ce = log(num_classes)``;
- ``ce_ema``: the smoothing `reid_core.trainer.Trainer` applies, ``reid_core.schedule.ema`` with
  beta `DEFAULT_CE_EMA_BETA` (0.95) per report. A step of k micro-batches that reports
  ``micro_batches: k`` weighs ``beta**k``, exactly as our Trainer (beta per batch), so ``ce_ema``
  spans the same images at any accumulation; a function reporting its own ``ce_ema`` keeps it.

Optional, read by the rule: ``unseen_ce``, the identity CE on a fixed batch of images of the training
identities the function never trains on (NaN before its first measurement; `reid_core.unseen.UnseenCE`
measures it as our Trainer does). A run whose ``ce_ema`` is far below it while it has never left chance
memorises its images and is stopped as ``stuck_at_chance``, cause ``labels_memorised``.

Anything else reported is kept (result.json, metrics.csv). The head's diagnostics come from
`reid_core.monitor.HeadMonitor` (``**monitor.after_step()`` in the report): with them a trial
stuck at chance gets a named cause; without them its cause is ``unknown`` (no evidence, no guess).
A report without ``ce`` (or the other keys) is a one-line error naming the key.

Optional hooks:

- **checkpoints**: ``report(metrics, checkpoint=state)``, where ``state`` is a dict of tensors,
  numbers, strings, lists and dicts (``torch.load(weights_only=True)`` reads it back) or a
  function returning one (called only when a checkpoint is due, so it costs nothing otherwise).
  The harness keeps it every ``report.checkpoint_every`` steps (``--checkpoint-every``; 0: never,
  the default without ``--max-failures``). On a restart (a retry after ``--max-failures``, a lost
  node) ``report.resume`` holds the newest saved state, else None: restore from it and go on
  from its step. A function without these hooks is restarted from step 1 by a retry.
- **pre-flight**: the first report carrying the monitor's pre-flight keys (the first
  ``after_backward()`` of a `HeadMonitor` returns them: ``head_in_optimizer``, ``head_grad_norm``,
  ``logit_gain``, and ``label_min`` / ``label_max`` when labels were given to ``observe``). The
  search runs the function once in the driver up to its first report (`first_report`) and checks the
  contract and these keys before any trial; keys not reported are skipped with a note.

The harness ends a function when its trial is stopped or has seen the search's budget
(``report`` raises `BudgetSpent`, a BaseException the harness catches: let it through, or return at
once when you catch it, as `reid_core.train.train` does to hand back its summary).
`reid_core.train.train` is the reference implementation of this contract.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from reid_core.errors import UserError
from reid_core.schedule import ema

REQUIRED = ("step", "samples", "ce")
DEFAULT_CE_EMA_BETA = 0.95  # per report (per micro-batch with `micro_batches`), as TrainConfig.ce_ema_beta per batch
CONTRACT_HINT = "report at least step, samples, ce and num_classes (or chance_ce) once per optimizer step"

Forward = Callable[[dict[str, Any], Optional[dict[str, Any]]], None]  # (metrics, checkpoint state or None)


class BudgetSpent(BaseException):
    """Raised by ``report`` to end the function: its budget is spent, the run is stopped (the plain run's --stop-when-stuck), or `first_report` has its report."""


class Reporter:
    """The ``report`` the harness passes: checks and completes each report, then forwards it.

    ``forward(metrics, state)``: where reports go (``ray.tune.report`` in a trial, the plain run's
    `reid_core.runner.RunWriter`); ``state`` is a checkpoint to keep, or None. ``max_samples``: the budget
    in images; the report that reaches it is forwarded, then `BudgetSpent` ends the function. ``resume``:
    a checkpoint this reporter saved (``{"user": ..., "harness": ...}``), to continue from.

    What a function may read off it (each optional to honour):

    - ``report.resume``: the state to continue from, or None;
    - ``report.checkpoint_every``: steps between kept checkpoints (0: none); `checkpoint_at` results too
      (PBT's perturbation points): a function passing ``checkpoint=`` a callable is asked only then;
    - ``report.eval_at_samples``: images seen at which the search compares trials by a retrieval metric
      (a function that evaluates does so at the first step past each);
    - ``report.log(line)``: a line for the person watching (printed by the plain run, dropped in a trial).
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_samples: Optional[float] = None,
        resume: Optional[dict[str, Any]] = None,
        checkpoint_every: int = 0,
        checkpoint_at: Optional[Callable[[Mapping[str, Any]], bool]] = None,
        eval_at_samples: Sequence[float] = (),
        ce_ema_beta: float = DEFAULT_CE_EMA_BETA,
        log: Callable[[str], None] = lambda line: None,
    ):
        self.forward = forward
        self.max_samples = max_samples
        self.checkpoint_every = checkpoint_every
        self.checkpoint_at = checkpoint_at
        self.eval_at_samples = tuple(eval_at_samples)
        self.ce_ema_beta = ce_ema_beta
        self.log = log
        if resume is not None and "user" not in resume:  # a trial checkpoint of our job from before the contract
            resume = {"user": resume, "harness": {"ce_ema": resume.get("ce_ema")}}
        self.resume: Optional[dict[str, Any]] = None if resume is None else resume["user"]
        self._ce_ema: Optional[float] = None if resume is None else resume["harness"]["ce_ema"]
        self.calls = 0
        self.last: dict[str, Any] = {}

    def __call__(self, metrics: Mapping[str, Any], checkpoint: Any = None) -> None:
        self.calls += 1
        out = self.complete(metrics)
        state = None
        if checkpoint is not None and self.checkpoint_due(out):
            user = checkpoint() if callable(checkpoint) else checkpoint
            state = {"user": user, "harness": {"ce_ema": self._ce_ema}}
        self.last = out
        self.forward(out, state)
        if self.max_samples is not None and out["samples"] >= self.max_samples:
            raise BudgetSpent()

    def checkpoint_due(self, metrics: Mapping[str, Any]) -> bool:
        """Whether the harness keeps a checkpoint at this report: every ``checkpoint_every`` steps, and where
        ``checkpoint_at`` says (PBT looks at a trial there)."""
        every = self.checkpoint_every and metrics["step"] % self.checkpoint_every == 0
        return bool(every or (self.checkpoint_at is not None and self.checkpoint_at(metrics)))

    def complete(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` checked (one-line `UserError` naming a missing key) with ``chance_ce`` and ``ce_ema`` added."""
        if not isinstance(metrics, Mapping):
            raise UserError(f"report() got a {type(metrics).__name__}, not a dict of metrics; {CONTRACT_HINT}")
        out = {key: _plain(value) for key, value in metrics.items()}
        for key in REQUIRED:
            if key not in out:
                raise UserError(f"report(metrics) call {self.calls} has no '{key}' (it has {', '.join(out) or 'nothing'}); {CONTRACT_HINT}")
            if not isinstance(out[key], numbers.Real) or isinstance(out[key], bool):
                raise UserError(f"report(metrics): '{key}' is {out[key]!r}, not a number; {CONTRACT_HINT}")
        if "chance_ce" not in out:
            classes = out.get("num_classes")
            if classes is None:
                raise UserError(f"report(metrics) call {self.calls} has neither 'num_classes' nor 'chance_ce'; {CONTRACT_HINT}")
            if not isinstance(classes, numbers.Real) or classes < 2:
                raise UserError(f"report(metrics): 'num_classes' is {classes!r}, but must be a number >= 2")
            out["chance_ce"] = math.log(classes)
        if "ce_ema" in out:
            self._ce_ema = out["ce_ema"]
        else:
            ce = float(out["ce"])
            beta = self.ce_ema_beta ** out.get("micro_batches", 1)
            self._ce_ema = ema(self._ce_ema, ce, beta) if math.isfinite(ce) else math.nan
            out["ce_ema"] = self._ce_ema
        return out


def _plain(value: Any) -> Any:
    """A 0-d tensor or NumPy scalar as a Python number (a loss reported without ``.item()``)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


# --- the function itself ------------------------------------------------------------


def load_trainable(spec: str, root: Optional[str] = None) -> Callable[..., Any]:
    """Import ``package.module:function``; one-line `UserError` for a bad spec, module or name.

    The current folder is searched first, as ``python -m`` does; ``root`` (a folder recorded by
    `trainable_root` in the driver) too, so a Ray worker finds a module the driver found.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name.isidentifier():
        raise UserError(f"--trainable '{spec}' is not package.module:function (e.g. --trainable my_repo.tune:train)")
    for folder in (root, str(Path.cwd())):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        missing = getattr(err, "name", None) or module_name
        where = "" if missing != module_name.split(".")[0] else " in the current folder or on PYTHONPATH"
        raise UserError(
            f"--trainable '{spec}': cannot import module '{module_name}' (no module named '{missing}'{where}); "
            "run from the folder that holds it, or add that folder to PYTHONPATH"
        ) from None
    fn = getattr(module, name, None)
    if fn is None:
        names = [n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"it defines {', '.join(names) or 'no functions'}"
        raise UserError(f"--trainable '{spec}': module '{module_name}' has no '{name}'; {hint}")
    if not callable(fn):
        raise UserError(f"--trainable '{spec}': '{name}' is a {type(fn).__name__}, not a function fn(config, report)")
    return fn


def trainable_root(spec: str) -> Optional[str]:
    """The folder holding the top-level package of an imported ``spec`` (for the workers' sys.path)."""
    module = sys.modules.get(spec.partition(":")[0])
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    depth = module.__name__.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def seed_all(seed: int = 0) -> None:
    """What the harness does before calling a function, in a trial and in its re-run alike: a function
    that does not seed itself still gets the same initialisation and data order in both."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def call(fn: Callable[..., Any], config: dict[str, Any], report: Reporter, threads: int = 0) -> dict[str, Any]:
    """Run ``fn(config, report)`` until it returns or its budget is spent; its summary (a dict, or empty)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    seed_all()
    try:
        result = fn(dict(config), report)
    except BudgetSpent:
        result = None
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        where = out_of_memory(err)
        if where is None:
            raise
        raise out_of_memory_error(where, report.last.get("step"), err, config) from None
    if report.calls == 0:
        raise UserError(f"the training function returned without calling report(); {CONTRACT_HINT}")
    return dict(result) if isinstance(result, Mapping) else {}


class OutOfMemory(UserError):
    """The training function ran out of GPU or host memory; one line naming which, where, and the fixes
    (`out_of_memory_error` writes it). Only the message is its state: Ray ships a trial's error by pickling it."""


def out_of_memory_error(
    where: str, step: Optional[int], err: BaseException, config: Mapping[str, Any], what: str = "the run"
) -> OutOfMemory:
    """The `OutOfMemory` for ``err`` ('GPU' or 'host', `out_of_memory`) after ``step`` reported steps of ``what``."""
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    asked = re.search(r"tried to allocate (\d+) bytes", detail)  # the CPU allocator's words, after its C++ assertion
    if asked:
        detail = f"an allocation of {int(asked.group(1)) / 2**30:,.2f} GiB failed"
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    when = f"at step {step + 1}" if step is not None else f"in {what}, before its first step"
    batch, accumulation = config.get("batch_size"), config.get("grad_accum_steps", 1)
    smaller = "a smaller batch with more gradient accumulation (the same images per step)"
    if isinstance(batch, int) and isinstance(accumulation, int) and batch >= 2:  # our config's names (TrainConfig)
        smaller += f": --set batch_size={batch // 2} grad_accum_steps={accumulation * 2} instead of {batch} and {accumulation}"
    if what == "the pre-flight":  # in the search's driver, before any trial
        fix = f"{smaller}, or run it where a trial runs (--preflight-on trial) or not at all (--skip-preflight)"
    else:
        share = "GPU (--gpus-per-trial 1)" if where == "GPU" else "machine (--max-concurrent, or more --cpus-per-trial each)"
        fix = f"{smaller}, or fewer trials per {share}"
    return OutOfMemory(f"out of {where} memory {when} ({detail}); fix: {fix}")


# What torch says when an allocation fails: CUDA (torch.OutOfMemoryError, and the library errors that are one),
# the CPU allocator (a RuntimeError), or Python itself (MemoryError).
GPU_OOM = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "HIP out of memory")
HOST_OOM = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def out_of_memory(err: BaseException) -> Optional[str]:
    """'GPU' or 'host' when ``err`` is an allocation failure, else None."""
    import torch

    text = str(err)
    if isinstance(err, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)) or any(s in text for s in GPU_OOM):
        return "GPU"
    if isinstance(err, MemoryError) or any(s in text for s in HOST_OOM):
        return "host"
    return None


def first_report(
    fn: Callable[..., Any], config: dict[str, Any], threads: int = 0, on_checkpoint: Optional[Callable[[Any], None]] = None
) -> dict[str, Any]:
    """Run ``fn`` up to its first report and return that report (checked and completed); nothing is kept.

    ``on_checkpoint``: called with the checkpoint state the first report offers (``report(..., checkpoint=...)``),
    if it offers one: the search sizes its checkpoints' disk from it (`state_bytes`)."""
    first: dict[str, Any] = {}

    def keep(metrics: dict[str, Any], state: Any) -> None:
        first.update(metrics)
        if state is not None and on_checkpoint is not None:
            on_checkpoint(state["user"])
        raise BudgetSpent()

    call(fn, config, Reporter(keep, checkpoint_every=1 if on_checkpoint else 0), threads)
    return first


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a checkpoint state (nested dicts, lists and tuples): about its size on disk."""
    if isinstance(state, Mapping):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    numel, size = getattr(state, "numel", None), getattr(state, "element_size", None)
    return numel() * size() if callable(numel) and callable(size) else 0


def preflight_checks(first: Mapping[str, Any], log: Callable[[str], None] = print) -> None:
    """The pre-flight checks one step allows, on the first report; raises `PreflightError` naming the cause.

    Each check needs its keys in the report (`reid_core.monitor.PREFLIGHT_KEYS`); a check whose keys
    are absent is skipped, and the note says which and how to have it.
    """
    from reid_core.preflight import PreflightError

    done, skipped = [], []
    if "head_in_optimizer" in first:
        if not first["head_in_optimizer"]:
            raise PreflightError("head_not_in_optimizer", "the classifier weight is in no optimizer parameter group")
        done.append("head in the optimizer")
    else:
        skipped.append("head in the optimizer")
    if "head_grad_norm" in first:
        grad = first["head_grad_norm"]
        if not (math.isfinite(grad) and grad > 0):
            raise PreflightError("no_gradient", f"the classifier's gradient norm is {grad} after the first backward")
        done.append("gradient reaches the head")
    else:
        skipped.append("gradient reaches the head")
    if "logit_gain" in first:
        if not first["logit_gain"] >= 2.0:
            raise PreflightError(
                "bounded_logits", f"4x the classifier's weights widened the logits only {first['logit_gain']:.2f}x"
            )
        done.append("logits unbounded")
    else:
        skipped.append("logit spread")
    classes = first.get("num_classes")
    if "label_min" in first and classes is not None:
        if first["label_min"] < 0 or first["label_max"] >= classes:
            raise UserError(
                f"pre-flight: labels of the first step span [{first['label_min']}, {first['label_max']}] but the head has "
                f"{classes} classes (labels must be in [0, {int(classes) - 1}]); map identity ids to 0..C-1"
            )
        done.append("labels in range")
    else:
        skipped.append("labels in range")
    text = f"pre-flight (first step of the training function): {', '.join(done) or 'no head check possible'}"
    if skipped:
        text += (
            f"; skipped: {', '.join(skipped)} (not in the first report: report reid_core.monitor.HeadMonitor's "
            "after_backward() and after_step() metrics, and pass labels to observe(), to have them)"
        )
    log(text)
