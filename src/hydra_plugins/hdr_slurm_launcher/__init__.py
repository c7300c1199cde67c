"""hdr's SLURM launcher for Hydra (`hydra/launcher=slurm`): hydra-submitit-launcher's, made to
hold on a real cluster. It refuses jobs that no node of the partition could run, submits a
grid in arrays no larger than the cluster's MaxArraySize (one array at a time, so that
array_parallelism holds), submits no run that already finished, and waits by asking
scontrol, not sacct: a job that SLURM cancels, times out or preempts becomes a failed run in
the leaderboard, and the sweep goes on. Hydra finds launchers only under hydra_plugins."""

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import HydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

# States in which a job may still write its result; any other, and it has ended.
WAITING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"}
GRACE_S = 15  # a job gone from SLURM gets this long for its result file to show up
POLL_S = 2.0


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        from hdr import slurm
        from hdr.records import finished_run

        params = self.params
        log.info(
            "SLURM: checking %d runs against partition %s and their folders",
            len(job_overrides),
            params.get("partition") or "(default)",
        )
        try:
            slurm.check_time(params.get("timeout_min"), params.get("signal_delay_s") or 0)
            slurm.check_fits(
                params.get("partition"),
                params.get("cpus_per_task") or 1,
                params.get("mem_gb") or 0,
                params.get("gpus_per_node") or 0,
            )
            limit = slurm.max_array_size()
        except slurm.SlurmError as e:
            raise HydraException(str(e)) from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        exclude = self.config.hydra.job.config.override_dirname.exclude_keys or []

        returns: dict[int, JobReturn] = {}
        todo = []  # (position, job number, overrides, run folder)
        for pos, overrides in enumerate(job_overrides):
            num = initial_job_idx + pos
            run_dir = sweep_dir / self._subdir(list(overrides), num)
            done = finished_run(run_dir, list(overrides), exclude)
            if done is None:
                todo.append((pos, num, list(overrides), run_dir))
                continue
            log.info("\t#%d finished before (%s): not submitted", num, done.get("status"))
            returns[pos] = _return(overrides, run_dir, done.get("val_acc"))
        executor = self._executor()
        for start in range(0, len(todo), limit):
            chunk = todo[start : start + limit]
            for _, num, overrides, _ in chunk:
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            state = Singleton.get_state()
            try:
                jobs = executor.map_array(
                    self,
                    [c[2] for c in chunk],
                    ["hydra.sweep.dir"] * len(chunk),
                    [c[1] for c in chunk],
                    [f"job_id_for_{c[1]}" for c in chunk],
                    [state] * len(chunk),
                )
            except Exception as e:  # sbatch said no: its own words are the useful part
                said = str(e).strip().splitlines()
                raise HydraException(
                    f"sbatch refused the array: {said[-1] if said else type(e).__name__}. "
                    "Check hydra.launcher's settings against the cluster (scontrol show "
                    "partition)."
                ) from None
            array_id = jobs[0].job_id.split("_")[0]
            log.info(
                "SLURM array %s: %d runs (#%d to #%d), at most %d at once, MaxArraySize %d "
                "here; waiting for them.",
                array_id,
                len(chunk),
                chunk[0][1],
                chunk[-1][1],
                params.get("array_parallelism"),
                limit,
            )
            for (pos, _, overrides, run_dir), job, (outcome, why) in zip(
                chunk, jobs, self._wait(array_id, jobs), strict=True
            ):
                if outcome is None:
                    why = why or "its SLURM job ended without a result"
                    returns[pos] = _failed(overrides, run_dir, job.job_id, why + _last_words(job))
                    continue
                if why:
                    _say_why(run_dir, f"{why} (job {job.job_id})")
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
        import submitit

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
        """Each job's JobReturn once it has ended (None: it left no result), and why SLURM
        ended it, if it did. A job that can never start is cancelled with the whole array,
        and named."""
        from submitit.core.utils import pickle_load

        from hdr import slurm

        outcomes: dict[str, tuple[JobReturn | None, str | None]] = {}
        gone: dict[str, float] = {}
        said = time.monotonic()
        while len(outcomes) < len(jobs):
            states = slurm.states(array_id)
            for job in jobs:
                if job.job_id in outcomes:
                    continue
                state, reason = states.get(job.job_id, ("GONE", ""))
                if job.paths.result_pickle.exists():
                    outcome = _unpickle(pickle_load, job.paths.result_pickle)
                    value = outcome._return_value if outcome else None
                    failed = not (isinstance(value, float) and math.isfinite(value))
                    # A run that caught SLURM's SIGTERM ends before SLURM says why: give the
                    # state a moment to settle, so that the record can say it too.
                    since = time.monotonic() - gone.setdefault(job.job_id, time.monotonic())
                    if failed and state in WAITING and since < GRACE_S:
                        continue
                    outcomes[job.job_id] = (outcome, slurm.ENDED.get(state))
                elif state == "PENDING" and reason in slurm.NEVER:
                    slurm.cancel(array_id)
                    raise HydraException(
                        f"SLURM array {array_id} can never start ({reason}): "
                        f"{_pending_why(self.params)}"
                    )
                elif state in WAITING:
                    gone.pop(job.job_id, None)
                elif time.monotonic() - gone.setdefault(job.job_id, time.monotonic()) > GRACE_S:
                    why = f"its SLURM job ended ({state.lower()}) without a result"
                    outcomes[job.job_id] = (None, slurm.ENDED.get(state, why))
            if time.monotonic() - said > 60:
                running = sum(states.get(j.job_id, ("",))[0] == "RUNNING" for j in jobs)
                log.info(
                    "SLURM array %s: %d of %d ended, %d running.",
                    array_id,
                    len(outcomes),
                    len(jobs),
                    running,
                )
                said = time.monotonic()
            if len(outcomes) < len(jobs):
                time.sleep(POLL_S)
        return [outcomes[job.job_id] for job in jobs]


def _failed(overrides: list[str], run_dir: Path, job_id: str, why: str) -> JobReturn:
    """A run whose job SLURM ended: recorded failed (unless it finished first), so that the
    leaderboard lists it and the same command resumes it from its last.ckpt."""
    from hdr.records import FINISHED, read_result, write_result

    result = read_result(run_dir) or {}
    if result.get("status") not in FINISHED:
        log.error("Run %s failed, the sweep goes on: %s (job %s).", run_dir.name, why, job_id)
        hydra = run_dir / ".hydra"
        hydra.mkdir(parents=True, exist_ok=True)  # a job cancelled before it started
        if not (hydra / "overrides.yaml").exists():
            (hydra / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
        if not result.get("error"):  # the run's own account (a signal it caught) is better
            write_result(
                run_dir,
                status="failed",
                error=f"{why} (job {job_id})",
                overrides=list(overrides),
                host=None,
                pid=None,
            )
    return _return(overrides, run_dir, result.get("val_acc"))


def _last_words(job: Any) -> str:
    """The last line the job wrote to its stderr (what killed it), and where the rest is."""
    try:
        lines = [
            ln
            for ln in job.paths.stderr.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith((" ", "srun: error"))
        ]
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]} (log: {job.paths.stderr})" if lines else ""


def _say_why(run_dir: Path, why: str) -> None:
    """Put SLURM's account first in the record of a run that it stopped."""
    from hdr.records import read_result, write_result

    result = read_result(run_dir) or {}
    if result.get("status") == "failed" and not str(result.get("error", "")).startswith(why):
        write_result(run_dir, **{**result, "error": f"{why}: {result.get('error')}"})


def _return(overrides: Sequence[str], run_dir: Path, value: Any) -> JobReturn:
    """What a sweeper reads of a run that did not run here: its value, NaN for none."""
    value = value if isinstance(value, float) else math.nan
    return JobReturn(
        overrides=list(overrides),
        working_dir=str(run_dir),
        status=JobStatus.COMPLETED,
        _return_value=value,
    )


def _unpickle(load: Any, path: Path) -> JobReturn | None:
    try:
        outcome, value = load(path)
    except Exception:  # written half (a node lost mid-write): the run's own record says more
        return None
    if outcome == "success" and isinstance(value, JobReturn):
        return value
    log.error("A job raised (the sweep goes on): %s", str(value).strip().splitlines()[-1])
    return None


def _pending_why(params: dict) -> str:
    return (
        f"it asks partition {params.get('partition') or '(default)'} for "
        f"{params.get('cpus_per_task')} CPUs, {params.get('mem_gb')} GB, "
        f"{params.get('gpus_per_node') or 0} GPUs and {params.get('timeout_min')} minutes. "
        "Lower hydra.launcher.cpus_per_task, mem_gb, gpus_per_node or timeout_min to what "
        "the partition allows (scontrol show partition), or choose another partition."
    )
