"""A run, alone or one of a sweep's: `run` claims its folder, skips, resumes or trains it and
records how it ended; `train` builds, fits, tests and writes result.json.

How a sweep resumes after kill -9: the same command names the same folders (hydra.sweep.dir
given, since the default is a new dated folder; each run's subdir is named by its overrides);
each run claims its folder (a flock, which the kernel drops when the process dies); a run
whose result.json says it finished (ok, pruned, smoke) is skipped, an unfinished one resumes
from checkpoints/last.ckpt, saved every epoch. The rules and the folder's layout:
hdr.runs.records (claim, resume_point, RunDir)."""

import contextlib
import gc
import importlib.util
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, read_write

from hdr.core.checkpoints import CheckpointError, read_checkpoint
from hdr.core.settings import ConfigError
from hdr.runs import records
from hdr.runs.checkpoint import check_resumable, load_model
from hdr.runs.config import check
from hdr.runs.prune import Pruning
from hdr.runs.records import RecordError, RunDir, task_overrides, write_result
from hdr.runs.report import tensorboard_logger
from hdr.utils import UserError

log = logging.getLogger(__name__)


def run(cfg: DictConfig, explain: Callable[[BaseException, str], str | None]) -> float | None:
    """Claim the run's folder, then skip, resume or train it; what a sweeper maximises. A
    failure is recorded with its reason: `explain(e, how it resumes)`, the command's error_line
    (passed in: runs sit below the command), or `Type: message` for a bug. In a sweep, NaN
    lets the others go on (a failed trial); alone, the command says why."""
    quiet()
    if multiprocessing.parent_process() is not None:  # a worker of a sweep's pool (joblib)
        die_with_parent()
    hydra_cfg, out = HydraConfig.get(), Path(cfg.paths.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    lead = records.rank_zero()  # DDP's other ranks join rank 0's run, its folder and records
    then = f"the same {'sweep ' if sweeping else ''}command resumes it"
    if not sweeping and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra):
        then = f"the same command with hydra.run.dir={out} resumes it"  # named by its start
    try:
        with records.claim(out, wait=sweeping) if lead else contextlib.nullcontext() as holder:
            if holder:
                raise RecordError(
                    f"{out} is in use by another run ({holder}): wait for it to end, or give "
                    "this run another folder."
                )
            action, detail = records.resume_point(out, sweeping)
            if action == "skip":  # val_acc null: not measured
                val = detail["val_acc"] if isinstance(detail.get("val_acc"), float) else math.nan
                log.info(
                    "Finished before (%s, val acc %.2f%%): skipped.", detail["status"], 100 * val
                )
                return val
            if action == "resume":
                cfg.ckpt_path = str(detail)
                if lead:
                    log.info("Resuming from %s", detail)
            try:
                if sweeping:  # CheckFirst checks a run's command; a sweep's runs, each here
                    check(cfg)
                with own_command(out), contextlib.ExitStack() as gpu:
                    if lead and hydra_cfg.runtime.choices.get("hydra/launcher") == "gpus":
                        count = torch.cuda.device_count()  # one run each at once, on its own
                        cfg.trainer.devices = [gpu.enter_context(records.gpu_lease(count))]
                    metrics, _ = train(cfg, resumed=action == "resume")
                return metrics.get(cfg.get("optimized_metric"))
            except (Exception, SIGTERMException) as e:
                line = explain(e, then)
                reason = line or f"{type(e).__name__}: {e}"
                if lead:
                    failed(out, reason)
                if sweeping or not lead:  # a DDP rank's failed exit would make Lightning kill it
                    log.error(
                        "Run failed, the sweep goes on: %s" if sweeping else "Run failed: %s",
                        reason,
                    )
                    return math.nan
                if line is None:
                    raise
                raise UserError(line) from None
    except RecordError as e:  # a folder it cannot claim, or not this run's
        if not sweeping:
            raise
        log.error("Run not started, the sweep goes on: %s", e)
        if lead and not RunDir(out).result.exists():  # never over another run's record
            failed(out, str(e))
        return math.nan


def failed(out: Path, reason: str) -> None:
    """Record that the run in `out` failed, and why."""
    with contextlib.suppress(OSError):  # a full disk: the reason says so
        write_result(out, status="failed", error=reason, overrides=task_overrides())


def train(cfg: DictConfig, resumed: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Build, fit on train/val, test the best checkpoint, record. `resumed`: ckpt_path is this
    run's own last.ckpt (a killed run coming back), started afresh if it is damaged."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("torch_threads"))
    start, out = time.perf_counter(), Path(cfg.paths.output_dir)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    if cfg.get("init_from"):
        start_from(model, cfg.init_from)
    callbacks = [instantiate(n) for n in (cfg.get("callbacks") or {}).values() if "_target_" in n]
    loggers = [logger(k, n) for k, n in (cfg.get("logger") or {}).items() if "_target_" in n]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    fits, resume, start_step, finished = cfg.get("train"), cfg.get("ckpt_path"), 0, False
    if not fits:  # test a checkpoint as it is: the net its own record describes
        model = load_model(resume)
        trainer.validate(model, datamodule=datamodule)
    elif resume:
        try:
            ckpt = read_checkpoint(resume)  # once: then Lightning loads it
        except CheckpointError as e:
            if not resumed:
                raise
            log.warning("%s Starting this run again.", e)
            records.start_afresh(out)
            resume = None
        if resume:
            own = Path(os.path.realpath(resume)).is_relative_to(os.path.realpath(out))
            model_cfg, epochs = OmegaConf.to_container(cfg.model), cfg.trainer.get("max_epochs")
            start_step, finished = check_resumable(ckpt, resume, model_cfg, epochs, own_run=own)
            del ckpt
    if fits:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        step, epochs = trainer.global_step, trainer.current_epoch
        if not step and (last := RunDir(out).last).is_file():
            saved = read_checkpoint(last)  # ddp_spawn trained in processes of its own: only
            step, epochs = saved["global_step"], saved["epoch"] + 1  # their files tell
        if step == start_step and not finished:
            raise ConfigError(
                "The run trained nothing: trainer.max_steps, limit_train_batches or the "
                "epochs left after ckpt_path leave no step to train. Give it steps to train."
            )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The validation images scored (ranks runs: records.sure_acc), before test() takes the count.
    val_images = min(
        cfg.data.val_size, int(sum(trainer.num_val_batches)) * cfg.data.eval_batch_size
    )
    pruned_at = next((c.pruned_at for c in callbacks if isinstance(c, Pruning)), None)
    keeper = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # the best's
    best = (keeper.best_model_path if keeper and fits else resume) or ""
    if best and not Path(best).is_file():
        raise CheckpointError(f"The run's best checkpoint {best} is gone: run it again.")
    if "val/acc_best" not in metrics and fits and keeper is not None:
        score = keeper.best_model_score  # resumed after its last epoch: the kept best's score
        metrics["val/acc_best"] = float(score) if score is not None else math.nan
    if not fits:
        metrics["val/acc_best"] = metrics.get("val/acc", math.nan)
    if cfg.get("test") and pruned_at is None:  # a pruned run is not worth testing
        tested = (best or None) if fits else None  # train=false: the model is it
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    result = {
        # fast_dev_run: a smoke test, its scores from a batch; it saves no checkpoint
        "status": "pruned" if pruned_at is not None else "smoke" if trainer.fast_dev_run else "ok",
        "pruned_at": pruned_at,
        **{key: metrics.get(metric) for metric, key, _ in records.HEADLINE},
        "val_images": val_images,
        "epochs": epochs if fits else trainer.current_epoch,
        "seconds": round(time.perf_counter() - start, 1),
        "checkpoint": str(Path(best).resolve()) if best else "",
    }
    if trainer.is_global_zero:
        record(cfg, trainer, metrics, result)
    objects = {"datamodule": datamodule, "model": model, "trainer": trainer, "cfg": cfg}
    return metrics, {"result": result, **objects}


def record(cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float], result: dict) -> None:
    """result.json (its checkpoint relative to the run folder, so the record holds if the
    folder moves), the HPARAMS entry beside the run's curves, and the headline in the log."""
    keep = {  # what changes the model it trains, not where files are; and the user's tags
        "model": {k: v for k, v in cfg.model.items() if not k.startswith("_")},
        "data": {"batch_size": cfg.data.batch_size},
        **{k: cfg.trainer.get(k) for k in ("max_epochs", "precision")},
        **{k: cfg.get(k) for k in ("seed", "tags")},
    }
    hparams = OmegaConf.to_container(OmegaConf.create(keep), resolve=True)
    hp = {f"hp/{m.replace('/', '_')}": metrics[m] for m, _, _ in records.HEADLINE if m in metrics}
    for each in trainer.loggers:  # TensorBoard's HPARAMS entry holds the headline too
        board = each is tensorboard_logger(trainer)
        each.log_hyperparams(hparams, **({"metrics": hp} if board else {}))
        each.save()
    if (wandb := sys.modules.get("wandb")) is not None and wandb.run is not None:
        wandb.finish()  # else the next run of a sweep's process would log into it
    for metric, _, words in records.HEADLINE:
        if metric in metrics:
            log.info("%s: %.2f%%", words, 100 * metrics[metric])
    out = cfg.paths.output_dir
    log.info("Outputs: %s\nTensorBoard: tensorboard --logdir %s", out, out)
    ckpt = records.relative_to_run(result["checkpoint"], out) if result["checkpoint"] else ""
    write_result(
        out, **{**result, "checkpoint": ckpt}, tags=hparams["tags"], overrides=task_overrides()
    )


def logger(name: str, node: DictConfig) -> Any:
    """The run's logger `name`; one whose package is missing is one line naming its extra."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if not isinstance(e.__cause__, ImportError):
            raise
        ours = name in (metadata.metadata("hdr").get_all("Provides-Extra") or [])
        fix = f"pip install -e '.[{name}]'" if ours else "install it"  # Lightning's hint: which
        raise ConfigError(
            f"logger.{name} needs a package that is not installed ({e.__cause__}): {fix}"
        ) from None


def start_from(model: Any, checkpoint: str) -> None:
    """Fine-tuning: `model` takes the weights of `checkpoint`, whose net must be the same."""
    start = load_model(checkpoint)
    if start.hparams.net != model.hparams.net:
        raise ConfigError(
            f"init_from={checkpoint} holds a net {start.hparams.net}, this run trains "
            f"{model.hparams.net}: start from a checkpoint of the same net, or set model.net."
        )
    model.net.load_state_dict(start.net.state_dict())
    log.info("Starting from the weights of %s", checkpoint)


def set_threads(setting: int | str | None) -> None:
    """Torch threads per run. "auto": the CPUs the scheduler gave this task (SLURM's, a Ray
    task's), else the cores split between a sweep's joblib jobs, else torch's default."""
    if setting in (None, "auto"):
        setting, ray = os.environ.get("SLURM_CPUS_PER_TASK", "0"), sys.modules.get("ray")
        n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else 0
        if ray is not None and ray.is_initialized():
            setting = ray.get_runtime_context().get_assigned_resources().get("CPU") or 0
        elif not int(setting) and n_jobs:  # -1: a job per core
            setting = (os.cpu_count() or 1) // n_jobs if n_jobs > 0 else 1
        if not int(setting):
            return
    torch.set_num_threads(max(1, int(setting)))
    log.info("torch threads: %d", torch.get_num_threads())


def die_with_parent() -> None:
    """End this process once the one that started it is gone (loky kept a killed sweep's
    workers training for 10 minutes and more): the same command resumes its run."""
    if any(t.name == "hdr-die-with-parent" for t in threading.enumerate()):
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="hdr-die-with-parent", daemon=True).start()


@contextlib.contextmanager
def own_command(out: Path) -> Iterator[None]:
    """DDP starts ranks 1.. as `python -m <__main__> <sys.argv> hydra.run.dir=...`: in a sweep
    (or a joblib, Ray, SLURM worker) that is not this run. Here they are the run's own; after
    it, its process group and DDP's variables go."""
    argv, main, env = sys.argv, sys.modules["__main__"], dict(os.environ)
    name = f"--config-name={HydraConfig.get().job.config_name}"  # train, or hdr.eval's eval
    sys.argv = [argv[0], name, *task_overrides(), "hydra.mode=RUN"]
    command = types.ModuleType("__main__")  # Lightning reads only its spec: `python -m hdr.train`
    command.__spec__ = importlib.util.find_spec("hdr.train")
    sys.modules["__main__"] = command
    with read_write(HydraConfig.get()):
        HydraConfig.get().run.dir = str(out)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.argv, sys.modules["__main__"] = argv, main
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)


def quiet() -> None:
    """Once a process, before its first run: drop Lightning's start-up advert and a
    deprecation inside its pytree helper, and freeze the imports' 400,000 objects out of the
    collector's sight (0.17 s each full collection, 0.9 s at each exit: docs/performance.md)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "litlogger" not in r.getMessage()
    )
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
