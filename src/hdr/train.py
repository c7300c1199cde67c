"""Entry point: `python -m hdr.train [overrides]` builds everything from `conf/` and trains.

Lightning and the rest load when a run starts, so `--help` and `--cfg job` answer at once.
"""

import contextlib
import errno
import gc
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdr.config import CONF_DIR, ConfigError, check, register_schemas
from hdr.records import (
    RecordError,
    RunDir,
    claim,
    rank_zero,
    record_best,
    relative_to_run,
    resume_point,
    task_overrides,
    write_result,
)

log = logging.getLogger(__name__)

# The headline figures: the metric, its key in result.json and best.json, and its words.
HEADLINE = (
    ("val/acc_best", "val_acc", "Best validation accuracy"),
    ("test/acc", "test_acc", "Test accuracy"),
    ("test/drawings_acc", "drawings_acc", "Drawings read right (hdr.drawings)"),
    ("val/drawings_acc", "val_drawings_acc", "Validation drawings read right (ranks for the app)"),
)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build, fit on train/val, test the best checkpoint; `finish` records the run. Returns
    the metrics and the objects built."""
    import lightning as L
    from hydra.utils import instantiate

    from hdr.checkpoint import CheckpointError, check_resumable, load_model
    from hdr.prune import Pruning
    from hdr.utils import instantiate_group

    if not gc.get_freeze_count():  # once a process, before its first run
        # Lightning's imports (torch, torchmetrics, torchvision, scipy, sympy) leave 400,000
        # objects that live as long as the process. Out of the garbage collector's sight,
        # they cost nothing at each full collection (0.17 s here) nor at exit (0.9 s a
        # process, every job of a sweep: docs/performance.md). Garbage is collected first.
        gc.collect()
        gc.freeze()
    check(cfg)  # bad values stop here, named, before any data is read
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("torch_threads"))
    start = time.perf_counter()

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    if cfg.get("init_from"):
        start_from(model, cfg.init_from)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resume, start_step, finished = cfg.get("ckpt_path"), 0, False
    if not cfg.get("train"):  # test a checkpoint as it is: the net its own record describes
        model = load_model(resume)
        trainer.validate(model, datamodule=datamodule)
    elif resume:
        own = Path(os.path.realpath(resume)).is_relative_to(os.path.realpath(cfg.paths.output_dir))
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

    result = finish(cfg, trainer, metrics, best, pruned_at, time.perf_counter() - start)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
    return metrics, {"result": result, **objects}


def start_from(model: Any, checkpoint: str) -> None:
    """Fine-tuning: `model` takes the weights of `checkpoint`, whose net must be the same."""
    from hdr.checkpoint import load_model

    start = load_model(checkpoint)  # checked; CheckpointError says what is wrong
    if start.hparams.net != model.hparams.net:
        raise ConfigError(
            f"init_from={checkpoint} holds a net {start.hparams.net}, this run trains "
            f"{model.hparams.net}: start from a checkpoint of the same net, or set model.net "
            "to its net."
        )
    model.net.load_state_dict(start.net.state_dict())
    log.info("Starting from the weights of %s", checkpoint)


def finish(
    cfg: DictConfig,
    trainer: Any,
    metrics: dict[str, float],
    best: str,
    pruned_at: Any,
    seconds: float,
) -> dict[str, Any]:
    """The run's record, written by rank 0: result.json, the HPARAMS entry beside its
    curves, and the headline figures in the log. Returns the record."""
    from hdr.utils import tensorboard_logger

    result = {
        "status": "ok" if pruned_at is None else "pruned",
        "pruned_at": pruned_at,
        **{key: metrics.get(metric) for metric, key, _ in HEADLINE},
        "epochs": trainer.current_epoch,
        "seconds": round(seconds, 1),
        "checkpoint": str(Path(best).resolve()) if best else "",
    }
    if not trainer.is_global_zero:
        return result
    board = tensorboard_logger(trainer)
    if board is not None:  # the HPARAMS tab: this run's settings beside its results
        hp = {f"hp/{m.replace('/', '_')}": metrics[m] for m, _, _ in HEADLINE if m in metrics}
        board.log_hyperparams(hparams_of(cfg), metrics=hp)
        board.experiment.flush()
    for metric, _, words in HEADLINE:
        if metric in metrics:
            log.info("%s: %.2f%%", words, 100 * metrics[metric])
    log.info("Outputs (checkpoints, plots, logs): %s", cfg.paths.output_dir)
    log.info("TensorBoard: tensorboard --logdir %s", cfg.paths.output_dir)
    # On disk, relative to the run folder: the record holds if the folder moves.
    ckpt = relative_to_run(best, cfg.paths.output_dir) if best else ""
    write_result(
        cfg.paths.output_dir, **{**result, "checkpoint": ckpt}, overrides=task_overrides()
    )
    return result


def set_threads(setting: int | str | None) -> None:
    """Torch threads per run. "auto": the CPUs the scheduler gave this task (SLURM's
    SLURM_CPUS_PER_TASK, a Ray task's CPUs), else the cores split between parallel joblib
    jobs, else torch's default."""
    import torch

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


def die_with_parent() -> None:
    """End this process once the one that started it is gone: loky kept a killed sweep's
    workers training for 10 minutes and more (1.3 GB each). A run ended so is as one killed
    with it: the same command resumes it from its last.ckpt. Once a process."""
    if any(t.name == "hdr-die-with-parent" for t in threading.enumerate()):
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="hdr-die-with-parent", daemon=True).start()


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


def user_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user gave, reported in one line without a stack trace; a diverged
    run (FloatingPointError) says to lower model.lr. (Imported once a run starts.)"""
    from hdr.checkpoint import CheckpointError
    from hdr.download import DataError

    return ConfigError, DataError, CheckpointError, RecordError, FloatingPointError


def disk_full(e: BaseException, then: str = "run the same command again") -> str | None:
    """The one-line advice for a full disk (or quota), None for any other error; `then`:
    how to go on once there is space."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"The disk is full{where}. Free some space, then {then}: what was written is whole."
    return None


def run(cfg: DictConfig) -> float | None:
    """One run of a sweep or on its own: claim its folder, resume or skip it, train, record."""
    from hdr.utils import quiet_lightning

    quiet_lightning()
    if multiprocessing.parent_process() is not None:  # a worker of a sweep's pool (joblib)
        die_with_parent()
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    try:
        with claim(out, wait=sweeping and rank_zero()) as holder:
            if holder and rank_zero():
                raise RecordError(
                    f"{out} is in use by another run ({holder}): wait for it to end, or give "
                    "this run another folder."
                )
            return _run(cfg, out, sweeping)
    except RecordError as e:  # its folder cannot be claimed: in a sweep, the others go on
        if not sweeping:
            raise
        log.error("Run not started, the sweep goes on: %s", e)
        with contextlib.suppress(OSError):
            write_result(out, status="failed", error=str(e), overrides=task_overrides())
        return math.nan


def _run(cfg: DictConfig, out: Path, sweeping: bool) -> float | None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

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
        # A sweep's or a named folder is found again by the same command; a new run's
        # folder is named by the time it started, so the command must name it.
        named = any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
        then = (
            "run the same command again: it resumes this run"
            if sweeping or named
            else f"run the same command with hydra.run.dir={out}: it resumes this run"
        )
        reason = disk_full(e, then) or f"{type(e).__name__}: {e}"
        saved = RunDir(out).last.relative_to(out)
        if isinstance(e, SIGTERMException):  # SLURM's scancel, time limit or preemption
            reason = (
                "stopped by SIGTERM (cancelled, timed out or preempted) with its "
                f"{saved} saved: the same sweep command resumes it"
            )
        if type(e).__name__ == "UncompletedJobError":  # submitit, at SLURM's time warning
            reason = (
                f"stopped at its SLURM time limit with its {saved} saved: the same sweep "
                "command resumes it (hydra.launcher.timeout_min gives runs more time)"
            )
        try:
            write_result(out, status="failed", error=reason, overrides=task_overrides())
        except OSError as write_error:
            log.warning("Could not record the failure in %s (%s).", out, write_error)
        if not sweeping:
            if isinstance(e, user_errors()) or disk_full(e):  # the message says what to fix
                raise UserError(disk_full(e, then) or str(e)) from None
            if isinstance(e, SIGTERMException):
                raise UserError(
                    f"The run was stopped by SIGTERM: resume it with ckpt_path={RunDir(out).last}"
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
    except (UserError, *user_errors()) as e:  # exit here: Hydra would print its own line first
        sys.exit(f"Error: {e}")
    except (HydraException, OmegaConfBaseException) as e:  # e.g. a Trainer setting it refuses
        sys.exit(f"Error: {one_line(e)}")


def main() -> None:
    """The command. What the user can fix (a bad override, a folder that cannot be written,
    a damaged file, a full disk) ends in one line, `Error: ...`, and exit status 1; only a
    bug in hdr shows a stack trace."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing half a trace
    logging.raiseExceptions = False  # a log line lost to a full disk is no stack trace
    register_schemas()
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        fix = " Set it, or override the key that reads it." if "Environment var" in str(e) else ""
        if "mismatched input '='" in str(e):  # a sweep run's folder holds `=` in its name
            fix = (
                " A value holding '=' (a sweep run's folder, say) must be quoted: "
                """'ckpt_path="outputs/.../0_model.lr=0.01/checkpoints/last.ckpt"'."""
            )
        sys.exit(f"Error: {one_line(e).rstrip('.')}.{fix}")
    except OSError as e:  # Hydra making the run's folder, before any run starts
        sys.exit(
            f"Error: {disk_full(e) or f'cannot write {e.filename}: {e.strerror}'}. Point "
            "paths.log_dir (HDR_LOG_DIR), hydra.run.dir or hydra.sweep.dir at a folder you "
            "can write to."
        )


def one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's messages, less their blank lines and the cause's repeats; a
    ConfigError raised inside (by a resolver) as it is."""
    inner: BaseException | None = e
    while inner is not None:
        if isinstance(inner, ConfigError):
            return str(inner)
        inner = inner.__cause__ or inner.__context__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause) and str(cause).splitlines()[0] not in " ".join(lines):
        lines.append(str(cause).splitlines()[0])
    return " ".join(lines)


if __name__ == "__main__":
    main()
