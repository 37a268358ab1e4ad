"""Which searched value mattered: each knob's importance for the search's metric, by Optuna's PED-ANOVA.

Optuna's evaluators read COMPLETE trials only, and the search tells Optuna a trial stopped early as
pruned (`tuner.searchers`), so on a search where ASHA and the chance-level rule do their job almost
nothing would be counted. Here every trial that ended is valued as the table values it (`results.csv`'s
``final_<metric>``): a trial that ran its budget at its last value, a trial stopped early (cut by the
scheduler, stuck at chance) at the last value it reached, the one its stop was judged on; a diverged
trial, or one with no value of the metric, at the worst value of the search (nothing was worse). The
errored and the unfinished are left out: a crash or an interruption says nothing of the knobs. These
values become COMPLETE trials of an in-memory study built for the purpose, and
``optuna.importance.get_param_importances`` reads that study.

Why PED-ANOVA (`optuna.importance.PedAnovaImportanceEvaluator`, Optuna's default evaluator) and not
fANOVA: it needs no new dependency (fANOVA's random forest needs scikit-learn and SciPy); it has no
randomness, so a re-run of the report on the same experiment prints the same numbers without a seed
to keep; and it reads ranks (which trials are in the best group), not the values themselves, so a
diverged trial's CE of 60,000 weighs as much as any other bad trial instead of dominating a
regression. Its question is the seed team's: which knob's values set the best trials apart from the
rest. The best group is the top quarter, and at least `TOP_TRIALS` trials: the density of one or two
points says little (simulated, a head LR that decides CE with three knobs that do not: ranked first in
72% of six-trial searches with a top quarter of two trials; with the best three, 80% at 6 trials, 92%
at 8, 93% at 10, 96% at 12, 100% at 16; 200 searches each). Below `MIN_TRIALS` trials valued it says
so in one line instead. Under PBT a trial's values change mid-run and its weights come from other
trials: not computed.

No Ray, no torch: ``reid-tune report`` draws it from the files.
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from reid_core.schema import ERROR, UNFINISHED
from tuner.settings import PBT, SearchSettings
from tuner.storage import Location

TARGET_QUANTILE = 0.25  # PED-ANOVA's best group: the top quarter of the trials valued...
TOP_TRIALS = 3  # ...and never fewer than three of them
MIN_TRIALS = 2 * TOP_TRIALS  # fewer valued trials: the best three would be more than half of them
FILE = "importance.png"  # beside curves.png in the experiment folder


@dataclass(frozen=True)
class Importance:
    """Each searched key's importance (summing to 1, most important first), or ``note``: why there is none."""

    metric: str
    values: dict[str, float] = field(default_factory=dict)
    trials: int = 0  # trials valued
    top: int = 0  # of which the best group PED-ANOVA compares with all of them
    note: Optional[str] = None

    def lines(self) -> list[str]:
        """The summary's lines: a header and one line per knob (``head_lr 0.81``), or the one note line."""
        if not self.values:
            return [f"importance: {self.note}"]
        width = max(len(k) for k in self.values)
        header = (
            f"importance for {self.metric} (Optuna's PED-ANOVA: what sets the best {self.top} of {self.trials} trials "
            f"apart; each trial at the last {self.metric} it reached):"
        )
        return [header, *(f"  {key:<{width}}  {value:.2f}" for key, value in self.values.items())]


def domain_of(description: str) -> tuple[str, list[Any]]:
    """``'loguniform[1e-06, 0.1]'`` (`search_spaces.Domain.describe`, as reid_tune.json keeps it) -> ``(kind, args)``."""
    kind, bracket, rest = description.partition("[")
    try:
        args = ast.literal_eval(bracket + rest)
    except (ValueError, SyntaxError):
        return kind, []
    return kind, list(args) if isinstance(args, (list, tuple)) else []


def distribution(description: str, observed: list[Any]) -> Any:
    """The Optuna distribution of a searched key, widened to hold every value the trials got (a quantised
    domain may round past its bound)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind, args = domain_of(description)
    numbers = [v for v in observed if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if kind != "choice" and len(args) >= 2 and len(numbers) == len(observed):
        low, high = min([args[0], *numbers]), max([args[1], *numbers])
        if kind in ("randint", "lograndint") and high == args[1] and all(v < args[1] for v in numbers):
            high = args[1] - 1  # Tune's randint excludes its upper bound
        log = "log" in kind
        if kind.endswith("randint"):
            return IntDistribution(int(low), int(max(high, low)), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    choices = list(args) if kind == "choice" else []
    for value in observed:  # a value no choice equals (an old space, a user's hand-edit) is a choice of its own
        if not any(_same(value, c) for c in choices):
            choices.append(value)
    return CategoricalDistribution(choices)


def _same(value: Any, choice: Any) -> bool:
    """Numbers by value (a column read as floats holds choice 2 as 2.0), anything else by type and value."""
    if isinstance(value, (int, float)) and isinstance(choice, (int, float)) and not isinstance(choice, bool):
        return value == choice
    return type(value) is type(choice) and value == choice


def _plain(value: Any) -> Any:
    """A table cell as Optuna takes a parameter: a numpy scalar made a Python one."""
    return value.item() if hasattr(value, "item") else value


def valued_trials(frame: pd.DataFrame, settings: SearchSettings) -> tuple[list[tuple[dict[str, Any], float]], int]:
    """``([(searched values, value), ...], left out)``: each trial that ended, valued as the module says."""
    column = f"final_{settings.metric}"
    if frame.empty or column not in frame:
        return [], len(frame)
    ended = frame[~frame["end_reason"].isin([ERROR, UNFINISHED])]
    ended = ended[ended[list(settings.space)].notna().all(axis=1)]
    values = pd.to_numeric(ended[column], errors="coerce").astype(float)
    finite = values[values.map(math.isfinite)]
    if finite.empty:
        return [], len(frame)
    worst = float(finite.max() if settings.mode == "min" else finite.min())
    out = []
    for (_, row), value in zip(ended.iterrows(), values):
        params = {key: _plain(row[key]) for key in settings.space}
        out.append((params, float(value) if math.isfinite(value) else worst))
    return out, len(frame) - len(out)


def param_importances(frame: pd.DataFrame, settings: SearchSettings) -> Importance:
    """Each searched key's importance for ``settings.metric`` over the table's trials (see the module)."""
    metric = settings.metric
    if settings.scheduler == PBT:
        return Importance(metric, note="not computed under --scheduler pbt: a trial's values change mid-run and its weights come from other trials")
    if len(settings.space) < 2:
        return Importance(metric, note=f"one searched value ({', '.join(settings.space)}): nothing to rank it against")
    valued, left_out = valued_trials(frame, settings)
    n = len(valued)
    if n < MIN_TRIALS:
        extra = f", {left_out} errored or unfinished left out" if left_out else ""
        return Importance(metric, trials=n, note=f"{n} trials valued{extra}; it needs at least {MIN_TRIALS} (more --num-trials)")
    if len({value for _, value in valued}) == 1:
        return Importance(metric, trials=n, note=f"every trial reached the same {metric}: no value mattered more than another")

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    distributions = {key: distribution(settings.space[key], [p[key] for p, _ in valued]) for key in settings.space}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" is not news
    try:
        study = optuna.create_study(direction="minimize" if settings.mode == "min" else "maximize")
        for params, value in valued:
            params = {k: int(v) if isinstance(distributions[k], optuna.distributions.IntDistribution) else v for k, v in params.items()}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
        # the best quarter, and at least TOP_TRIALS: Optuna keeps the ceil(q * n) best (and ties)
        quantile = max(TARGET_QUANTILE, (TOP_TRIALS - 0.5) / n)
        evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
        with warnings.catch_warnings():  # its notes on few trials per region: said by our own line instead
            warnings.simplefilter("ignore")
            found = get_param_importances(study, evaluator=evaluator, params=list(settings.space))
    finally:
        optuna.logging.set_verbosity(verbosity)
    order = list(settings.space)  # ties in the space's order, whatever order Optuna's sets gave them
    ranked = dict(sorted(found.items(), key=lambda kv: (-round(kv[1], 12), order.index(kv[0]))))
    return Importance(metric, values=ranked, trials=n, top=math.ceil(quantile * n))


def importance_figure(importance: Importance):
    """Horizontal bars, the most important knob on top."""
    import matplotlib.pyplot as plt

    keys = list(importance.values)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(keys) + 1.6), dpi=110)
    bars = ax.barh(keys, [importance.values[k] for k in keys], color="tab:blue", alpha=0.8)
    for bar, key in zip(bars, keys):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{importance.values[key]:.2f}", va="center")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_title(f"what mattered for {importance.metric} (best {importance.top} of {importance.trials} trials)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def importance_png(importance: Importance, path: str | Location) -> bool:
    """Write the picture when there are importances; whether it was written."""
    if not importance.values:
        return False
    from tuner.plots import save_figure

    save_figure(importance_figure(importance), path)
    return True
