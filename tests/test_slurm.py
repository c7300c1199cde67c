"""Sweeps on a real one-node SLURM cluster (tests/slurm.py: Debian's slurm-wlm, started here,
MaxArraySize=5, no accounting): the README's command, a grid larger than MaxArraySize under
--export=NONE, a job cancelled and resumed, the launcher killed and run again, a time limit,
jobs no node can run."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import DATA_DIR, ROOT
from tests.slurm import cluster, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]  # one worker: see test_app
# The README's command, with 1 CPU a run so that 2 run at once on a 2-core node
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if why := unavailable():
        pytest.skip(why)
    host = os.uname().nodename.split(".")[0]
    short = f"PartitionName=short Nodes={host} MaxTime=1 State=UP"  # one minute at most
    with cluster(tmp_path_factory.mktemp("slurm"), "MaxArraySize=5", short) as env:
        yield env


def command(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hdr.train",
        "hparams_search=lr",
        *LAUNCHER,
        *overrides,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "+trainer.enable_progress_bar=false",
    ]


def launch(cmd: list[str], env: dict, **kw) -> subprocess.Popen:
    env = {**env, "HDR_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def submitted(proc: subprocess.Popen, runs: int) -> tuple[str, list[str]]:
    """The id of the array the launcher submitted, from its own words, and its lines so far."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if found := re.search(rf"SLURM array (\d+): {runs} runs", line):
            return found[1], lines
    pytest.fail("".join(lines)[-3000:])


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def board(tmp_path: Path) -> dict[str, str]:
    """Each run's status in the leaderboard, by its learning rate."""
    import csv

    with open(tmp_path / "sweep" / "leaderboard.csv") as f:
        return {r["overrides"].split()[0]: r["status"] for r in csv.DictReader(f)}


def pids(run: Path) -> set[int]:
    """The processes that wrote the run's TensorBoard events."""
    return {int(e.name.split(".")[-2]) for e in (run / "tensorboard").glob("events.*")}


def test_a_cancelled_job_is_a_failed_run_then_resumed_and_a_killed_launcher_trains_nothing_twice(
    slurm, tmp_path
):
    """6 runs on a cluster whose arrays hold 5 tasks: two arrays, one after the other, under
    --export=NONE: the jobs get none of the launcher's environment and no HDR_*, the folders
    are written into the job script. (`--export=PYTHONPYCACHEPREFIX` is NONE but for the
    tests' bytecode folder, which keeps the checkout clean.) Run #0 is cancelled."""
    lrs = ",".join(str(round(0.01 - 0.0015 * i, 4)) for i in range(6))
    cmd = command(
        tmp_path,
        f"model.lr={lrs}",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=20",
        "data.batch_size=512",
        "+hydra.launcher.additional_parameters={export:PYTHONPYCACHEPREFIX}",
        f"paths.data_dir={DATA_DIR}",
    )
    slurm = {k: v for k, v in slurm.items() if not k.startswith("HDR_")}
    first = launch(cmd, slurm)
    sweep = tmp_path / "sweep"
    array, lines = submitted(first, runs=5)
    deadline = time.monotonic() + 300
    while not list(sweep.glob("0_*/checkpoints/last.ckpt")):  # run #0 has done an epoch
        assert time.monotonic() < deadline and first.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.05)
    subprocess.run(["scancel", f"{array}_0"], env=slurm, check=True)
    out = "".join(lines) + finish(first)
    assert re.findall(r"SLURM array \d+: (\d+) runs", out) == ["5", "1"], out[-3000:]
    statuses = board(tmp_path)
    assert list(statuses.values()).count("ok") == 5, out[-3000:]
    assert statuses["model.lr=0.01"] == "failed"
    (run0,) = sweep.glob("0_*")
    error = json.loads((run0 / "result.json").read_text())["error"]
    assert error.startswith(f"cancelled by SLURM (scancel, or the job's owner) (job {array}_0)")
    assert "Leaderboard (6 runs, 0 pruned, 1 failed)" in out

    # The same command resumes the cancelled run from its last.ckpt, and only that one; its
    # launcher is killed (-9) while the job trains, and the same command run again at once
    # waits for that job rather than training the run a second time.
    second = launch(cmd, slurm, start_new_session=True)
    while not (run0 / "train.log").read_text().count("Resuming from"):
        assert second.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    out = finish(launch(cmd, slurm))
    assert out.count("finished before (ok): not submitted") in (5, 6), out[-3000:]
    assert set(board(tmp_path).values()) == {"ok"}
    result = json.loads((run0 / "result.json").read_text())
    assert result["epochs"] == 2 and len(pids(run0)) == 2  # the cancelled try, the resumed one
    assert result["pid"] in pids(run0)
    for run in sweep.glob("[1-5]_*"):
        assert pids(run) == {json.loads((run / "result.json").read_text())["pid"]}


def test_a_run_at_its_time_limit_is_listed_failed_saying_so(slurm, tmp_path):
    """SLURM warns a job before its time limit with the signal submitit asks for (USR2,
    hydra.launcher.signal_delay_s ahead); submitit takes it for the time limit when the job
    is in its last 10 minutes, so with timeout_min=5, always. SLURM checks time limits too
    coarsely to wait for one here: `scancel --signal=USR2` sends the same signal. The run
    saves its last.ckpt and is listed failed, saying why. (Further from the limit, submitit
    takes USR2 for preemption and requeues the job, which resumes from last.ckpt.) A sweep
    of one run goes as a plain job, not an array: the launcher still waits for it past its
    grace of GRACE_S."""
    from hdr.clusters.slurm import GRACE_S

    cmd = command(
        tmp_path,
        "model.lr=0.01",
        "trainer.max_epochs=1000",
        "+trainer.limit_train_batches=2",
        "callbacks.drawings.per_style=0",
        "hydra.launcher.timeout_min=5",
    )
    proc = launch(cmd, slurm)
    job, lines = submitted(proc, runs=1)
    deadline = time.monotonic() + GRACE_S + 5
    while time.monotonic() < deadline or not list(
        tmp_path.glob("sweep/0_*/checkpoints/last.ckpt")
    ):
        assert proc.poll() is None, "".join(lines)[-3000:]  # still waiting for its job
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm, check=True)
    out = "".join(lines) + finish(proc)
    assert "Leaderboard (1 runs, 0 pruned, 1 failed)" in out, out[-3000:]
    (run,) = tmp_path.glob("sweep/0_*")
    error = json.loads((run / "result.json").read_text())["error"]
    assert error.startswith("stopped at its SLURM time limit with its checkpoints/last.ckpt saved")
    assert "the same sweep command resumes it" in error


def test_a_time_limit_that_leaves_a_run_no_time_is_refused(tmp_path):
    cmd = command(tmp_path, "model.lr=0.01", "hydra.launcher.timeout_min=1")
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "hydra.launcher.timeout_min=1 leaves a run no time" in run.stderr
    assert "Give timeout_min above 3, or a smaller signal_delay_s" in run.stderr


def run_to_end(cmd: list[str], slurm: dict, timeout: float) -> subprocess.CompletedProcess:
    """The launcher run to its end, its output kept."""
    env = {**slurm, "HDR_DATA_DIR": str(DATA_DIR)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_job_no_node_can_run_is_refused_and_named(slurm, tmp_path):
    cmd = command(tmp_path, "model.lr=0.01,0.001", "hydra.launcher.cpus_per_task=64")
    run = run_to_end(cmd, slurm, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "partition debug can never run these jobs: each asks 64 CPUs" in run.stderr
    assert f"its largest node has {os.cpu_count()} CPUs" in run.stderr
    squeue = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True)
    assert squeue.stdout.strip() == ""  # nothing was submitted


def test_a_job_that_would_pend_for_ever_is_cancelled_and_named(slurm, tmp_path):
    """sbatch takes a job that asks more time than the partition allows, and SLURM keeps it
    pending for ever: the launcher cancels it and says why."""
    cmd = command(
        tmp_path,
        "model.lr=0.01,0.001",
        "hydra.launcher.partition=short",
        "hydra.launcher.timeout_min=5",
    )
    run = run_to_end(cmd, slurm, timeout=180)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    # SLURM 22.05 gives PartitionConfig as the reason; others give PartitionTimeLimit
    assert re.search(r"can never start \(Partition\w+\): it asks partition short", run.stderr)
    assert "1 CPUs, 2 GB, 0 GPUs and 5 minutes" in run.stderr
    squeue = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True)
    assert squeue.stdout.strip() == ""  # cancelled, not left pending


def test_a_run_of_two_slurm_tasks_is_one_ddp_run_that_task_0_records(slurm, tmp_path):
    """tasks_per_node=2, trainer=ddp_sim: SLURM starts both ranks (SLURM_PROCID), each running
    the run; task 1 joins it and never claims its folder (which would wait for task 0 for ever)."""
    quick = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    quick += ["+trainer.limit_test_batches=1", "callbacks.drawings.per_style=0"]
    cmd = command(tmp_path, "model.lr=0.01,0.02", "hydra.launcher.tasks_per_node=2", *quick)
    cmd += ["trainer=ddp_sim", "trainer.max_epochs=1", "data.batch_size=256"]
    run = run_to_end(cmd, slurm, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "sweep" / "leaderboard.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
    ranks = sorted((tmp_path / "sweep" / ".submitit").glob("*/*_1_log.err"))  # each task 1
    assert len(ranks) == 2 and all("GLOBAL_RANK: 1, MEMBER: 2/2" in p.read_text() for p in ranks)
