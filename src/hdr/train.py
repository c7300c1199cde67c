"""Entry point: `python -m hdr.train [overrides]` builds everything from `conf/` and trains."""

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
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hdr.checkpoint import CheckpointError, check_resumable, read_checkpoint
from hdr.config import CONF_DIR, ConfigError, check
from hdr.download import DataError
from hdr.prune import Pruning
from hdr.records import FINISHED, RecordError, read_result, record_best, write_result
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

    if cfg.get("train"):
        resume = cfg.get("ckpt_path")
        if resume:
            check_resumable(resume, OmegaConf.to_container(cfg.model))
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    pruned_at = next((c.pruned_at for c in callbacks if isinstance(c, Pruning)), None)

    # The best checkpoint is the one kept by the callback that monitors a metric.
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
    if cfg.get("test") and pruned_at is None:  # a pruned run is not worth testing
        if not best:
            log.warning("No best checkpoint: testing the weights as they are now.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
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
    """Torch threads per run; "auto" splits the cores between parallel joblib jobs."""
    if setting is None or setting == "auto":
        n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
        if not n_jobs:
            return
        cores = os.cpu_count() or 1
        setting = max(1, cores // (cores if n_jobs < 0 else n_jobs))  # joblib: -1 = every core
    torch.set_num_threads(int(setting))
    log.info("torch threads: %d", torch.get_num_threads())


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


# Errors in what the user gave, reported in one line without a stack trace.
USER_ERRORS = (ConfigError, DataError, CheckpointError, RecordError)


def task_overrides() -> list[str]:
    """This run's command-line overrides: what makes it this run and not another."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resume_point(out: Path, sweeping: bool) -> tuple[str, Any]:
    """What to do in this run's folder: ("start", None), ("resume", last.ckpt) or, in a
    sweep that comes back to a finished (or pruned) run, ("skip", its result)."""
    result = read_result(out)
    if result is not None and result.get("overrides", task_overrides()) != task_overrides():
        raise RecordError(
            f"{out} holds another run ({' '.join(result['overrides'])}): give this one a "
            "new folder (hydra.run.dir / hydra.sweep.dir)."
        )
    if result is not None and not sweeping:
        raise RecordError(
            f"{out} already holds a run that ended ({result.get('status')}): leave "
            "hydra.run.dir out for a new folder, or resume from its checkpoints/last.ckpt "
            "with ckpt_path=..."
        )
    if result is not None and result.get("status") in FINISHED:
        return "skip", result
    last = out / "checkpoints" / "last.ckpt"
    if result is None and last.exists():  # killed part-way: go on from its last epoch
        try:
            read_checkpoint(last)
            return "resume", last
        except CheckpointError as e:
            log.warning("%s Starting this run again.", e)
    if sweeping:  # what a failed or killed attempt left would mix with the new one's
        for part in ("checkpoints", "tensorboard"):
            shutil.rmtree(out / part, ignore_errors=True)
    return "start", None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_lightning()
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    try:
        action, detail = resume_point(out, sweeping)
    except RecordError as e:  # another run's folder: record nothing in it
        if sweeping:
            log.error("Run not started, the sweep goes on: %s", e)
            return math.nan
        sys.exit(f"Error: {e}")
    if action == "skip":
        log.info("Finished before (%s, val acc %s): skipped.", detail["status"], detail["val_acc"])
        return detail.get("val_acc")
    if action == "resume":
        log.info("Resuming from %s", detail)
        cfg.ckpt_path = str(detail)
    try:
        metrics, objects = train(cfg)
    except Exception as e:
        write_result(out, status="failed", error=f"{type(e).__name__}: {e}",
                     overrides=task_overrides())  # fmt: skip
        if not sweeping:
            if isinstance(e, USER_ERRORS):  # the message says what to fix; a trace adds noise
                sys.exit(f"Error: {e}")
            raise
        # In a sweep one failed run must not stop or hide the others: record it, go on.
        log.error("Run failed, the sweep goes on: %s: %s", type(e).__name__, e)
        return math.nan  # a sweeper reads NaN as a failed trial
    if not sweeping and objects["trainer"].is_global_zero:
        # A sweep records its best when it ends; a single run competes on its own.
        overrides = " ".join(task_overrides())
        row = {**objects["result"], "overrides": overrides, "dir": str(out)}
        record_best([row], cfg.paths.best_record)
    return metrics.get(cfg.get("optimized_metric"))  # what a sweeper maximises


if __name__ == "__main__":
    main()
