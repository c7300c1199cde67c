"""Stopping a sweep's hopeless runs early with Optuna's pruners.

Every run of a sweep reports its validation accuracy after each epoch to one Optuna study
kept in the sweep folder (SQLite), whichever launcher started it (basic, joblib, Ray, the
Optuna sweeper); the pruner compares it with the other runs at the same epoch and stops it
when it is losing. hydra-optuna-sweeper cannot prune (its jobs never see their trial), so the
study here is our own, beside the sweeper's.
"""

import logging
import math
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "halving")
STUDY = "pruning"


class Pruning(L.Callback):
    """Report `monitor` every epoch; stop the run when the sweep's pruner says so.

    method: none | median (below the median of the finished runs at that epoch) | halving
    (successive halving: at epochs 1, 3, 9, ... only the best third goes on).
    Inert outside a multirun, and with method none.
    """

    def __init__(
        self,
        method: str = "none",
        storage: str | None = None,
        warmup_epochs: int = 1,
        startup_runs: int = 5,
        monitor: str = "val/acc",
    ) -> None:
        self.method, self.storage, self.monitor = method, storage, monitor
        self.warmup_epochs, self.startup_runs = warmup_epochs, startup_runs
        self.trial: Any = None
        self.pruned_at: int | None = None  # the epoch after which the run was stopped
        self.best = -math.inf

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if stage != "fit" or self.method == "none" or not multirun or not trainer.is_global_zero:
            return
        import optuna  # only sweeps that prune pay for the import

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = self.storage or f"sqlite:///{HydraConfig.get().sweep.dir}/{STUDY}.db"
        pruner = (
            optuna.pruners.MedianPruner(self.startup_runs, n_warmup_steps=self.warmup_epochs)
            if self.method == "median"
            else optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        )
        # Every run of the sweep opens the same study; the first one creates it.
        self.study = optuna.create_study(
            storage=storage,
            study_name=STUDY,
            direction="maximize",
            pruner=pruner,
            load_if_exists=True,
        )
        self.trial = self.study.ask()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if self.trial is None or trainer.sanity_checking or self.monitor not in metrics:
            return
        value = float(metrics[self.monitor])
        self.best = max(self.best, value)
        epoch = trainer.current_epoch + 1  # epochs done: the pruner's "step"
        self.trial.report(value, step=epoch)
        if epoch >= self.warmup_epochs and self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True
            log.info("Pruned after epoch %d: %s %.4f is losing to the sweep's other runs.",
                     epoch, self.monitor, value)  # fmt: skip

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None:
            return
        import optuna

        if self.pruned_at is not None:
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(self.best):
            self.study.tell(self.trial, self.best)
