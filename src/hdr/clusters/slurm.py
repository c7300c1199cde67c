"""hdr's SLURM launcher for Hydra (`hydra/launcher=slurm`): hydra-submitit-launcher's, made to
hold on a real cluster. It refuses jobs no node of the partition could run, submits a grid in
arrays no larger than the cluster's MaxArraySize (one at a time, so array_parallelism holds),
submits no run that already finished, and waits by asking scontrol, not sacct (which needs
accounting): a job that SLURM cancels, times out or preempts becomes a failed run in the
leaderboard, and the sweep goes on. Hydra finds it through src/hydra_plugins/."""

import logging
import math
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import HydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit
from omegaconf import OmegaConf, open_dict
from submitit.core.utils import pickle_load

from hdr.runs.records import FINISHED, read_result, same_run, scan, write_result

log = logging.getLogger(__name__)

WAITING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"}
GRACE_S = 15  # a job gone from SLURM gets this long for its result file to show up
POLL_S = 2.0
# Pending reasons no waiting clears: the job asks what the partition can never give.
NEVER = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionDown"}
NEVER |= {"PartitionInactive", "BadConstraints", "InvalidAccount", "InvalidQOS"}
ENDED = {
    "CANCELLED": "cancelled by SLURM (scancel, or the job's owner)",
    "TIMEOUT": "stopped by SLURM at its time limit (hydra.launcher.timeout_min)",
    "PREEMPTED": "preempted by SLURM",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "out of memory (raise hydra.launcher.mem_gb)",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "stopped by SLURM at its deadline",
    "FAILED": "its SLURM job failed",
}


def ask(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HydraException(
            f"`{' '.join(cmd)}` did not answer ({e}): is SLURM reachable?"
        ) from None
    if done.returncode != 0:
        raise HydraException(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def check_request(params: dict) -> int:
    """Refuse, before sbatch, what SLURM could never run; return MaxArraySize (its default
    1001: task ids 0 to 1000)."""
    timeout, delay = params.get("timeout_min"), params.get("signal_delay_s") or 0
    if timeout is not None and timeout * 60 <= delay + 60:  # SLURM warns up to 60 s early too
        raise HydraException(
            f"hydra.launcher.timeout_min={timeout:g} leaves a run no time: SLURM warns each job "
            f"hydra.launcher.signal_delay_s={delay:g} s before its time limit, up to 60 s earlier "
            "still, and the run stops at the warning to save its last.ckpt. Give timeout_min "
            f"above {(delay + 60) / 60:g}, or a smaller signal_delay_s."
        )
    partition, args = params.get("partition"), ["sinfo", "-h", "-o", "%P|%c|%m|%G"]
    rows = [r.split("|") for r in ask(*args, *(["-p", partition] if partition else [])).split()]
    rows = rows if partition else [r for r in rows if r[0].endswith("*")]
    if not rows:
        known = sorted({r.split("|")[0].rstrip("*") for r in ask(*args).split()})
        raise HydraException(
            f"SLURM has no partition {partition!r}: set hydra.launcher.partition to one of "
            f"{', '.join(known) or '(none: is slurmctld running?)'}."
        )

    def gpus(gres: str) -> int:  # e.g. "gpu:a100:4(S:0-1)" or "(null)"
        counts = [p.split("(")[0].rsplit(":", 1)[-1] for p in gres.split(",") if "gpu" in p]
        return max((int(c) for c in counts if c.isdigit()), default=0)

    have = (
        max(int(r[1].rstrip("+")) for r in rows),
        max(int(r[2].rstrip("+")) for r in rows) / 1024,
        max(gpus(r[3]) for r in rows),
    )
    want = (
        params.get("cpus_per_task") or 1,
        params.get("mem_gb") or 0,
        params.get("gpus_per_node") or 0,
    )
    if any(w > h for w, h in zip(want, have, strict=True)):
        raise HydraException(
            f"partition {rows[0][0].rstrip('*')} can never run these jobs: each asks {want[0]} "
            f"CPUs, {want[1]:g} GB and {want[2]} GPUs, its largest node has {have[0]} CPUs, "
            f"{have[1]:.1f} GB and {have[2]} GPUs. Lower hydra.launcher.cpus_per_task, mem_gb "
            "or gpus_per_node, or choose another hydra.launcher.partition (sinfo)."
        )
    for line in ask("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(1, int(value))
    return 1001


def states(array_id: str) -> dict[str, tuple[str, str]]:
    """The state and reason of each task of a job array by job id ("123_4"), while SLURM
    remembers them; a pending range ("123_[5-9%2]") task by task. An array of one run is a
    plain job: "123"."""
    try:
        out = ask("scontrol", "-o", "show", "job", array_id)
    except HydraException:  # forgotten (purged after MinJobAge) or not yet known
        return {}
    found = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task, state = (
            fields.get("ArrayTaskId"),
            (fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")),
        )
        if task is None:
            found[fields.get("JobId", array_id)] = state
        for part in (task or "").split("%")[0].split(","):  # "4", "5-9", "1,3-4"
            first, _, last = part.partition("-")
            if first.isdigit():
                found |= {
                    f"{array_id}_{i}": state for i in range(int(first), int(last or first) + 1)
                }
    return found


class SlurmLauncher(Submitit):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        partition = self.params.get("partition") or "(default)"
        log.info("SLURM: checking %d runs against partition %s", len(job_overrides), partition)
        limit = check_request(self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        exclude = self.config.hydra.job.config.override_dirname.exclude_keys or []
        returns: dict[int, JobReturn] = {}
        todo = []  # (position, job number, overrides, run folder)
        runs = {run["dir"]: run for run in scan(sweep_dir)}  # every record, read once
        for pos, overrides in enumerate(job_overrides):
            num, overrides = initial_job_idx + pos, list(overrides)
            run_dir = sweep_dir / self._subdir(overrides, num)
            done = runs.get(os.path.abspath(run_dir), {"status": None})
            if done["status"] in FINISHED and same_run(done["overrides"], overrides, exclude):
                log.info("\t#%d finished before (%s): not submitted", num, done["status"])
                returns[pos] = _return(overrides, run_dir, done.get("val_acc"))
            else:
                todo.append((pos, num, overrides, run_dir))
        for start in range(0, len(todo), limit):
            chunk = todo[start : start + limit]
            for _, num, overrides, _ in chunk:
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            try:
                jobs = self._executor().map_array(
                    self,
                    [c[2] for c in chunk],
                    ["hydra.sweep.dir"] * len(chunk),
                    [c[1] for c in chunk],
                    [f"job_id_for_{c[1]}" for c in chunk],
                    [Singleton.get_state()] * len(chunk),
                )
            except Exception as e:  # sbatch said no: its own words are the useful part
                said = str(e).strip().splitlines()
                raise HydraException(
                    f"sbatch refused the array: {said[-1] if said else type(e).__name__}. Check "
                    "hydra.launcher's settings against the cluster (scontrol show partition)."
                ) from None
            array_id = jobs[0].job_id.split("_")[0]
            log.info(
                "SLURM array %s: %d runs (#%d to #%d), at most %s at once; waiting for them.",
                array_id, len(chunk), chunk[0][1], chunk[-1][1],
                self.params.get("array_parallelism"),
            )  # fmt: skip
            for (pos, _, overrides, run_dir), job, (outcome, why) in zip(
                chunk, jobs, self._wait(array_id, jobs), strict=True
            ):
                if outcome is None:
                    returns[pos] = _failed(
                        overrides, run_dir, job, why or "its SLURM job ended without a result"
                    )
                    continue
                result = read_result(run_dir) or {}
                error = str(result.get("error"))
                if why and result.get("status") == "failed" and not error.startswith(why):
                    error = f"{why} (job {job.job_id}): {error}"  # SLURM's account first
                    write_result(run_dir, **{**result, "error": error})
                returns[pos] = outcome
        return [returns[pos] for pos in range(len(job_overrides))]

    def _subdir(self, overrides: list[str], num: int) -> str:
        """The run's folder name, as run_job will make it in the job."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)
        try:
            return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        finally:
            HydraConfig.instance().cfg = saved

    def _executor(self) -> Any:
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout", 0),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items()}
        )
        return executor

    def _wait(self, array_id: str, jobs: list) -> list[tuple[JobReturn | None, str | None]]:
        """Each job's JobReturn once it has ended (None: it left none), and why SLURM ended
        it, if it did. A job that can never start is cancelled with its array, and named."""
        outcomes: dict[str, tuple[JobReturn | None, str | None]] = {}
        gone: dict[str, float] = {}
        said = time.monotonic()
        while len(outcomes) < len(jobs):
            now = states(array_id)
            for job in jobs:
                if job.job_id in outcomes:
                    continue
                state, reason = now.get(job.job_id, ("GONE", ""))
                since = time.monotonic() - gone.setdefault(job.job_id, time.monotonic())
                if job.paths.result_pickle.exists():
                    outcome = _unpickle(job.paths.result_pickle)
                    value = outcome._return_value if outcome else None
                    # A run that caught SLURM's SIGTERM ends before SLURM says why: give the
                    # state a moment to settle, so that the record can say it too.
                    if (
                        state in WAITING
                        and since < GRACE_S
                        and not (isinstance(value, float) and math.isfinite(value))
                    ):
                        continue
                    outcomes[job.job_id] = (outcome, ENDED.get(state))
                elif state == "PENDING" and reason in NEVER:
                    subprocess.run(["scancel", array_id], capture_output=True, timeout=60)
                    p = self.params
                    raise HydraException(
                        f"SLURM array {array_id} can never start ({reason}): it asks partition "
                        f"{p.get('partition') or '(default)'} for {p.get('cpus_per_task')} CPUs, "
                        f"{p.get('mem_gb')} GB, {p.get('gpus_per_node') or 0} GPUs and "
                        f"{p.get('timeout_min')} minutes. Lower them to what the partition "
                        "allows (scontrol show partition), or choose another partition."
                    )
                elif state in WAITING:
                    gone.pop(job.job_id, None)
                elif since > GRACE_S:
                    why = f"its SLURM job ended ({state.lower()}) without a result"
                    outcomes[job.job_id] = (None, ENDED.get(state, why))
            if time.monotonic() - said > 60:
                running = sum(now.get(j.job_id, ("",))[0] == "RUNNING" for j in jobs)
                counts = (len(outcomes), len(jobs), running)
                log.info("SLURM array %s: %d of %d ended, %d running.", array_id, *counts)
                said = time.monotonic()
            if len(outcomes) < len(jobs):
                time.sleep(POLL_S)
        return [outcomes[job.job_id] for job in jobs]


def _failed(overrides: list[str], run_dir: Path, job: Any, why: str) -> JobReturn:
    """A run whose job SLURM ended: recorded failed (unless it finished first), with its
    overrides (a job cancelled before it started has no .hydra/), so that the leaderboard
    lists it and the same command resumes it from its last.ckpt."""
    result = read_result(run_dir) or {}
    if result.get("status") not in FINISHED:
        try:  # the last line the job wrote to its stderr: what killed it
            lines = job.paths.stderr.read_text(errors="replace").splitlines()
            lines = [ln for ln in lines if ln.strip() and not ln.startswith((" ", "srun: error"))]
            why += f": {lines[-1].strip()[:300]} (log: {job.paths.stderr})" if lines else ""
        except OSError:
            pass
        log.error("Run %s failed, the sweep goes on: %s (job %s).", run_dir.name, why, job.job_id)
        if not result.get("error"):  # the run's own account (a signal it caught) is better
            error = f"{why} (job {job.job_id})"
            write_result(
                run_dir, status="failed", error=error, overrides=overrides, host=None, pid=None
            )
    return _return(overrides, run_dir, result.get("val_acc"))


def _return(overrides: Sequence[str], run_dir: Path, value: Any) -> JobReturn:
    """What a sweeper reads of a run that did not run here: its value, NaN for none."""
    value = value if isinstance(value, float) else math.nan
    done = JobReturn(overrides=list(overrides), working_dir=str(run_dir), _return_value=value)
    done.status = JobStatus.COMPLETED
    return done


def _unpickle(path: Path) -> JobReturn | None:
    try:
        outcome, value = pickle_load(path)
    except Exception:  # written half (a node lost mid-write): the run's own record says more
        return None
    if outcome == "success" and isinstance(value, JobReturn):
        return value
    log.error("A job raised (the sweep goes on): %s", str(value).strip().splitlines()[-1])
    return None
