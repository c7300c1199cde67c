"""Stopping a sweep's hopeless runs early with Optuna's pruners.

Every run of a sweep reports its validation accuracy after each epoch to one Optuna study
kept in the sweep folder (SQLite), whichever launcher started it (basic, joblib, Ray, the
Optuna sweeper); the pruner compares it with the other runs at the same epoch and stops it
when it is losing. hydra-optuna-sweeper cannot prune (its jobs never see their trial), so the
study here is our own, beside the sweeper's.
"""

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


def open_storage(url: str) -> Any:
    """An Optuna storage that waits for a lock another run holds (SQLite allows one writer)
    rather than failing at once."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def create_study(url: str) -> None:
    """Create the sweep's pruning study once, before its runs start (two runs creating one
    SQLite schema at the same moment collide); a study already there is kept."""
    import optuna

    optuna.create_study(
        storage=open_storage(url), study_name=STUDY, direction="maximize", load_if_exists=True
    )


def retried(what: str, fn: Any) -> Any:
    """fn(), tried up to TRIES times while the study is busy (a lock, a connection)."""
    for attempt in range(TRIES):
        try:
            return fn()
        except Exception as e:  # sqlalchemy's OperationalError and kin, by any name
            if attempt == TRIES - 1:
                raise RuntimeError(f"{what}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
            time.sleep(0.5 * 2**attempt)
    return None


class Pruning(L.Callback):
    """Report `monitor` every epoch; stop the run when the sweep's pruner says so.

    method: none | median (below the median of the finished runs at that epoch) | halving
    (successive halving: at epochs 1, 3, 9, ... only the best third goes on).
    Inert outside a multirun, and with method none. A study that cannot be reached (damaged,
    gone, busy past its retries) turns pruning off for this run with one warning: it never
    fails the run.
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
        self.url = study_url(HydraConfig.get().sweep.dir, self.storage)
        pruner = (
            optuna.pruners.MedianPruner(self.startup_runs, n_warmup_steps=self.warmup_epochs)
            if self.method == "median"
            else optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        )

        def ask() -> Any:  # the sweep made the study; a run started some other way makes it
            storage = open_storage(self.url)
            self.study = optuna.create_study(
                storage=storage,
                study_name=STUDY,
                pruner=pruner,
                direction="maximize",
                load_if_exists=True,
            )
            return self.study.ask()

        self.trial = self._guard("open the study", ask)

    def _guard(self, what: str, fn: Any) -> Any:
        """fn() with retries; on failure pruning is off for this run, said once."""
        try:
            return retried(what, fn)
        except RuntimeError as e:
            log.warning(
                "Pruning is off for this run: could not %s in %s (%s). If that file is "
                "damaged, delete it: the next sweep starts a new study.",
                what,
                self.url,
                e.__cause__ or e,
            )
            self.trial = None
            return None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if self.trial is None or trainer.sanity_checking or self.monitor not in metrics:
            return
        value = float(metrics[self.monitor])
        self.best = max(self.best, value)
        epoch = trainer.current_epoch + 1  # epochs done: the pruner's "step"
        trial = self.trial

        def report() -> bool:
            trial.report(value, step=epoch)
            return epoch >= self.warmup_epochs and trial.should_prune()

        if self._guard("report to the study", report):
            self.pruned_at = epoch
            trainer.should_stop = True
            log.info(
                "Pruned after epoch %d: %s %.4f is losing to the sweep's other runs.",
                epoch,
                self.monitor,
                value,
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None:
            return
        import optuna

        trial = self.trial
        if self.pruned_at is not None:
            self._guard(
                "close the trial",
                lambda: self.study.tell(trial, state=optuna.trial.TrialState.PRUNED),
            )
        elif math.isfinite(self.best):
            self._guard("close the trial", lambda: self.study.tell(trial, self.best))
