"""Entry point: `python -m hdr.train [overrides]` builds everything from `conf/` and trains."""

import errno
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdr.checkpoint import CheckpointError, check_resumable, load_model, read_checkpoint
from hdr.config import CONF_DIR, ConfigError, check
from hdr.download import DataError
from hdr.prune import Pruning
from hdr.records import (
    FINISHED,
    RecordError,
    claim,
    read_result,
    record_best,
    same_run,
    write_result,
)
from hdr.utils import instantiate_group, quiet_lightning, tensorboard_logger

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit on train/val, test the best checkpoint, write the run's record; return metrics and
    objects."""
    check(cfg)  # bad values stop here, named, before any data is read
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("torch_threads"))
    start = time.perf_counter()

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resume, start_step, finished = cfg.get("ckpt_path"), 0, False
    if not cfg.get("train"):  # test a checkpoint as it is: the net its own record describes
        model = load_model(resume)
        trainer.validate(model, datamodule=datamodule)
    elif resume:
        own = Path(resume).resolve().is_relative_to(Path(cfg.paths.output_dir).resolve())
        model_cfg, max_epochs = OmegaConf.to_container(cfg.model), cfg.trainer.get("max_epochs")
        start_step, finished = check_resumable(resume, model_cfg, max_epochs, own_run=own)
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if trainer.global_step == start_step and not finished:
            raise ConfigError(
                "The run trained nothing: trainer.max_steps, limit_train_batches or the "
                "epochs left after ckpt_path leave no step to train. Give it steps to train."
            )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    pruned_at = next((c.pruned_at for c in callbacks if isinstance(c, Pruning)), None)

    # The best checkpoint is the one kept by the callback that monitors a metric.
    keeper = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    best = (keeper.best_model_path if keeper and cfg.get("train") else resume) or ""
    if best and not Path(best).is_file():
        raise CheckpointError(f"The run's best checkpoint {best} is gone: run it again.")
    if "val/acc_best" not in metrics and cfg.get("train") and keeper is not None:
        # Resumed after its last epoch (killed before its record): the kept best's score.
        score = keeper.best_model_score
        metrics["val/acc_best"] = float(score) if score is not None else math.nan
    if not cfg.get("train"):
        metrics["val/acc_best"] = metrics.get("val/acc", math.nan)
    if cfg.get("test") and pruned_at is None:  # a pruned run is not worth testing
        if not best:
            log.warning("No best checkpoint: testing the weights as they are now.")
        tested = best if cfg.get("train") else None  # train=false: the model is the checkpoint
        trainer.test(model, datamodule=datamodule, ckpt_path=tested or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    result = {
        "status": "ok" if pruned_at is None else "pruned",
        "pruned_at": pruned_at,
        "val_acc": metrics.get("val/acc_best"),
        "test_acc": metrics.get("test/acc"),
        "drawings_acc": metrics.get("test/drawings_acc"),
        "epochs": trainer.current_epoch,
        "seconds": round(time.perf_counter() - start, 1),
        "checkpoint": str(Path(best).resolve()) if best else "",
    }
    if trainer.is_global_zero:
        board = tensorboard_logger(trainer)
        if board is not None:  # the HPARAMS tab: this run's settings beside its results
            hp = {f"hp/{k.replace('/', '_')}": metrics[k] for k in HP_METRICS if k in metrics}
            board.log_hyperparams(hparams_of(cfg), metrics=hp)
            board.experiment.flush()
        for key, name in (
            ("test/acc", "Test accuracy"),
            ("val/acc_best", "Best validation accuracy"),
            ("test/drawings_acc", "Drawings read right (hdr.drawings)"),
        ):
            if key in metrics:
                log.info("%s: %.2f%%", name, 100 * metrics[key])
        log.info("Outputs (checkpoints, plots, logs): %s", cfg.paths.output_dir)
        log.info("TensorBoard: tensorboard --logdir %s", cfg.paths.output_dir)
        write_result(cfg.paths.output_dir, **result, overrides=task_overrides())
    return metrics, {
        "result": result,
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "trainer": trainer,
    }


def set_threads(setting: int | str | None) -> None:
    """Torch threads per run. "auto": the CPUs the scheduler gave this task (SLURM's
    SLURM_CPUS_PER_TASK, a Ray task's CPUs), else the cores split between parallel joblib
    jobs, else torch's default."""
    if setting is None or setting == "auto":
        setting = _granted_cpus()
        if setting is None:
            return
    torch.set_num_threads(int(setting))
    log.info("torch threads: %d", torch.get_num_threads())


def _granted_cpus() -> int | None:
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) >= 1:
        return int(slurm)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            return max(1, int(cpus))
    n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
    if not n_jobs:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))  # joblib: -1 = every core


HP_METRICS = ("val/acc_best", "test/acc", "test/drawings_acc")  # the HPARAMS tab's metrics


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """What the HPARAMS tab compares runs by: what changes the model it trains (the model's
    settings, the batch size, epochs, precision, seed), not where files are."""
    keep = {
        "model": {k: v for k, v in cfg.model.items() if not k.startswith("_")},
        "data": {"batch_size": cfg.data.batch_size},
        "max_epochs": cfg.trainer.get("max_epochs"),
        "precision": cfg.trainer.get("precision"),
        "seed": cfg.get("seed"),
    }
    return OmegaConf.to_container(OmegaConf.create(keep), resolve=True)


# Errors in what the user gave, reported in one line without a stack trace; a diverged run
# (FloatingPointError) says to lower model.lr.
USER_ERRORS = (ConfigError, DataError, CheckpointError, RecordError, FloatingPointError)


def task_overrides() -> list[str]:
    """This run's command-line overrides: what makes it this run and not another."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def rank_zero() -> bool:
    """False in the other processes of a DDP run, which re-run this command into rank 0's
    folder: they neither claim it nor clear it."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def resume_point(out: Path, sweeping: bool) -> tuple[str, Any]:
    """What to do in this run's folder: ("start", None), ("resume", last.ckpt) or, in a
    sweep that comes back to a finished (or pruned) run, ("skip", its result). A run that
    failed, was killed or whose record is damaged resumes from its last.ckpt if it has one."""
    result = read_result(out)
    overrides = result.get("overrides") if result else None
    exclude = list(HydraConfig.get().job.config.override_dirname.exclude_keys or [])
    if isinstance(overrides, list) and not same_run(overrides, task_overrides(), exclude):
        raise RecordError(
            f"{out} holds another run ({' '.join(map(str, overrides))}): give this one a "
            "new folder (hydra.run.dir / hydra.sweep.dir)."
        )
    if result is not None and result.get("status") in FINISHED:
        if sweeping:
            return "skip", result
        raise RecordError(
            f"{out} already holds a run that ended ({result.get('status')}): leave "
            "hydra.run.dir out for a new folder, or resume from its checkpoints/last.ckpt "
            "with ckpt_path=..."
        )
    if result is not None and result.get("damaged"):
        log.warning("%s: %s. Resuming the run instead.", out, result["error"])
    last = out / "checkpoints" / "last.ckpt"
    if last.exists():  # killed or failed part-way: go on from its last epoch
        try:
            read_checkpoint(last)
            return "resume", last
        except CheckpointError as e:
            log.warning("%s Starting this run again.", e)
    for part in ("checkpoints", "tensorboard"):  # what an attempt left would mix with this one
        if rank_zero():
            shutil.rmtree(out / part, ignore_errors=True)
    return "start", None


def disk_full(e: BaseException) -> str | None:
    """The one-line advice for a full disk (or quota), None for any other error."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return (
            f"The disk is full{where}. Free some space and run the same command again: what "
            "was written is whole, and the run resumes from its last checkpoint."
        )
    return None


def run(cfg: DictConfig) -> float | None:
    """One run of a sweep or on its own: claim its folder, resume or skip it, train, record."""
    quiet_lightning()
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    with claim(out, wait=sweeping and rank_zero()) as holder:
        if holder and rank_zero():
            raise RecordError(
                f"{out} is in use by another run ({holder}): wait for it to end, or give "
                "this run another folder."
            )
        return _run(cfg, out, sweeping)


def _run(cfg: DictConfig, out: Path, sweeping: bool) -> float | None:
    try:
        action, detail = resume_point(out, sweeping)
    except RecordError as e:  # another run's folder: record nothing in it
        if sweeping:
            log.error("Run not started, the sweep goes on: %s", e)
            return math.nan
        raise
    if action == "skip":
        val = detail.get("val_acc")
        shown = f"{100 * val:.2f}%" if isinstance(val, float) else val
        log.info("Finished before (%s, val acc %s): skipped.", detail["status"], shown)
        return val
    if action == "resume":
        log.info("Resuming from %s", detail)
        cfg.ckpt_path = str(detail)
    try:
        metrics, objects = train(cfg)
    except (Exception, SIGTERMException) as e:
        reason = disk_full(e) or f"{type(e).__name__}: {e}"
        if isinstance(e, SIGTERMException):  # SLURM's scancel, time limit or preemption
            reason = (
                "stopped by SIGTERM (cancelled, timed out or preempted) with its "
                "checkpoints/last.ckpt saved: the same sweep command resumes it"
            )
        try:
            write_result(out, status="failed", error=reason, overrides=task_overrides())
        except OSError as write_error:
            log.warning("Could not record the failure in %s (%s).", out, write_error)
        if not sweeping:
            if isinstance(e, USER_ERRORS) or disk_full(e):  # the message says what to fix
                raise UserError(disk_full(e) or str(e)) from None
            if isinstance(e, SIGTERMException):
                raise UserError(
                    "The run was stopped by SIGTERM: resume it with "
                    f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
                ) from None
            raise
        # In a sweep one failed run must not stop or hide the others: record it, go on.
        log.error("Run failed, the sweep goes on: %s", reason)
        return math.nan  # a sweeper reads NaN as a failed trial
    if not sweeping and objects["trainer"].is_global_zero:
        # A sweep records its best when it ends; a single run competes on its own.
        overrides = " ".join(task_overrides())
        row = {**objects["result"], "overrides": overrides, "dir": str(out)}
        record_best([row], cfg.paths.best_record)
    return metrics.get(cfg.get("optimized_metric"))  # what a sweeper maximises


class UserError(Exception):
    """Something the user gave, or the machine, stops the command; the message is the fix."""


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except (UserError, *USER_ERRORS) as e:  # exit here: Hydra would print its own line first
        sys.exit(f"Error: {e}")


def main() -> None:
    """The command. What the user can fix (a bad override, a folder that cannot be written,
    a damaged file, a full disk) ends in one line, `Error: ...`, and exit status 1; only a
    bug in hdr shows a stack trace."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing half a trace
    logging.raiseExceptions = False  # a log line lost to a full disk is no stack trace
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        fix = " Set it, or override the key that reads it." if "Environment var" in str(e) else ""
        sys.exit(f"Error: {one_line(e).rstrip('.')}.{fix}")
    except OSError as e:  # Hydra making the run's folder, before any run starts
        sys.exit(
            f"Error: {disk_full(e) or f'cannot write {e.filename}: {e.strerror}'}. Point "
            "paths.log_dir (HDR_LOG_DIR), hydra.run.dir or hydra.sweep.dir at a folder you "
            "can write to."
        )


def one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's messages, less their blank lines and the cause's repeats."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause) and str(cause).splitlines()[0] not in " ".join(lines):
        lines.append(str(cause).splitlines()[0])
    return " ".join(lines)


if __name__ == "__main__":
    main()
