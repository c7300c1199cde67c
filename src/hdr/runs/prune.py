"""Stopping a sweep's hopeless runs early with Optuna's pruners: every run reports its
validation accuracy each epoch to one study in the sweep folder (hdr.runs.sweep.study_url),
whichever launcher started it. hydra-optuna-sweeper cannot prune (its jobs never see their
trial), and Optuna's PyTorchLightningPruningCallback is a `pytorch_lightning` callback, which
a `lightning` Trainer refuses: hence this one."""

import logging
import math
import time
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from hdr.runs.sweep import open_study, study_url

log = logging.getLogger(__name__)

TRIES = 5  # a busy study is tried this often, with a growing pause, before pruning is off


class Pruning(L.Callback):
    """Report `monitor` every epoch; stop the run when the sweep's pruner says so.
    method: none | median (below the median of the runs at that epoch) | halving (successive
    halving: at epochs 1, 3, 9, ... only the best third goes on). Inert outside a multirun.
    A study that cannot be reached (damaged, gone, busy past its retries) turns pruning off
    for this run with one warning: it never fails the run."""

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
        import optuna  # as in open_study

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = study_url(HydraConfig.get().sweep.dir, self.storage)
        pruner = (
            optuna.pruners.MedianPruner(self.startup_runs, n_warmup_steps=self.warmup_epochs)
            if self.method == "median"
            else optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        )

        def ask() -> Any:
            self.study = open_study(self.url, pruner)
            return self.study.ask()

        self.trial = self._guard("open the study", ask)

    def _guard(self, what: str, fn: Any) -> Any:
        """fn(), retried while the study is busy; on failure pruning is off, said once."""
        for attempt in range(TRIES):
            try:
                return fn()
            except Exception as e:  # sqlalchemy's errors, by any name
                if attempt == TRIES - 1 or "locked" not in str(e):  # damaged: no use waiting
                    log.warning(
                        "Pruning is off for this run: could not %s in %s (%s: %s). If that "
                        "file is damaged, delete it: the next sweep starts a new study.",
                        what, self.url, type(e).__name__, str(e).splitlines()[0],
                    )  # fmt: skip
                    self.trial = None
                    return None
                time.sleep(0.5 * 2**attempt)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if self.trial is None or trainer.sanity_checking or self.monitor not in metrics:
            return
        value, epoch, trial = float(metrics[self.monitor]), trainer.current_epoch + 1, self.trial
        self.best = max(self.best, value)

        def report() -> bool:
            trial.report(value, step=epoch)
            return epoch >= self.warmup_epochs and trial.should_prune()

        if self._guard("report to the study", report):
            self.pruned_at, trainer.should_stop = epoch, True
            said = (epoch, self.monitor, value)
            log.info("Pruned after epoch %d: %s %.4f is losing to the sweep's other runs.", *said)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trial := self.trial) is None:
            return
        import optuna  # as in open_study: only sweeps that prune get here

        if self.pruned_at is not None:
            pruned = optuna.trial.TrialState.PRUNED
            self._guard("close the trial", lambda: self.study.tell(trial, state=pruned))
        elif math.isfinite(self.best):
            self._guard("close the trial", lambda: self.study.tell(trial, self.best))
