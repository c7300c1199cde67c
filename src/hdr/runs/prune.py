"""Stopping a sweep's hopeless runs early with Optuna's pruners.

Every run of a sweep reports its validation accuracy after each epoch to one Optuna study in
the sweep folder (SQLite), whichever launcher started it; the pruner compares it with the
other runs at the same epoch. hydra-optuna-sweeper cannot prune (its jobs never see their
trial), and Optuna 2.10's PyTorchLightningPruningCallback is a `pytorch_lightning` callback,
which a `lightning` Trainer refuses: hence this one."""

import logging
import math
import time
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)

STUDY = "pruning"
TRIES = 5  # a busy study is tried this often, with a growing pause, before pruning is off


def study_url(sweep_dir: str, storage: str | None = None) -> str:
    """Where a sweep's pruning study lives: `storage`, else SQLite in the sweep folder."""
    return storage or f"sqlite:///{sweep_dir}/{STUDY}.db"


def open_study(url: str, pruner: Any = None) -> Any:
    """The sweep's study, made if new. SQLite allows one writer: wait for its lock."""
    import optuna  # 1.6 s to import: only sweeps that prune pay for it

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    return optuna.create_study(
        storage=storage, study_name=STUDY, pruner=pruner, direction="maximize", load_if_exists=True
    )


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
            log.info(
                "Pruned after epoch %d: %s %.4f is losing to the sweep's other runs.",
                epoch,
                self.monitor,
                value,
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trial = self.trial
        if trial is None:
            return
        import optuna  # as in open_study

        if self.pruned_at is not None:
            self._guard(
                "close the trial",
                lambda: self.study.tell(trial, state=optuna.trial.TrialState.PRUNED),
            )
        elif math.isfinite(self.best):
            self._guard("close the trial", lambda: self.study.tell(trial, self.best))
