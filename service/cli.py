"""The `lrtune` command line: serve the API, manage the database, preview schedules."""

from __future__ import annotations

import contextlib
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from lrtune.client.commands import commands
from lrtune.client.terminal import err, fail, read_spec_file
from lrtune.schemas.tenants import TokenScope
from lrtune.service.settings import Settings
from pydantic import ValidationError
from rich.console import Console

app = typer.Typer(
    name="lrtune",
    help="Learning-rate schedule tuning: serve the API, run workers, preview schedules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
token_app = typer.Typer(
    help="API tokens and tenant limits (server side: talks to the database directly).",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
app.add_typer(commands)  # submit, jobs, status, watch, ...: the REST client commands

# The server's commands exit 2 when they cannot run (their input or the database is not usable),
# as click does for its own usage errors.
EXIT_CANNOT_RUN = 2

HostOption = Annotated[str, typer.Option(help="Interface to bind.")]
PortOption = Annotated[int, typer.Option(help="TCP port to listen on.")]


def main() -> None:
    app()


AccessLogOption = Annotated[
    bool,
    typer.Option(
        "--access-log", help="Log every request; by default successful GETs (polls) are not."
    ),
]


@app.command()
def api(
    host: HostOption = "127.0.0.1", port: PortOption = 8000, access_log: AccessLogOption = False
) -> None:
    """Serve the REST API and the dashboard (an empty or embedded database is migrated first)."""
    settings = Settings()
    _prepare_database(settings)
    _serve_api(settings, host=host, port=port, access_log=access_log)


CodePathOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--code-path",
        metavar="DIR",
        help="A folder of your code, importable by job entrypoints (repeatable; added to "
        "LRTUNE_CODE_PATH). Each job imports it afresh.",
        exists=True,
        file_okay=False,
        resolve_path=True,
    ),
]


def _with_code_paths(settings: Settings, code_paths: list[Path] | None) -> Settings:
    folders = [*settings.code_paths, *(str(path) for path in code_paths or [])]
    return settings.model_copy(update={"code_path": os.pathsep.join(folders) or None})


@app.command()
def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    code_path: CodePathOption = None,
    access_log: AccessLogOption = False,
) -> None:
    """Migrate an empty or embedded database, then run the API and one worker (quick start)."""
    import signal
    import subprocess
    import sys

    # The API's code paths are its worker's: it refuses an entrypoint from elsewhere at once.
    settings = _with_code_paths(Settings(), code_path).model_copy(
        update={"entrypoints_known": True}
    )
    _prepare_database(settings)
    # The worker is its own process, as in a deployment: Ray and the trials never share the
    # API's event loop, and stopping one does not take the other's state with it. It leads a
    # process group of its own (its local Ray included), which this process stops as a whole.
    environment = dict(os.environ)
    if settings.code_path:
        environment["LRTUNE_CODE_PATH"] = settings.code_path
    worker = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", "worker"],
        env=environment,
        start_new_session=True,
    )
    # uvicorn shuts down on SIGTERM or SIGINT, then raises the signal again with the handler it
    # found: the default one would end this process before the worker is stopped below.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda number, frame: None)
    try:
        _serve_api(settings, host=host, port=port, access_log=access_log)
    finally:
        _stop_worker(worker)


# How long `lrtune serve` waits for its worker to hand its job back and exit.
WORKER_GRACE_S = 60.0


def _stop_worker(worker: Any) -> None:
    """Stop `lrtune serve`'s worker as `lrtune worker` stops on SIGTERM (its running job handed
    back, its Ray shut down); past the grace period, kill its whole process group."""
    import signal
    import subprocess

    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=WORKER_GRACE_S)
        except subprocess.TimeoutExpired:
            err.print(f"the worker did not stop within {WORKER_GRACE_S:g} s; killing it")
    # Whatever of its group is left (a Ray process it started, or the worker itself).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Run at most one job, then exit.")] = False,
    worker_id: Annotated[str | None, typer.Option(help="Default: host:pid:random.")] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of a local Ray (default: the machine's).")
    ] = None,
    code_path: CodePathOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on this port (default: off).",
        ),
    ] = None,
) -> None:
    """Claim queued jobs and run them as Ray Tune experiments (joins RAY_ADDRESS if set)."""

    from lrtune.service.logs import configure_worker
    from lrtune.service.worker import run_worker
    from lrtune.workers.daemon import ensure_ray

    settings = _with_code_paths(Settings(), code_path)
    configure_worker(settings.log_format)
    _check_database(settings)
    # Ray first: a local Ray sets its own SIGTERM handler (it exits at once), which ours replace.
    ensure_ray(address=settings.ray_address, num_cpus=num_cpus)
    stop = _stop_on_signals()
    run_worker(
        settings,
        worker_id=worker_id,
        once=once,
        num_cpus=num_cpus,
        stop=stop,
        metrics_port=metrics_port,
    )


def _stop_on_signals() -> Any:
    """An event set by SIGTERM or SIGINT: the worker then hands its running job back (the next
    worker resumes it from its checkpoints) and exits, its local Ray shut down with it."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(number: int, frame: Any) -> None:
        # Only set the event: this runs between two bytecodes of whatever the main thread does.
        stop.set()

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, on_signal)
    # Ray Tune would take SIGINT for itself while a job runs, and end the run as finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    return stop


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to LRTUNE_DATABASE_URL."""
    from lrtune.service.errors import StorageError
    from lrtune.service.migrate import upgrade_to_head

    settings = Settings()
    try:
        revision = upgrade_to_head(settings.resolved_database_url)
    except StorageError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)
    typer.echo(f"database at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the head revision."""
    from lrtune.service.errors import StorageError
    from lrtune.service.migrate import current_revision, head_revision

    try:
        current = current_revision(Settings().resolved_database_url)
    except StorageError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)
    typer.echo(f"current: {current or 'empty (no schema)'}\nhead: {head_revision()}")


class ScopeChoice(StrEnum):
    """`token create --scope`'s choices: schemas.tenants.TOKEN_SCOPES, as Typer takes them."""

    read = "read"
    submit = "submit"
    code = "code"


@token_app.command("create")
def token_create(
    tenant: Annotated[str, typer.Option(help="The tenant the token acts for (made if new).")],
    label: Annotated[str, typer.Option(help="A note: whose token, what for.")] = "",
    scope: Annotated[
        ScopeChoice,
        typer.Option(
            help="What the token may do; each scope includes the ones before it. read: every "
            "GET and the previews; submit: also create and cancel jobs on built-in workloads; "
            "code: also jobs whose workload names an entrypoint (user code).",
        ),
    ] = ScopeChoice.submit,
) -> None:
    """Create a token for TENANT and print it once: only its SHA-256 is stored."""
    if not tenant.strip() or len(tenant) > 100:
        fail("--tenant must be 1 to 100 characters", code=EXIT_CANNOT_RUN)
    store = _store()
    try:
        record, token = store.create_token(
            tenant=tenant.strip(), label=label[:200], scope=cast(TokenScope, scope.value)
        )
    finally:
        store.dispose()
    err.print(
        f"token {record.id} for tenant {record.tenant!r}, scope {record.scope!r}; it is shown "
        "only this once:"
    )
    typer.echo(token)


@token_app.command("list")
def token_list() -> None:
    """Every token: id, tenant, label, scope, when created, revoked and last used (never the
    token)."""
    from rich.table import Table

    store = _store()
    try:
        tokens = store.list_tokens()
    finally:
        store.dispose()
    table = Table("id", "tenant", "label", "scope", "created", "revoked", "last used")
    for t in tokens:
        table.add_row(
            str(t.id),
            t.tenant,
            t.label,
            t.scope,
            _when(t.created_at),
            _when(t.revoked_at),
            _when(t.last_used_at),
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The id `token list` shows.")],
) -> None:
    """Revoke a token: requests bearing it answer 401 from now on."""
    from lrtune.service.errors import NotFoundError

    store = _store()
    try:
        record = store.revoke_token(token_id=token_id)
    except NotFoundError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)
    finally:
        store.dispose()
    typer.echo(f"token {record.id} of tenant {record.tenant!r} revoked")


@token_app.command("limits")
def token_limits(
    tenant: Annotated[str, typer.Option(help="The tenant whose limits to set.")],
    max_concurrent_jobs: Annotated[int | None, typer.Option(min=1)] = None,
    max_trials_per_job: Annotated[int | None, typer.Option(min=1)] = None,
    max_epochs: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Set a tenant's own limits; a limit left out falls back to the server's default."""
    from lrtune.schemas.tenants import TenantLimits
    from lrtune.service.errors import NotFoundError

    limits = TenantLimits(
        max_concurrent_jobs=max_concurrent_jobs,
        max_trials_per_job=max_trials_per_job,
        max_epochs=max_epochs,
    )
    store = _store()
    try:
        found = store.set_tenant_limits(name=tenant, limits=limits)
    except NotFoundError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)
    finally:
        store.dispose()
    typer.echo(f"tenant {found.name!r}: {found.limits.model_dump_json()}")


@app.command()
def preview(
    spec_file: Annotated[Path, typer.Argument(help="A schedule spec as JSON or YAML.")],
    steps: Annotated[int, typer.Option(min=1, help="Evaluate steps 0 .. steps-1.")],
    every: Annotated[int, typer.Option(min=1, help="Keep every n-th step.")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot here instead.")] = None,
) -> None:
    """Print a schedule's rate per step (tab-separated), or plot it to a PNG."""
    import numpy as np
    from lrtune.schemas.schedules import PreviewRequest
    from lrtune.workers.schedule_math import learning_rates

    data = read_spec_file(spec_file, code=EXIT_CANNOT_RUN)
    try:
        request = PreviewRequest(schedule=data, steps=steps, every=every)
    except ValidationError as error:
        fail(_validation_summary(error), code=EXIT_CANNOT_RUN)
    grid = np.arange(0, request.steps, request.every, dtype=np.int64)
    rates = learning_rates(request.schedule, grid)
    if plot is None:
        typer.echo("\n".join(f"{t}\t{lr:.10g}" for t, lr in zip(grid, rates, strict=True)))
        return
    _plot_schedule(grid, rates, title=request.schedule.policy, path=plot)
    err.print(f"wrote {plot}")


@app.command("run-trial")
def run_trial_command(
    config_file: Annotated[
        Path, typer.Argument(help="A trial config (JSON/YAML), or a list of them, run in order.")
    ],
    repeat: Annotated[int, typer.Option(min=1, help="Run the list this many times.")] = 1,
) -> None:
    """Train trials one after another in this process, with no Ray and no database.

    For debugging a workload or schedule, and as the plain-loop baseline of the worker benchmark.
    """
    import time

    from lrtune.schemas.trials import EpochResult, TrialConfig
    from lrtune.workers.trial import run_trials_sequentially

    data = read_spec_file(config_file, code=EXIT_CANNOT_RUN)
    items = data if isinstance(data, list) else [data]
    try:
        configs = [TrialConfig.model_validate(item) for item in items] * repeat
    except ValidationError as error:
        fail(_validation_summary(error), code=EXIT_CANNOT_RUN)

    def show_epoch(index: int, result: EpochResult) -> None:
        metrics = " ".join(f"{name}={value:.4g}" for name, value in result.metrics.items())
        typer.echo(
            f"trial {index} epoch {result.epoch} step {result.step} lr={result.lr:.4g} "
            f"train_loss={result.train_loss:.4g} val_loss={result.val_loss:.4g} {metrics}"
        )

    start = time.perf_counter()
    outcomes = run_trials_sequentially(configs, on_epoch=show_epoch)
    elapsed = time.perf_counter() - start
    for index, outcome in enumerate(outcomes):
        best = "n/a" if outcome.best_metric is None else f"{outcome.best_metric:.4g}"
        failure = f" error: {outcome.error}" if outcome.error else ""
        typer.echo(f"trial {index}: {outcome.status}, best {outcome.metric}={best}{failure}")
    typer.echo(f"{len(outcomes)} trials in {elapsed:.2f} s")
    if any(outcome.status == "failed" for outcome in outcomes):
        raise typer.Exit(1)


def _prepare_database(settings: Settings) -> None:
    from lrtune.service.errors import StorageError
    from lrtune.service.migrate import prepare_serving_database

    try:
        prepare_serving_database(settings)
    except StorageError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)


def _check_database(settings: Settings) -> None:
    from lrtune.service.errors import StorageError
    from lrtune.service.migrate import ensure_schema_current

    try:
        ensure_schema_current(settings.resolved_database_url)
    except StorageError as error:
        fail(error.message, code=EXIT_CANNOT_RUN)


def _serve_api(settings: Settings, *, host: str, port: int, access_log: bool = False) -> None:
    import gc

    import uvicorn
    from lrtune.service.app import create_app
    from lrtune.service.logs import api_log_config

    api = create_app(settings)
    # What start-up imported (FastAPI, pydantic, SQLAlchemy, numpy and scipy for recommendations:
    # some 160,000 objects) lives as long as the process. Frozen, it is out of the cyclic
    # collector's reach, so a full collection scans only what requests left behind instead of
    # pausing every request for 150-200 ms on a busy machine (the p99 of a page of trials).
    gc.collect()
    gc.freeze()
    log_config = api_log_config(settings.log_format, access_log=access_log)
    uvicorn.run(api, host=host, port=port, log_level="info", log_config=log_config)


def _store() -> Any:
    """The store over LRTUNE_DATABASE_URL, once its schema is at head."""
    from lrtune.service.store import Store

    settings = Settings()
    _check_database(settings)
    return Store.from_settings(settings)


def _when(moment: Any) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _validation_summary(error: ValidationError) -> str:
    from lrtune.service.app import field_path

    return "; ".join(
        f"{field_path(problem['loc'])}: {problem['msg']}" for problem in error.errors()
    )


def _plot_schedule(steps: Any, rates: Any, *, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    axes.plot(steps, rates, linewidth=1.2)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
