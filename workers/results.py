"""Results of a Ray Tune experiment, written from the driver: the `ResultSink` the workers code
writes through, and `RecordResults`, the Tune callback that feeds it.

Trial actors never open database connections: each trial reports its epochs with `tune.report`,
Tune hands them to this callback in the driver process, and the callback calls the sink (the
service wires the store behind it, see `lrtune.service.worker`). Every write is idempotent on
the trial key and on (trial, epoch), so a result Tune delivers twice after a restore lands once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NotRequired, Protocol, TypedDict, cast

from lrtune.schemas.jobs import CANCELLED_TRIAL_ERROR
from lrtune.schemas.trials import EpochResult, ProbeResult
from ray.tune import Callback, Stopper

if TYPE_CHECKING:
    from lrtune.schemas.jobs import JobPhaseName, RungDecision
    from lrtune.workers.recommendation import TrialSummary

# "diverged" on the epoch where the loss blew up (and on one closing result when the blow-up
# came on an epoch's last step); "already_finished" on the one result of a skipped trial.
OUTCOME_KEY = "lrtune_outcome"
# The cooldown probe of a rung epoch (a ProbeResult as JSON), in that epoch's result.
PROBE_KEY = "lrtune_probe"
# The epoch of the checkpoint a restarted trial resumed from, in its first result after that.
RESTORED_KEY = "lrtune_restored_from_epoch"
# The horizons of a training-length sweep that the trunk forked and ran since its previous
# result, each a trial of its own (`lrtune.workers.sweep.Branch.to_json`).
BRANCHES_KEY = "lrtune_branches"
# A population's members' news of one epoch, one `MemberNews` each (`lrtune.workers.trainable`).
MEMBERS_KEY = "lrtune_members"
NODE_KEY = "node_id"
# A comma-separated list of the workload metrics flattened into the result.
METRIC_NAMES_KEY = "metric_names"


FinishedStatus = Literal["completed", "pruned", "diverged", "failed"]


class TuneTrialConfig(TypedDict):
    """One Tune trial's config: built by the searchers (`workers/experiment.py`), read by the
    trainable and by `RecordResults`. A plain dict at runtime: Tune stores and restores it."""

    trial_key: str  # stable across restores: the trial's key in SQL
    policy: str
    index: int
    seed: int
    steps_per_epoch: int
    # The arm's optimizer (OptimizerSpec as JSON); missing in configs from before it was there.
    optimizer: NotRequired[dict[str, Any] | None]
    point: dict[str, Any]  # the sampled point of the search space
    schedule: dict[str, Any] | None  # the resolved schedule spec; None when it did not resolve
    schedule_error: str | None
    phase: NotRequired[Literal["search", "confirm"]]  # missing: "search"
    # Epochs to train when not the job's budget: a horizon_halving rung's horizon.
    epochs: NotRequired[int]
    # A sweep's trunk: the shorter horizons it forks (lrtune.workers.sweep.Horizon as JSON).
    horizons: NotRequired[list[dict[str, Any]]]
    # The seed of the training batches' order: the job's, one per phase (the search's, each
    # confirmation seed's); missing where the workload orders its own data (a train function).
    shuffle_seed: NotRequired[int]
    # A population (execution "population"): its members' own configs, trained as one batched
    # model on their one data order. Its own key, policy, seed and `shuffle_seed` are the first
    # member's; `point` and `schedule` are unused.
    members: NotRequired[list[TuneTrialConfig]]


class MemberNews(TypedDict):
    """What one member of a population did in an epoch, in that epoch's result (`MEMBERS_KEY`):
    its epoch (an EpochResult as a dict) unless it failed before training, its cooldown probe
    and the rung's decision at a rung, and how it ended when it did."""

    trial_key: str
    epoch: dict[str, Any] | None
    probe: dict[str, Any] | None
    decision: Literal["continue", "stop"] | None
    status: FinishedStatus | None
    error: str | None


def trial_config(trial: Any) -> TuneTrialConfig:
    """A Tune trial's config, typed."""
    return cast(TuneTrialConfig, trial.config)


def recorded_point(config: TuneTrialConfig) -> dict[str, Any]:
    """What a trial's search_config records (a population member's adds its population): its
    point, and the data order it trained on when the job set one."""
    if "shuffle_seed" not in config:
        return dict(config["point"])
    return {**config["point"], "shuffle_seed": config["shuffle_seed"]}


class TrialError(RuntimeError):
    """What a trial raises when it fails; the message is the cause, as
    `lrtune.workers.user_code.describe_user_error` puts it."""


# How Tune's error text names it, before the message.
TRIAL_ERROR = f"{TrialError.__module__}.{TrialError.__qualname__}"


class ResultSink(Protocol):
    """Where an experiment's trials and epochs go; `trial_key` is stable across restores."""

    def on_trial_start(
        self,
        trial_key: str,
        *,
        policy: str,
        schedule: dict[str, Any],
        search_config: dict[str, Any],
        seed: int,
        node_id: str | None,
        phase: str = "search",
    ) -> int | None:
        """Record the trial as running; its id, or None when it must not run (job cancelled).

        `phase` is "search" or "confirm" (a top configuration rerun with a fresh seed)."""
        ...

    def on_epoch(self, trial_key: str, result: EpochResult, *, node_id: str | None) -> None:
        """Record one epoch; the same (trial, epoch) twice is stored once."""
        ...

    def on_probe(self, trial_key: str, probe: ProbeResult, *, decision: str | None) -> None:
        """Record a cooldown probe and what early stopping decided at its rung ("continue",
        "stop", or None outside a rung); the same (trial, epoch) twice is stored once."""
        ...

    def on_trial_restored(self, trial_key: str, *, epoch: int) -> None:
        """The trial resumed from its checkpoint of `epoch` (its worker or node had died)."""
        ...

    def on_checkpoint(self, trial_key: str, *, epoch: int) -> None:
        """The trial saved a checkpoint after `epoch`: what it reported up to then must be
        durable before Tune's experiment state points at that checkpoint (a resumed trial does
        not report those epochs again)."""
        ...

    def on_trial_end(self, trial_key: str, *, status: FinishedStatus, error: str | None) -> None:
        """Record how the trial ended."""
        ...

    def should_stop(self) -> bool:
        """True once the job must end: cancellation requested, or this worker lost the lease."""
        ...

    def finished_trial_keys(self) -> set[str]:
        """Keys of the trials already finished in the database (not to be run again)."""
        ...


class ConfirmationSink(ResultSink, Protocol):
    """What the searcher asks of the job's sink when the search ends and the confirmation
    begins (the daemon's `JobSink` fits)."""

    def search_summaries(self) -> list[TrialSummary]:
        """The job's finished search-phase trials, for picking what to confirm."""
        ...

    def set_planned_trials(self, planned: int) -> None: ...

    def begin_phase(self, phase: JobPhaseName) -> None:
        """The job enters `phase` of its timeline now; the phase before it ends here. Never
        raises: the timeline records the job, it is no reason for the job to fail."""
        ...


class HalvingSink(ConfirmationSink, Protocol):
    """What the horizon-halving searcher asks of the job's sink when a rung ends."""

    def rung_values(self, trial_keys: Collection[str]) -> dict[str, float | None]:
        """The final value of the job's metric of each trial of `trial_keys` that trained
        its whole horizon; None for one that failed, diverged or has not ended."""
        ...

    def record_rung_decisions(self, decisions: Mapping[str, RungDecision]) -> None:
        """A rung's decision on each of its trials (by key): a stopped one ends `pruned`."""
        ...

    def save_search_spaces(self, spaces: dict[str, dict[str, Any]]) -> None:
        """Each policy's search space as JSON, as the job searches it (a range extended)."""
        ...

    def add_note(self, note: str) -> None:
        """Say on the job what the worker decided that its spec does not say."""
        ...


# A Tuner pickles its callbacks, stopper and search algorithm into the experiment folder (and
# Tuner.restore unpickles them), so they must not hold a database-backed sink. They hold the
# job's key instead and look the sink up here, where the daemon registers it for the run.
_SINKS: dict[str, ResultSink] = {}
_SINKS_LOCK = threading.Lock()


@contextmanager
def sink_registered(job_key: str, sink: ResultSink) -> Iterator[ResultSink]:
    """Make `sink` the one the callback, stopper and searcher of `job_key` write to."""
    with _SINKS_LOCK:
        _SINKS[job_key] = sink
    try:
        yield sink
    finally:
        with _SINKS_LOCK:
            _SINKS.pop(job_key, None)


def sink_for(job_key: str) -> ResultSink:
    with _SINKS_LOCK:
        sink = _SINKS.get(job_key)
    if sink is None:
        raise RuntimeError(f"no result sink is registered for job {job_key}")
    return sink


def epoch_metrics(result: EpochResult, *, node_id: str | None) -> dict[str, Any]:
    """The flat dict a trial passes to `tune.report` for one epoch."""
    return {
        **result.metrics,
        "epoch": result.epoch,
        "step": result.step,
        "lr": result.lr,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "elapsed_s": result.elapsed_s,
        METRIC_NAMES_KEY: ",".join(sorted(result.metrics)),
        NODE_KEY: node_id,
    }


def diverged_at(result: EpochResult, steps_per_epoch: int) -> bool:
    """Whether the loss blew up in this epoch: `run_trial` and `run_population` cut an epoch
    short (or end it with a NaN/inf mean loss) only then."""
    return result.step < result.epoch * steps_per_epoch or not math.isfinite(result.train_loss)


def parse_epoch(result: dict[str, Any]) -> EpochResult:
    """Inverse of `epoch_metrics`: the EpochResult inside a result Tune delivered."""
    names = [name for name in str(result.get(METRIC_NAMES_KEY, "")).split(",") if name]
    return EpochResult(
        epoch=int(result["epoch"]),
        step=int(result["step"]),
        lr=float(result["lr"]),
        train_loss=float(result["train_loss"]),
        val_loss=float(result["val_loss"]),
        metrics={name: float(result[name]) for name in names},
        elapsed_s=float(result["elapsed_s"]),
    )


class RecordResults(Callback):
    """Tune callback: trial start, every epoch and probe, checkpoints, restores, completion,
    pruning and errors go to the sink.

    A trial that ends before its epochs (the budget's `epochs`, or its config's: a
    horizon_halving rung's horizon) without having diverged was stopped by the scheduler
    (ASHA), hence "pruned"; unless the job was being cancelled, then it is "failed" with the
    reason. Trials the database already lists as finished (completed before a worker died, but
    after Tune's last experiment snapshot) are ignored: the trainable skips them too.
    """

    def __init__(self, *, job_key: str, epochs: int) -> None:
        self.job_key = job_key
        self.epochs = epochs
        self._started: set[str] = set()
        # Populations started (Tune trials of execution "population"); their members are trials.
        self._populations: set[str] = set()
        self._ignored: set[str] = set()
        self._diverged: set[str] = set()
        self._last_epoch: dict[str, int] = {}
        # Epochs of the trials that train fewer than the budget's (horizon_halving's rungs).
        self._epochs: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the experiment folder before anything ran: keep only the configuration.
        return {"job_key": self.job_key, "epochs": self.epochs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(job_key=state["job_key"], epochs=state["epochs"])  # type: ignore[misc]

    @property
    def sink(self) -> ResultSink:
        return sink_for(self.job_key)

    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self._ignored |= self.sink.finished_trial_keys()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = trial_key_of(trial)
        if key in self._ignored:
            return
        config = trial_config(trial)
        if "members" in config:
            self._start_members(key, config)
            return
        trial_id = self.sink.on_trial_start(
            key,
            policy=config["policy"],
            schedule=config.get("schedule") or {"policy": config["policy"]},
            search_config=recorded_point(config),
            seed=int(config["seed"]),
            node_id=None,
            phase=config.get("phase", "search"),
        )
        if trial_id is None:
            # The job was cancelled between Tune choosing the trial and starting it: nothing
            # is recorded, and the stopper ends it at its first result.
            self._ignored.add(key)
            return
        self._started.add(key)
        self._epochs[key] = config.get("epochs", self.epochs)

    def _start_members(self, key: str, config: TuneTrialConfig) -> None:
        """A population's start: each member not finished yet is a trial of its own, with the
        population and its data order in its search config."""
        members = [m for m in config.get("members") or [] if m["trial_key"] not in self._ignored]
        for member in members:
            member_key = member["trial_key"]
            trial_id = self.sink.on_trial_start(
                member_key,
                policy=member["policy"],
                schedule=member.get("schedule") or {"policy": member["policy"]},
                search_config={
                    **member["point"],
                    "population": key,
                    "shuffle_seed": config.get("shuffle_seed"),
                },
                seed=int(member["seed"]),
                node_id=None,
                phase=member.get("phase", "search"),
            )
            if trial_id is None:
                # Cancelled before it started, as for a lone trial: nothing more is recorded.
                self._ignored.add(key)
                return
            self._started.add(member_key)
            self._epochs[member_key] = member.get("epochs", self.epochs)
        self._populations.add(key)

    def _member_keys(self, trial: Any) -> list[str]:
        """The population's members still running here (recorded as started, not ended)."""
        members = trial_config(trial).get("members") or []
        return [m["trial_key"] for m in members if m["trial_key"] in self._started]

    def _record_members(self, result: dict[str, Any]) -> None:
        """A population's epoch: each member's epoch, probe and rung decision, and its end."""
        node_id = result.get(NODE_KEY)
        for news in result.get(MEMBERS_KEY) or ():
            key = news["trial_key"]
            if key not in self._started:
                continue
            if RESTORED_KEY in result:
                self.sink.on_trial_restored(key, epoch=int(result[RESTORED_KEY]))
            if news["epoch"] is not None:
                epoch = EpochResult.model_validate(news["epoch"])
                if epoch.epoch > self._last_epoch.get(key, 0):
                    self._last_epoch[key] = epoch.epoch
                    self.sink.on_epoch(key, epoch, node_id=node_id)
                    if news["probe"] is not None:
                        probe = ProbeResult.model_validate(news["probe"])
                        self.sink.on_probe(key, probe, decision=news["decision"])
            if news["status"] is not None:
                self._started.discard(key)
                self.sink.on_trial_end(key, status=news["status"], error=news["error"])

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        key = trial_key_of(trial)
        if key in self._populations:
            self._record_members(result)
            return
        if key in self._ignored or key not in self._started:
            return
        for branch in result.get(BRANCHES_KEY) or ():
            self._record_branch(trial, branch, node_id=result.get(NODE_KEY))
        if result.get(OUTCOME_KEY) == "diverged":
            self._diverged.add(key)
        if RESTORED_KEY in result:
            # Before the epoch check: a trial Tune restarted in this same run repeats epochs.
            self.sink.on_trial_restored(key, epoch=int(result[RESTORED_KEY]))
        if "epoch" not in result or int(result["epoch"]) <= self._last_epoch.get(key, 0):
            return  # the trial's closing result repeats its last epoch
        epoch = parse_epoch(result)
        self._last_epoch[key] = epoch.epoch
        self.sink.on_epoch(key, epoch, node_id=result.get(NODE_KEY))
        if PROBE_KEY in result:
            probe = ProbeResult.model_validate(result[PROBE_KEY])
            self.sink.on_probe(key, probe, decision=self._decision(epoch.epoch, result))

    def _record_branch(self, trunk: Any, branch: dict[str, Any], *, node_id: str | None) -> None:
        """A horizon forked from `trunk` and run to its end: a trial of its own, written whole
        (its start, every epoch of its curve, how it ended). Already recorded: nothing."""
        horizon = branch["horizon"]
        key = str(horizon["trial_key"])
        config = trunk.config
        trial_id = self.sink.on_trial_start(
            key,
            policy=config["policy"],
            schedule=horizon["schedule"] or {"policy": config["policy"]},
            search_config={
                **recorded_point(config),
                "horizon_epochs": horizon["epochs"],
                "fork_step": branch["fork_step"],
            },
            seed=int(config["seed"]),
            node_id=node_id,
        )
        if trial_id is None:
            return
        for data in branch["history"]:
            self.sink.on_epoch(key, EpochResult.model_validate(data), node_id=node_id)
        self.sink.on_trial_end(key, status=branch["status"], error=branch["error"])

    def _decision(self, epoch: int, result: dict[str, Any]) -> str:
        """What ASHA decided at this rung: Tune marks the result `done` when the scheduler stops
        the trial there (or the job is being cancelled, which is no rung decision)."""
        if result.get("done") and epoch < self.epochs and not self.sink.should_stop():
            return "stop"
        return "continue"

    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        key = trial_key_of(trial)
        if key in self._populations:
            for member in self._member_keys(trial):
                self.sink.on_checkpoint(member, epoch=self._last_epoch.get(member, 0))
            return
        if key in self._ignored or key not in self._started:
            return
        self.sink.on_checkpoint(key, epoch=self._last_epoch.get(key, 0))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = trial_key_of(trial)
        if key in self._populations:
            self._populations.discard(key)
            # Each member said how it ended with its last epoch; any left ended with the run.
            for member in self._member_keys(trial):
                self._started.discard(member)
                self._end_unreported(member)
            return
        if key in self._ignored or key not in self._started:
            return
        self._started.discard(key)
        self._end_unreported(key)

    def _end_unreported(self, key: str) -> None:
        """How a trial that ended without saying so ended: its epochs and the job tell."""
        if key in self._diverged:
            self.sink.on_trial_end(key, status="diverged", error=None)
        elif self._last_epoch.get(key, 0) >= self._epochs.get(key, self.epochs):
            self.sink.on_trial_end(key, status="completed", error=None)
        elif self.sink.should_stop():
            self.sink.on_trial_end(key, status="failed", error=CANCELLED_TRIAL_ERROR)
        else:
            self.sink.on_trial_end(key, status="pruned", error=None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = trial_key_of(trial)
        if key in self._populations:
            self._populations.discard(key)
            error = error_message(trial)
            for member in self._member_keys(trial):
                self._started.discard(member)
                self.sink.on_trial_end(member, status="failed", error=error)
            return
        if key in self._ignored:
            return
        self._started.discard(key)
        self.sink.on_trial_end(key, status="failed", error=error_message(trial))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # Trials still running when the experiment stops early were stopped by cancellation
        # (a worker that lost its lease leaves them to the worker that resumes the job).
        sink = self.sink
        if not self._started or not sink.should_stop() or getattr(sink, "lease_lost", False):
            return
        for key in sorted(self._started):
            sink.on_trial_end(key, status="failed", error=CANCELLED_TRIAL_ERROR)
        self._started.clear()


class WorkerStopping(RuntimeError):
    """Raised inside the job's Tune run when its worker stops and hands the job back."""


class EndRunOnHandBack(Callback):
    """Ends the Tune run at once when the job's worker is stopping, as a dying worker's run
    ends: no trial is stopped or marked finished, so the experiment's last snapshot has them
    running and the next worker resumes each from its latest checkpoint. (A Stopper would end
    them as terminated, which a restored run takes for finished.)"""

    def __init__(self, *, job_key: str) -> None:
        self.job_key = job_key

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if getattr(sink_for(self.job_key), "handed_back", False):
            raise WorkerStopping(f"job {self.job_key}: the worker is stopping")


class CancelStopper(Stopper):
    """Stops every trial, and the experiment, once the sink says the job must stop.

    Tune asks after every result and every loop step; the database is asked at most every
    `poll_s` seconds, and once the answer is yes it stays yes.
    """

    def __init__(self, *, job_key: str, poll_s: float = 0.5) -> None:
        self.job_key = job_key
        self.poll_s = poll_s
        self._stopped = False
        self._checked_at = -math.inf

    def __getstate__(self) -> dict[str, Any]:
        return {"job_key": self.job_key, "poll_s": self.poll_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(job_key=state["job_key"], poll_s=state["poll_s"])  # type: ignore[misc]

    def _should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stopped and now - self._checked_at >= self.poll_s:
            self._checked_at = now
            self._stopped = sink_for(self.job_key).should_stop()
        return self._stopped

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self._should_stop()

    def stop_all(self) -> bool:
        return self._should_stop()


def trial_key_of(trial: Any) -> str:
    """The stable key of a Tune trial: set by the searcher, the same after a restore."""
    return str(trial_config(trial)["trial_key"])


def error_message(trial: Any) -> str:
    """The last line of the trial's error (the exception and its message), else a fallback."""
    try:
        error = trial.get_error()
    except Exception:  # the error file may be gone; the status still matters more
        error = None
    text = str(error) if error is not None else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the trial failed (Ray Tune recorded no error message)"
    # The trainable's TrialError carries the cause as its message; its own name adds nothing.
    return lines[-1].removeprefix(f"{TRIAL_ERROR}: ")
