"""The `lrtune` commands that talk to a running service over REST (submit, jobs, watch, ...).

The service's URL comes from --url or LRTUNE_URL, a bearer token from LRTUNE_TOKEN. An error
answer of the API is printed as one red line on stderr and the command exits with status 1.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from lrtune.client.api import DEFAULT_URL, ApiError, LrtuneClient
from lrtune.client.terminal import err, fail, read_spec_file
from lrtune.schemas.jobs import (
    FINISHED_JOB_STATUSES,
    FINISHED_TRIAL_STATUSES,
    TRIAL_STATUSES,
    Job,
    JobProgress,
    JobTimeline,
)
from lrtune.schemas.recommendations import mean_and_spread
from lrtune.schemas.tenants import TokenRef
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

commands = typer.Typer(no_args_is_help=True)

out = Console(highlight=False)
# The client's commands exit 1 on any error they report (the service refused, the job failed, a
# file could not be read); click's own usage errors exit 2.
EXIT_FAILED = 1

UrlOption = Annotated[
    str, typer.Option("--url", envvar="LRTUNE_URL", help="The lrtune service's base URL.")
]
JobArgument = Annotated[int, typer.Argument(help="The job's id.", show_default=False)]
TrialArgument = Annotated[int, typer.Argument(help="The trial's id.", show_default=False)]
# In the order the summary prints them.
FINISHED_TRIALS = tuple(s for s in TRIAL_STATUSES if s in FINISHED_TRIAL_STATUSES)


class RecommendFormat(StrEnum):
    text = "text"
    json = "json"
    torch = "torch"
    keras = "keras"
    huggingface = "huggingface"


# The recommendation's code key and a reader's name for each format that prints code.
_CODE_FORMATS = {
    RecommendFormat.torch: ("pytorch", "PyTorch"),
    RecommendFormat.keras: ("keras", "Keras"),
    RecommendFormat.huggingface: ("huggingface", "Hugging Face"),
}


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@commands.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="A job spec as YAML or JSON.")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="Send again with the same key: no duplicate job.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Submit a job spec; prints the new job's id."""
    spec = _read_job_file(job_file)
    with _client(url) as client:
        job = client.submit_job(spec, idempotency_key=idempotency_key)
    typer.echo(job.id)


@commands.command()
def jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Jobs per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List jobs, newest first."""
    with _client(url) as client:
        page = client.list_jobs(status=status, limit=limit, cursor=cursor)
    table = Table("id", "name", "status", "trials", "best", "created", box=None)
    for job in page.items:
        best = f"{_best_value(job)} ({_best_label(job)})" if job.best else "-"
        table.add_row(
            str(job.id),
            job.name or "-",
            _status_text(job.status),
            _progress_text(job.progress),
            best,
            f"{job.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table if page.items else "no jobs")
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


@commands.command()
def status(
    job_id: JobArgument,
    timeline: Annotated[
        bool,
        typer.Option(
            "--timeline", help="Also where its time went: each phase, each trial's start-up."
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show one job: status, trials by status, best so far (and with --timeline its phases)."""
    with _client(url) as client:
        job = client.get_job(job_id)
        found = client.job_timeline(job_id) if timeline else None
    spec = job.spec
    table = Table(box=None, show_header=False)
    table.add_row("job", f"{job.id} {job.name}".strip())
    table.add_row("status", _status_text(job.status))
    table.add_row("workload", spec.workload.label)
    table.add_row("metric", f"{spec.metric_name} ({spec.metric_mode})")
    table.add_row("policies", ", ".join(p.policy for p in spec.policies) or "-")
    counts = job.progress.model_dump()
    table.add_row(
        "trials",
        f"{_progress_text(job.progress)}  "
        + "  ".join(f"{name} {counts[name]}" for name in ("running", "pending", *FINISHED_TRIALS)),
    )
    if job.best is not None:
        table.add_row("best", f"{_best_value(job)}  {_best_label(job)}, trial {job.best.trial_id}")
    table.add_row("created", f"{job.created_at:%Y-%m-%d %H:%M:%S %Z}")
    if job.submitted_by is not None:
        table.add_row("submitted by", _token_text(job.submitted_by))
    if job.cancelled_by is not None:
        table.add_row("cancelled by", _token_text(job.cancelled_by))
    if job.finished_at is not None:
        table.add_row("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S %Z}")
    if job.error:
        table.add_row("error", f"[red]{job.error}[/red]")
    out.print(table)
    if found is not None:
        _print_timeline(found)


def _print_timeline(timeline: JobTimeline) -> None:
    """The job's phases with their seconds and share of the whole, then each trial's start-up
    and busy seconds."""
    out.print()
    if not timeline.phases:
        out.print("no timeline: the job was stored before lrtune recorded one")
    else:
        total = timeline.phases_s
        phases = Table("phase", "started", "seconds", "share", "worker", box=None)
        for phase in timeline.phases:
            running = " (running)" if phase.ended_at is None else ""
            phases.add_row(
                phase.phase + running,
                f"{phase.started_at:%H:%M:%S}",
                f"{phase.seconds:.2f}",
                _share(phase.seconds, total),
                phase.worker_id or "-",
            )
        phases.add_row("[b]total[/b]", "", f"[b]{total:.2f}[/b]", _share(total, total), "")
        out.print(phases)
        if timeline.wall_clock_s is not None:
            out.print(f"job wall-clock (submitted to finished): {timeline.wall_clock_s:.2f} s")
    if not timeline.trials:
        return
    out.print()
    trials = Table(
        "trial",
        "policy",
        "phase",
        "status",
        "epochs",
        "start-up s",
        "busy s",
        "of it first epoch s",
        "wall s",
        box=None,
    )
    for trial in timeline.trials:
        trials.add_row(
            str(trial.trial_id),
            trial.policy,
            trial.phase,
            _status_text(trial.status),
            str(trial.epochs_done),
            _seconds(trial.start_up_s),
            _seconds(trial.busy_s),
            _seconds(trial.first_epoch_s),
            _seconds(trial.wall_s),
        )
    trials.add_row(
        "[b]total[/b]",
        f"{len(timeline.trials)} trials",
        "",
        "",
        "",
        f"[b]{timeline.trials_start_up_s:.2f}[/b]",
        f"[b]{timeline.trials_busy_s:.2f}[/b]",
        "",
        "",
    )
    out.print(trials)


@commands.command()
def watch(
    job_id: JobArgument,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls.")] = 2.0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Follow a job until it ends: a live progress bar of trials and the best so far.

    Exits 0 when the job succeeded, 1 when it failed or was cancelled.
    """
    with _client(url) as client:
        job = client.get_job(job_id)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=out, transient=False) as progress:
            task = progress.add_task(f"job {job_id}", total=None, detail="")
            while True:
                done, total = _finished_and_total(job.progress)
                progress.update(task, completed=done, total=total, detail=_watch_detail(job))
                if job.status in FINISHED_JOB_STATUSES:
                    break
                time.sleep(interval)
                job = client.get_job(job_id)
    if job.status != "succeeded":
        reason = f": {job.error}" if job.error else ""
        fail(f"job {job_id} {job.status}{reason}", code=EXIT_FAILED)
    best = f"; best {_best_value(job)} ({_best_label(job)})" if job.best else ""
    out.print(f"job {job_id} succeeded{best}")


@commands.command()
def trials(
    job_id: JobArgument,
    policy: Annotated[str | None, typer.Option(help="Only this policy's trials.")] = None,
    status: Annotated[str | None, typer.Option(help="Only trials in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Trials per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List a job's trials, newest first."""
    with _client(url) as client:
        page = client.list_trials(job_id, policy=policy, status=status, limit=limit, cursor=cursor)
    table = Table("id", "policy", "status", "epochs", "last", "best", "seed", box=None)
    for trial in page.items:
        table.add_row(
            str(trial.id),
            trial.policy,
            _status_text(trial.status),
            str(trial.epochs_done),
            _number(trial.last_metric),
            _number(trial.best_metric),
            str(trial.seed),
        )
    out.print(table if page.items else "no trials")
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


@commands.command()
def probes(trial_id: TrialArgument, url: UrlOption = DEFAULT_URL) -> None:
    """List a trial's cooldown probes: what it reached annealed at each rung, and the decision."""
    with _client(url) as client:
        found = client.trial_probes(trial_id)
    names = sorted({name for probe in found for name in probe.metrics})
    table = Table(
        "epoch", "step", "cooldown steps", "train_loss", "val_loss", *names, "decision", box=None
    )
    for probe in found:
        table.add_row(
            str(probe.epoch),
            str(probe.step),
            str(probe.cooldown_steps),
            _number(probe.train_loss),
            _number(probe.val_loss),
            *(_number(probe.metrics.get(name)) for name in names),
            _decision_text(probe.decision),
        )
    out.print(table if found else f"trial {trial_id} has no probes")


@commands.command()
def recommend(
    job_id: JobArgument,
    output: Annotated[
        RecommendFormat,
        typer.Option(
            "--format",
            help="text: a summary; json: the whole object; torch, keras, huggingface: code "
            "(a first line says when that format cannot give exactly lrtune's rates).",
        ),
    ] = RecommendFormat.text,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show the job's recommended schedule, its rationale, or its code (PyTorch, Keras, HF)."""
    with _client(url) as client:
        found = client.recommendation(job_id)
    if output is RecommendFormat.json:
        typer.echo(found.model_dump_json(indent=2))
        return
    if output in _CODE_FORMATS:
        key, name = _CODE_FORMATS[output]
        code = found.code.get(key)
        if not code:
            fail(f"job {job_id}'s recommendation has no {name} code", code=EXIT_FAILED)
        typer.echo(code.rstrip("\n"))
        return
    state = "final" if found.final else "provisional: the job is still running"
    out.print(f"[bold]Recommendation for job {job_id}[/bold] ({state})")
    if found.winner is not None:
        winner = found.winner
        out.print(
            f"winner: [bold]{winner.policy}[/bold]  {found.metric} "
            f"{mean_and_spread(winner.metric_mean, winner.metric_std)} "
            f"over {winner.n_seeds} seed(s)"
        )
        out.print(f"schedule: {winner.schedule.model_dump_json()}")
    table = Table("policy", f"{found.metric} ({found.mode})", "seeds", box=None)
    for evidence in found.by_policy:
        table.add_row(
            evidence.policy,
            mean_and_spread(evidence.metric_mean, evidence.metric_std),
            str(evidence.n_seeds),
        )
    if found.by_policy:
        out.print(table)
    out.print(found.rationale)


@commands.command()
def cancel(job_id: JobArgument, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a job: no new trial starts; running ones are stopped."""
    with _client(url) as client:
        job = client.cancel_job(job_id)
    out.print(f"job {job_id} is {job.status}")


@commands.command("range-test")
def range_test(
    job_id: JobArgument,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="text: the bounds and a table; json: all.")
    ] = OutputFormat.text,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show a job's LR range test: the suggested bounds and the loss against the rate."""
    with _client(url) as client:
        result = client.range_test(job_id)
    if output is OutputFormat.json:
        typer.echo(result.model_dump_json(indent=2))
        return
    hint = result.suggestion
    out.print(
        f"[bold]suggested bounds[/bold]: min_lr {hint.min_lr:.3g} ({hint.min_method}), "
        f"max_lr {hint.max_lr:.3g} ({hint.max_method})"
    )
    extras = [
        f"{name} {value:.3g}"
        for name, value in (
            ("valley", hint.valley),
            ("steep", hint.steep),
            ("minimum", hint.minimum),
        )
        if value is not None
    ]
    if extras:
        out.print("fastai's suggestions: " + ", ".join(extras))
    stopped = ", stopped early: the loss diverged" if result.stopped_early else ""
    out.print(f"{result.iterations} steps, {result.ramp} ramp{stopped}")
    table = Table("lr", "loss", "smoothed", box=None)
    count = len(result.lr)
    for index in sorted({round(i * (count - 1) / 11) for i in range(12)} if count else set()):
        table.add_row(
            f"{result.lr[index]:.3g}",
            _number(result.loss[index]),
            _number(result.smoothed_loss[index]),
        )
    out.print(table)


@commands.command()
def best(
    workload: Annotated[str | None, typer.Option(help="Only this workload.")] = None,
    policy: Annotated[str | None, typer.Option(help="Only this policy.")] = None,
    metric: Annotated[str | None, typer.Option(help="Only this metric.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """The best setting of each (workload, policy) across finished jobs."""
    with _client(url) as client:
        found = client.best(workload=workload, policy=policy, metric=metric)
    table = Table("workload", "policy", "metric", "value", "job", "trial", "schedule", box=None)
    for setting in found:
        table.add_row(
            setting.workload,
            setting.policy,
            f"{setting.metric} ({setting.mode})",
            _number(setting.value),
            str(setting.job_id),
            str(setting.trial_id),
            json.dumps(setting.schedule),
        )
    out.print(table if found else "no finished job yet")


@commands.command()
def whoami(url: UrlOption = DEFAULT_URL) -> None:
    """Who LRTUNE_TOKEN acts as: its tenant, the token's id and label, its scope and rights."""
    with _client(url) as client:
        caller = client.whoami()
    table = Table(box=None, show_header=False)
    table.add_row("tenant", caller.tenant)
    token = "none: this server runs with LRTUNE_AUTH=off"
    table.add_row("token", token if caller.token is None else _token_text(caller.token))
    table.add_row("scope", caller.scope)
    table.add_row("rights", ", ".join(caller.rights))
    out.print(table)


# ---- helpers ----------------------------------------------------------------------------------


@contextmanager
def _client(url: str) -> Iterator[LrtuneClient]:
    """A client for `url`; an ApiError becomes one red line on stderr and exit status 1."""
    try:
        with LrtuneClient(url, token=os.environ.get("LRTUNE_TOKEN") or None) as client:
            yield client
    except ApiError as error:
        status = f" (HTTP {error.status})" if error.status else ""
        fail(f"{error.message}{status}", code=EXIT_FAILED)


def _token_text(token: TokenRef) -> str:
    return f"{token.label} (token {token.id})" if token.label else f"token {token.id}"


def _read_job_file(path: Path) -> dict[str, Any]:
    data = read_spec_file(path, code=EXIT_FAILED)
    if not isinstance(data, dict):
        fail(
            f"{path} must hold one job spec (a mapping), not {type(data).__name__}",
            code=EXIT_FAILED,
        )
    return data


def _finished_and_total(progress: JobProgress) -> tuple[int, int]:
    counts = progress.model_dump()
    done = sum(counts[name] for name in FINISHED_TRIALS)
    known = done + progress.running + progress.pending
    return done, max(progress.planned, known)


def _progress_text(progress: JobProgress) -> str:
    done, total = _finished_and_total(progress)
    return f"{done}/{total}"


def _watch_detail(job: Job) -> str:
    parts = [job.status]
    if job.progress.running:
        parts.append(f"{job.progress.running} running")
    if job.best is not None:
        parts.append(f"best {job.spec.metric_name} {_best_value(job)} ({_best_label(job)})")
    return "  ".join(parts)


def _best_value(job: Job) -> str:
    """The leader's mean (± its spread over seeds), as the recommendation prints it."""
    assert job.best is not None
    return mean_and_spread(job.best.value, job.best.std)


def _best_label(job: Job) -> str:
    """The leader's policy, with the horizon it was judged at while no trial has trained the
    whole budget (horizon_halving)."""
    assert job.best is not None
    horizon = job.best.horizon_epochs
    if horizon is None:
        return job.best.policy
    return f"{job.best.policy} at {horizon} of {job.spec.budget.epochs} epochs"


def _status_text(status: str) -> str:
    colour = {
        "succeeded": "green",
        "completed": "green",
        "running": "cyan",
        "failed": "red",
        "diverged": "red",
        "cancelled": "yellow",
        "cancelling": "yellow",
        "pruned": "yellow",
    }.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


def _decision_text(decision: str | None) -> str:
    if decision is None:
        return "-"
    colour = "green" if decision == "continue" else "yellow"
    return f"[{colour}]{decision}[/{colour}]"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"
