"""Deployment: the compose file, a real two-node Ray cluster, the README's cluster walk-through.

The Ray tests start their own cluster as separate `ray start` processes (a head and a second
node on loopback, one CPU each, their own ports and temp dirs, Ray token authentication on), each
in its own process group, so they can stop one node without touching any other Ray on this
machine (never `ray stop`, which stops them all). On failure they print the processes' logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import yaml
from lrtune.schemas.jobs import JobSpec, Trial
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.store import Store

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
POSTGRES_ENV = "LRTUNE_TEST_POSTGRES_URL"


# ---- docker-compose.yml and the Dockerfile -------------------------------------------------


def _compose(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
    empty = tmp_path / "empty.env"  # never a developer's own .env beside the file
    empty.write_text("")
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(
        [exe, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_accepts_the_file_and_it_deploys_what_the_issue_asks(
    tmp_path: Path,
) -> None:
    secrets_env = {"POSTGRES_PASSWORD": "pw-from-env", "RAY_AUTH_TOKEN": "token-from-env"}
    result = _compose(tmp_path, secrets_env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "migrate", "api", "ray-head", "ray-worker", "worker"}

    assert services["postgres"]["healthcheck"]["test"]
    assert any("pgdata" in str(volume) for volume in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["lrtune", "db", "upgrade"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    # One image everywhere, built from the one Dockerfile.
    lrtune_services = ["migrate", "api", "ray-head", "ray-worker", "worker"]
    assert {services[name]["image"] for name in lrtune_services} == {"lrtune:latest"}
    assert all("build" in services[name] for name in lrtune_services)

    # GPUs through the device reservation, scalable: no fixed name, no host port.
    worker_node = services["ray-worker"]
    (device,) = worker_node["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "container_name" not in worker_node and "ports" not in worker_node
    assert "--address=ray-head:6379" in worker_node["command"]

    # The daemon joins the head (as a node: a Ray driver must run on one), auth on, secrets
    # only from the environment, the same Ray token on every Ray process.
    worker = services["worker"]
    assert worker["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert "ray start --address=ray-head:6379" in " ".join(worker["command"])
    assert "lrtune worker --metrics-port 9100" in " ".join(worker["command"])
    assert [str(port) for port in worker["expose"]] == ["9100"]
    assert services["api"]["environment"]["LRTUNE_AUTH"] == "on"
    for name in ("migrate", "api", "worker"):
        assert "pw-from-env" in services[name]["environment"]["LRTUNE_DATABASE_URL"]
    for name in ("ray-head", "ray-worker", "worker"):
        assert services[name]["environment"]["RAY_AUTH_TOKEN"] == "token-from-env"
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"

    # One run storage for the daemon and the nodes that run trials (checkpoints and Tune's
    # state): a shared volume, named by LRTUNE_STORAGE.
    assert worker["environment"]["LRTUNE_STORAGE"] == "/var/lib/lrtune-runs"
    for name in ("worker", "ray-worker"):
        assert any(
            "lrtune-runs:/var/lib/lrtune-runs" in str(v) or "lrtune-runs" in str(v)
            for v in services[name]["volumes"]
        ), services[name]["volumes"]

    # No secret has a default: without them the file is refused, naming what is missing.
    for missing in secrets_env:
        partial = {k: v for k, v in secrets_env.items() if k != missing}
        refused = _compose(tmp_path, partial)
        assert refused.returncode != 0
        assert missing in refused.stderr


def test_dockerfile_is_multi_stage_non_root_and_keeps_secrets_out_of_the_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage"
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)", dockerfile, flags=re.IGNORECASE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git"} <= set(ignored)


# ---- a Ray cluster of separate processes -----------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _ray_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _node_args() -> tuple[list[str], int]:
    """`ray start` options giving one node of a one-machine cluster its own everything."""
    ports = _free_ports(16)
    temp_dir = tempfile.mkdtemp(prefix="lrtray-", dir="/tmp")  # Unix sockets: short paths
    args = [
        "--num-cpus=1",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        f"--node-manager-port={ports[0]}",
        f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
        f"--metrics-export-port={ports[5]}",
        f"--worker-port-list={','.join(map(str, ports[6:]))}",
    ]
    return args, ports[0]


@dataclass
class Process:
    """A process this test started in its own process group (a session), with its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    temp_dirs: list[str] = field(default_factory=list)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """`sig` to the group and to every descendant (Ray may give its workers their own
        process group; this must reach them too, or a "lost" node's trials run on)."""
        descendants = _descendants(self.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after a grace period."""
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"---- {self.name} ({self.log}) ----\n{text[-chars:]}"


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root`, from /proc (children before their parents' death)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _start(
    name: str, args: list[str], *, env: dict[str, str], logs: Path, cwd: Path = ROOT
) -> Process:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    temp_dirs = [a.split("=", 1)[1] for a in args if a.startswith("--temp-dir=")]
    return Process(name=name, popen=popen, log=log, temp_dirs=temp_dirs)


_NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({str(n["NodeManagerPort"]): n["NodeID"] for n in alive}))
"""


@dataclass
class Cluster:
    """A Ray head and a second node, each its own `ray start --block` process group."""

    address: str
    env: dict[str, str]
    head: Process
    node: Process
    head_id: str
    node_id: str


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = _ray_env(secrets.token_hex(32))
    gcs_port = _free_ports(1)[0]
    address = f"127.0.0.1:{gcs_port}"
    head_args, head_port = _node_args()
    node_args, node_port = _node_args()
    ray = str(BIN / "ray")
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    started: list[Process] = []
    try:
        started.append(
            _start(
                "ray-head",
                [
                    ray,
                    "start",
                    "--head",
                    f"--port={gcs_port}",
                    "--include-dashboard=false",
                    *common,
                    *head_args,
                ],
                env=env,
                logs=tmp_path,
            )
        )
        started.append(
            _start(
                "ray-node",
                [ray, "start", f"--address={address}", *common, *node_args],
                env=env,
                logs=tmp_path,
            )
        )
        probe = subprocess.run(
            [sys.executable, "-c", _NODES_SCRIPT, address, "120"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert probe.returncode == 0, probe.stderr[-3000:] + _tails(started)
        ids = json.loads(probe.stdout.strip().splitlines()[-1])
        assert set(ids) == {str(head_port), str(node_port)}, (ids, _tails(started))
        yield Cluster(
            address=address,
            env=env,
            head=started[0],
            node=started[1],
            head_id=ids[str(head_port)],
            node_id=ids[str(node_port)],
        )
    finally:
        for process in reversed(started):
            process.stop()


def _tails(processes: list[Process]) -> str:
    return "\n" + "\n".join(process.tail() for process in processes)


@pytest.fixture
def cluster_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """PostgreSQL (the deployment's database) when LRTUNE_TEST_POSTGRES_URL is set, else a
    SQLite file; migrated to head."""
    if not os.environ.get(POSTGRES_ENV):
        url = f"sqlite:///{tmp_path / 'cluster.db'}"
        upgrade_to_head(url)
        yield url
        return
    server = request.getfixturevalue("postgres_server")
    name = f"{server.prefix}_cluster_{uuid.uuid4().hex[:8]}"
    url = server.create(name)
    upgrade_to_head(url)
    yield url
    server.drop(name)


def _job_state(store: Store, job_id: int) -> str:
    job = store.get_job(job_id)
    rows = [(t.id, t.policy, t.status, t.epochs_done, t.node_id) for t in _trials(store, job_id)]
    return f"job {job.status} {job.error or ''}; trials {rows}"


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


# A small CNN on digits: about a second an epoch, so there is time to stop a node mid-trial.
EPOCHS = 6


@pytest.mark.ray
@pytest.mark.cluster
def test_jobs_spread_over_two_ray_nodes_and_finish_on_the_head_when_one_is_lost(
    two_node_cluster: Cluster, cluster_database_url: str, tmp_path: Path
) -> None:
    cluster = two_node_cluster
    store = Store.from_url(cluster_database_url)
    env = {
        **cluster.env,
        "RAY_ADDRESS": cluster.address,
        "LRTUNE_DATABASE_URL": cluster_database_url,
        "LRTUNE_HOME": str(tmp_path / "home"),
        # Both nodes are on this machine, so LRTUNE_HOME/ray is the shared storage a cluster
        # needs; a checkpoint after every epoch.
        "LRTUNE_CHECKPOINT_EVERY_EPOCHS": "1",
    }
    worker = _start(
        "lrtune-worker",
        [str(BIN / "lrtune"), "worker", "--worker-id", "cluster-test"],
        env=env,
        logs=tmp_path,
    )
    processes = [cluster.head, cluster.node, worker]

    def finished(job_id: int) -> bool:
        if worker.popen.poll() is not None:
            raise AssertionError(
                "the worker exited: " + _job_state(store, job_id) + _tails(processes)
            )
        return store.get_job(job_id).status not in {"queued", "running"}

    try:
        # 1. Two trials at once, one CPU per trial and per node: one trial on each node.
        spread, _ = store.create_job(spec=_cluster_spec(["fixed", "cosine"]))
        wait_until(lambda: finished(spread.id), timeout=180, what="the first job")
        assert store.get_job(spread.id).status == "succeeded", _job_state(store, spread.id)
        trials = _trials(store, spread.id)
        assert [t.status for t in trials] == ["completed", "completed"]
        assert {t.node_id for t in trials} == {cluster.head_id, cluster.node_id}, (
            "both nodes ran a trial: " + _job_state(store, spread.id)
        )

        # 2. The second node is lost mid-trial: that trial goes on on the head from its latest
        # checkpoint, the job completes.
        job, _ = store.create_job(spec=_cluster_spec(["fixed", "cosine", "exponential"]))
        victim: list[Trial] = []

        def second_node_mid_trial() -> bool:
            if finished(job.id):
                raise AssertionError(
                    "the job ended before the second node could be stopped mid-trial: "
                    + _job_state(store, job.id)
                )
            victim[:] = [
                t
                for t in _trials(store, job.id)
                if t.node_id == cluster.node_id
                and t.status == "running"
                # Two epochs stored: the checkpoint of the first is in Tune's hands for sure.
                and 2 <= t.epochs_done <= EPOCHS - 2
            ][:1]
            return bool(victim)

        wait_until(
            second_node_mid_trial,
            timeout=180,
            what="a trial mid-way on the second node",
            logs=lambda: _tails(processes),
        )
        cluster.node.kill()  # the node is lost: its raylet and trial processes die at once
        wait_until(
            lambda: finished(job.id), timeout=240, what="the job", logs=lambda: _tails(processes)
        )

        final = store.get_job(job.id)
        assert final.status == "succeeded", (final.error, _tails(processes))
        trials = _trials(store, job.id)
        assert len(trials) == 3
        assert all(t.status == "completed" for t in trials), _job_state(store, job.id)
        assert all(t.epochs_done == EPOCHS for t in trials)
        (retried,) = [t for t in trials if t.id == victim[0].id]
        assert retried.node_id == cluster.head_id, _job_state(store, job.id)
        assert retried.restored_from_epoch is not None, _job_state(store, job.id)
        assert 1 <= retried.restored_from_epoch < EPOCHS
        epochs = [m.epoch for m in store.list_trial_metrics(trial_id=retried.id)]
        assert epochs == list(range(1, EPOCHS + 1))
    finally:
        worker.stop()
        store.dispose()


def _cluster_spec(policies: list[str]) -> JobSpec:
    # About a second per epoch (a CNN at batch size 1), so a trial is seen mid-way on the second
    # node however quiet the machine; small rates, so no trial diverges and ends early.
    return JobSpec.model_validate(
        {
            "workload": {"name": "digits", "params": {"model": "cnn", "batch_size": 1}},
            "policies": [
                {"policy": policy, "search": {"lr": {"loguniform": [0.0005, 0.003]}}}
                for policy in policies
            ],
            "budget": {"epochs": EPOCHS, "trials_per_policy": 1, "max_concurrent_trials": 2},
            "resources_per_trial": {"cpu": 1, "gpu": 0},
            "search": {"algorithm": "random", "seed": 0},
        }
    )


# ---- the README's cluster walk-through, command by command ----------------------------------


def _readme_walkthrough() -> tuple[str, list[str]]:
    """The shell and SQL blocks between the README's cluster-walkthrough markers."""
    text = README.read_text()
    begin, end = "<!-- cluster-walkthrough:begin -->", "<!-- cluster-walkthrough:end -->"
    assert begin in text and end in text, "README lost its cluster walk-through markers"
    region = text[text.index(begin) : text.index(end)]
    shell = re.findall(r"```sh\n(.*?)```", region, flags=re.DOTALL)
    sql = re.findall(r"```sql\n(.*?)```", region, flags=re.DOTALL)
    assert len(shell) >= 5 and len(sql) >= 3
    return "\n".join(shell), sql


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.postgres
def test_readme_cluster_walkthrough_runs_as_written(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shell, queries = _readme_walkthrough()
    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    server = request.getfixturevalue("postgres_server")  # skips where PostgreSQL is unset
    name = f"{server.prefix}_walkthrough_{uuid.uuid4().hex[:8]}"
    database_url = server.create(name)  # empty: the walk-through migrates it
    head_args, _ = _node_args()
    node_args, _ = _node_args()
    env = _ray_env("unused")
    del env["RAY_AUTH_TOKEN"]  # the walk-through sets it from CLUSTER_TOKEN
    env.update(
        CLUSTER_TOKEN=secrets.token_hex(32),
        DATABASE_URL=database_url,
        HEAD_IP="127.0.0.1",
        RAY_PORT=str(_free_ports(1)[0]),
        LRTUNE_PORT=str(_free_ports(1)[0]),
        # The README's head command says --num-gpus=0 itself.
        RAY_HEAD_ARGS=" ".join(a for a in head_args if a != "--num-gpus=0"),
        RAY_NODE_ARGS=" ".join(node_args),
        LRTUNE_HOME=str(tmp_path / "home"),
    )
    for key in ("LRTUNE_URL", "LRTUNE_TOKEN", "LRTUNE_DATABASE_URL", "LRTUNE_AUTH"):
        env.pop(key, None)
    # Run where the README runs it, a checkout (for examples/), without writing logs into ours.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / "examples").symlink_to(ROOT / "examples")
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + shell)
    run = _start("walkthrough", ["bash", str(script)], env=env, logs=tmp_path, cwd=workdir)
    run.temp_dirs = [a.split("=", 1)[1] for a in head_args + node_args if "--temp-dir=" in a]
    try:
        try:
            returncode = run.popen.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError("the walk-through did not finish" + _tails([run])) from None
        logs = _tails([run]) + "\n" + _worker_logs(workdir)
        assert returncode == 0, logs
        output = run.log.read_text()
        assert re.search(r"job \d+ succeeded", output), logs
        with psycopg.connect(database_url) as connection:
            (job_id,) = connection.execute("SELECT max(id) FROM jobs").fetchone() or (None,)
            nodes = connection.execute(
                "SELECT DISTINCT node_id FROM trials WHERE job_id = %s", (job_id,)
            ).fetchall()
            assert len(nodes) == 2, ("the smoke job ran on both nodes", nodes, logs)
            for query in queries:
                rows = connection.execute(query).fetchall()
                assert rows, f"no rows from the README query:\n{query}"
            best = connection.execute(queries[0]).fetchall()
            assert {row[0] for row in best} == {"fixed", "cosine"}
    finally:
        run.stop()
        server.drop(name)


def _worker_logs(directory: Path) -> str:
    parts = []
    for name in ("lrtune-worker.log", "lrtune-api.log"):
        path = directory / name
        if path.exists():
            parts.append(f"---- {name} ----\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)
