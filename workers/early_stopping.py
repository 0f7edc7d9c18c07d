"""Early stopping that judges a schedule by what it would reach if annealed now.

ASHA compares trials at rungs; on the raw metric, a schedule whose rate is still high (cosine,
one-cycle, SGDR mid-cycle) looks worse there than a low fixed rate that will end worse. With
`judge: "cooldown"` every trial runs a cooldown probe at each rung epoch (`run_trial`'s
`Probing`) and reports the probe's value of the job's metric under `JUDGED_KEY`;
`CooldownASHA` is Ray Tune's own `AsyncHyperBandScheduler` reading that value at rungs instead
of the raw metric. Everything else (brackets, cutoffs, promotion, the final epoch) is Tune's.
"""

from __future__ import annotations

import math
from typing import Any

from lrtune.schemas.jobs import JobSpec
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

# The probe's value of the job's metric, in the result of a rung epoch (worst value when the
# probe diverged, so a blown-up branch is never promoted: ASHA's cutoff ignores NaN).
JUDGED_KEY = "lrtune_judged"


def is_confirmation(trial: Any) -> bool:
    """A confirmation trial (a top configuration rerun on a fresh seed, after the search)."""
    return trial.config.get("phase") == "confirm"


class SearchASHA(AsyncHyperBandScheduler):
    """Ray Tune's ASHA over the search's trials. The confirmation's trials come later in the
    same Tune run and run to their end, as under FIFO: ASHA neither ranks nor stops them (the
    point of confirming is a fair estimate of each configuration)."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not is_confirmation(trial):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if is_confirmation(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if not is_confirmation(trial):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if not is_confirmation(trial):
            super().on_trial_remove(tune_controller, trial)


class CooldownASHA(SearchASHA):
    """ASHA whose rung comparisons use the cooldown probe's value (`JUDGED_KEY`) when the
    result carries one; results without a probe (between rungs, the last epoch) are Tune's."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if JUDGED_KEY in result and self._metric is not None:
            result = {**result, self._metric: result[JUDGED_KEY]}
        return super().on_trial_result(tune_controller, trial, result)


def make_scheduler(spec: JobSpec) -> TrialScheduler:
    """ASHA on epochs for the search's trials when the job asks for early stopping (judged by
    cooldown probes unless `judge` is "raw"), else first-in first-out. A population job's
    Tune trials are populations, which stop their own members at ASHA's rungs
    (`lrtune.workers.trainable`): first-in first-out for them."""
    if spec.execution == "population":
        return FIFOScheduler()
    return _asha(spec) or FIFOScheduler()


def _asha(spec: JobSpec) -> AsyncHyperBandScheduler | None:
    """The job's ASHA, when it asks for early stopping that can stop anything."""
    stopping = spec.early_stopping
    if stopping.kind != "asha" or spec.budget.epochs <= stopping.grace_epochs:
        return None
    asha = CooldownASHA if stopping.judge == "cooldown" else SearchASHA
    # Metric and mode come from TuneConfig (Tune refuses them twice).
    return asha(
        time_attr="training_iteration",
        max_t=spec.budget.epochs,
        grace_period=stopping.grace_epochs,
        reduction_factor=stopping.reduction_factor,
    )


def rung_epochs(spec: JobSpec) -> frozenset[int]:
    """The rung epochs of the job's ASHA below its last epoch (none without ASHA): where a
    trial may be stopped, so where it is probed (judge "cooldown") and checkpointed. Read off
    Tune's own brackets, so they are exactly where ASHA compares."""
    scheduler = _asha(spec)
    if scheduler is None:
        return frozenset()
    return frozenset(
        int(milestone)
        for bracket in scheduler._brackets  # Tune keeps the rungs there; no public accessor
        for milestone, _recorded in bracket._rungs
        if milestone < spec.budget.epochs
    )


def probe_epochs(spec: JobSpec) -> frozenset[int]:
    """The epochs after which a trial runs a cooldown probe: the rungs, when judged by one."""
    return rung_epochs(spec) if spec.early_stopping.judge == "cooldown" else frozenset()


def judged_value(value: float | None, *, mode: str) -> float:
    """A probe's metric as ASHA sees it: NaN, infinities and a missing value as the worst value
    there is."""
    if value is not None and math.isfinite(value):
        return value
    return -math.inf if mode == "max" else math.inf
