"""The train command, `python -m hdr.train [overrides]`: one run, or each run of a sweep,
built from conf/ and trained: claim its folder, resume or skip it, train, test, record.
What the user can fix ends in one line, `Error: ...`; only a bug in hdr shows a trace."""

import contextlib
import errno
import gc
import importlib.util
import logging
import math
import multiprocessing
import os
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from hdr.core.data import DataError
from hdr.core.settings import ConfigError, require
from hdr.runs.checkpoint import CheckpointError, check_resumable, load_model, read_checkpoint
from hdr.runs.config import (
    CONF_DIR,
    check,
    compose,
    config_keys,
    nearest_key,
    register_schemas,
)
from hdr.runs.prune import Pruning
from hdr.runs.records import (
    HEADLINE,
    RecordError,
    RunDir,
    claim,
    gpu_lease,
    rank_zero,
    record_best,
    relative_to_run,
    resume_point,
    start_afresh,
    task_overrides,
    write_result,
)
from hdr.runs.report import tensorboard_logger

log = logging.getLogger(__name__)
USER_ERRORS = (ConfigError, DataError, CheckpointError, RecordError, FloatingPointError)


class UserError(Exception):
    """Something the user gave, or the machine, stops the command; the message is the fix."""


def train(cfg: DictConfig, resumed: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Build, fit on train/val, test the best checkpoint, record. `resumed`: ckpt_path is this
    run's own last.ckpt (a killed run coming back), started afresh if it is damaged."""
    check(cfg)  # bad values stop here, named, before any data is read
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("torch_threads"))
    start = time.perf_counter()
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    if cfg.get("init_from"):
        start_from(model, cfg.init_from)
    callbacks = [instantiate(n) for n in (cfg.get("callbacks") or {}).values() if "_target_" in n]
    loggers = [logger(k, n) for k, n in (cfg.get("logger") or {}).items() if "_target_" in n]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resume, start_step, finished = cfg.get("ckpt_path"), 0, False
    if not cfg.get("train"):  # test a checkpoint as it is: the net its own record describes
        model = load_model(resume)
        trainer.validate(model, datamodule=datamodule)
    elif resume:
        try:
            ckpt = read_checkpoint(resume)  # once: then Lightning loads it
        except CheckpointError as e:
            if not resumed:
                raise
            log.warning("%s Starting this run again.", e)
            start_afresh(Path(cfg.paths.output_dir))
            resume = None
        if resume:
            own = Path(os.path.realpath(resume)).is_relative_to(
                os.path.realpath(cfg.paths.output_dir)
            )
            model_cfg, epochs = OmegaConf.to_container(cfg.model), cfg.trainer.get("max_epochs")
            start_step, finished = check_resumable(ckpt, resume, model_cfg, epochs, own_run=own)
            del ckpt
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        step, epochs = trainer.global_step, trainer.current_epoch
        if not step and (last := RunDir(Path(cfg.paths.output_dir)).last).is_file():
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
    best = (keeper.best_model_path if keeper and cfg.get("train") else resume) or ""
    if best and not Path(best).is_file():
        raise CheckpointError(f"The run's best checkpoint {best} is gone: run it again.")
    if "val/acc_best" not in metrics and cfg.get("train") and keeper is not None:
        score = keeper.best_model_score  # resumed after its last epoch: the kept best's score
        metrics["val/acc_best"] = float(score) if score is not None else math.nan
    if not cfg.get("train"):
        metrics["val/acc_best"] = metrics.get("val/acc", math.nan)
    if cfg.get("test") and pruned_at is None:  # a pruned run is not worth testing
        tested = (best or None) if cfg.get("train") else None  # train=false: the model is it
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    result = {
        # fast_dev_run: a smoke test, its scores from a batch; it saves no checkpoint
        "status": "pruned" if pruned_at is not None else "smoke" if trainer.fast_dev_run else "ok",
        "pruned_at": pruned_at,
        **{key: metrics.get(metric) for metric, key, _ in HEADLINE},
        "val_images": val_images,
        "epochs": epochs if cfg.get("train") else trainer.current_epoch,
        "seconds": round(time.perf_counter() - start, 1),
        "checkpoint": str(Path(best).resolve()) if best else "",
    }
    if trainer.is_global_zero:
        record(cfg, trainer, metrics, result)
    return metrics, {
        "result": result,
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "trainer": trainer,
    }


def record(cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float], result: dict) -> None:
    """result.json (its checkpoint relative to the run folder, so the record holds if the
    folder moves), the HPARAMS entry beside the run's curves, and the headline in the log."""
    keep = {
        "model": {k: v for k, v in cfg.model.items() if not k.startswith("_")},
        "data": {"batch_size": cfg.data.batch_size},
        **{k: cfg.trainer.get(k) for k in ("max_epochs", "precision")},
        **{k: cfg.get(k) for k in ("seed", "tags")},
    }  # what changes the model it trains, not where files are; and the user's tags
    hparams = OmegaConf.to_container(OmegaConf.create(keep), resolve=True)
    hp = {f"hp/{m.replace('/', '_')}": metrics[m] for m, _, _ in HEADLINE if m in metrics}
    for each in trainer.loggers:  # TensorBoard's HPARAMS entry holds the headline too
        board = each is tensorboard_logger(trainer)
        each.log_hyperparams(hparams, **({"metrics": hp} if board else {}))
        each.save()
    if (wandb := sys.modules.get("wandb")) is not None and wandb.run is not None:
        wandb.finish()  # else the next run of a sweep's process would log into it
    for metric, _, words in HEADLINE:
        if metric in metrics:
            log.info("%s: %.2f%%", words, 100 * metrics[metric])
    out = cfg.paths.output_dir
    log.info(
        "Outputs (checkpoints, plots, logs): %s\nTensorBoard: tensorboard --logdir %s", out, out
    )
    ckpt = relative_to_run(result["checkpoint"], out) if result["checkpoint"] else ""
    tags = hparams["tags"]
    write_result(out, **{**result, "checkpoint": ckpt}, tags=tags, overrides=task_overrides())


def logger(name: str, node: DictConfig) -> Any:
    """The run's logger `name`; one whose package is missing is one line naming its extra."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if not isinstance(e.__cause__, ImportError):
            raise
        fix = f"pip install -e '.[{name}]'"
        if name not in (metadata.metadata("hdr").get_all("Provides-Extra") or []):
            fix = "install it"  # a logger of the user's own: Lightning's hint says which
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
    """Torch threads per run. "auto": the CPUs the scheduler gave this task (SLURM's
    SLURM_CPUS_PER_TASK, a Ray task's), else the cores split between parallel joblib jobs,
    else torch's default."""
    import torch

    if setting in (None, "auto"):
        setting = os.environ.get("SLURM_CPUS_PER_TASK", "")
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            setting = int(ray.get_runtime_context().get_assigned_resources().get("CPU") or 0)
        elif not (setting.isdigit() and int(setting) >= 1):
            n_jobs = (
                HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
            )
            cores = os.cpu_count() or 1
            setting = (
                cores // (cores if n_jobs < 0 else n_jobs) if n_jobs else 0
            )  # joblib: -1 = all
        if not int(setting):
            return
    torch.set_num_threads(max(1, int(setting)))
    log.info("torch threads: %d", torch.get_num_threads())


def die_with_parent() -> None:
    """End this process once the one that started it is gone: loky kept a killed sweep's
    workers training for 10 minutes and more. A run ended so is as one killed with it: the
    same command resumes it from its last.ckpt. Once a process."""
    if any(t.name == "hdr-die-with-parent" for t in threading.enumerate()):
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="hdr-die-with-parent", daemon=True).start()


def disk_full(e: BaseException, then: str = "run the same command again") -> str | None:
    """The one-line advice for a full disk (or quota), None for any other error."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"The disk is full{where}. Free some space, then {then}: what was written is whole."
    return None


def run(cfg: DictConfig) -> float | None:
    """One run of a sweep or on its own: claim its folder, then resume, skip or train it.
    In a sweep, a run that fails is recorded and the others go on (NaN: a failed trial)."""
    quiet()
    if multiprocessing.parent_process() is not None:  # a worker of a sweep's pool (joblib)
        die_with_parent()
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    lead = rank_zero()  # DDP's other ranks join rank 0's run: its folder and records are rank 0's
    try:
        with claim(out, wait=sweeping) if lead else contextlib.nullcontext() as holder:
            if holder:
                raise RecordError(
                    f"{out} is in use by another run ({holder}): wait for it to end, or give "
                    "this run another folder."
                )
            try:
                action, detail = resume_point(out, sweeping)
            except RecordError as e:  # another run's folder: record nothing in it
                if not sweeping:
                    raise
                log.error("Run not started, the sweep goes on: %s", e)
                return math.nan
            if action == "skip":
                val = detail.get("val_acc")
                val = val if isinstance(val, float) else math.nan  # null: not measured
                log.info(
                    "Finished before (%s, val acc %.2f%%): skipped.", detail["status"], 100 * val
                )
                return val
            if action == "resume":
                cfg.ckpt_path = str(detail)
                if lead:
                    log.info("Resuming from %s", detail)
            with own_command(out), contextlib.ExitStack() as gpu:
                if lead and HydraConfig.get().runtime.choices.get("hydra/launcher") == "gpus":
                    count = torch.cuda.device_count()  # one run each at once, on its own
                    cfg.trainer.devices = [gpu.enter_context(gpu_lease(count))]
                return _train(cfg, out, sweeping, resumed=action == "resume")
    except RecordError as e:  # its folder cannot be claimed: in a sweep, the others go on
        if not sweeping:
            raise
        log.error("Run not started, the sweep goes on: %s", e)
        if lead:
            with contextlib.suppress(OSError):
                write_result(out, status="failed", error=str(e), overrides=task_overrides())
        return math.nan


@contextlib.contextmanager
def own_command(out: Path) -> Iterator[None]:
    """Lightning's DDP starts ranks 1.. of a run by running `python -m <__main__> <sys.argv>
    hydra.run.dir=<hydra.run.dir>` again: in a sweep that would start the sweep again, its
    runs claiming folders, and in a joblib, Ray or SLURM worker not even hdr's command. For
    the run, they are this run's own: its overrides, in its folder. After it, its process
    group and Lightning's DDP variables go, so that the process's next run starts its own."""
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
    """Once a process, before its first run. Lightning 2.6 prints, on every start, an
    advert and a deprecation inside its own pytree helper (on torch 2.14): only those two
    are dropped. Its imports leave 400,000 objects that live as long as the process: out of
    the collector's sight, they cost nothing at each full collection (0.17 s) nor at exit
    (0.9 s a process, every job of a sweep: docs/performance.md)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "litlogger" not in r.getMessage()
    )
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


def _train(cfg: DictConfig, out: Path, sweeping: bool, resumed: bool) -> float | None:
    try:
        metrics, objects = train(cfg, resumed)
    except (Exception, SIGTERMException) as e:
        # A sweep's or a named folder is found again by the same command; a new run's
        # folder is named by the time it started, so the command must name it.
        named = any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
        then = (
            "run the same command again"
            if sweeping or named
            else f"run the same command with hydra.run.dir={out}"
        )
        then += ": it resumes this run"
        reason = disk_full(e, then) or (
            one_line(e) if isinstance(e, OmegaConfBaseException) else f"{type(e).__name__}: {e}"
        )
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
        if not rank_zero():  # rank 0 records the end; a failed exit would make Lightning kill it
            log.error("This DDP rank stopped: %s", reason)
            return math.nan
        try:
            write_result(out, status="failed", error=reason, overrides=task_overrides())
        except OSError as write_error:
            log.warning("Could not record the failure in %s (%s).", out, write_error)
        if sweeping:  # one failed run must not stop or hide the others
            log.error("Run failed, the sweep goes on: %s", reason)
            return math.nan
        if isinstance(e, USER_ERRORS) or disk_full(e):  # the message says what to fix
            raise UserError(disk_full(e, then) or str(e)) from None
        if isinstance(e, SIGTERMException):
            raise UserError(
                f"The run was stopped by SIGTERM: resume it with ckpt_path={RunDir(out).last}"
            ) from None
        raise
    if not sweeping and objects["trainer"].is_global_zero:  # a sweep records its best at its end
        row = {**objects["result"], "overrides": " ".join(task_overrides()), "dir": str(out)}
        record_best([row], cfg.paths.best_record)
    return metrics.get(cfg.get("optimized_metric"))  # what a sweeper maximises


class CheckFirst(Callback):
    """Refuses a command before Hydra makes its run's folder, which it does before the run
    starts (conf/hydra/default.yaml): a refused command leaves none. (Hydra turns a
    callback's error into a warning: a refusal exits.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse(lambda: check(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def n_jobs() -> None:  # joblib's; read inside: resolving it may refuse (hdr.gpus)
            value = OmegaConf.select(config, "hydra.launcher.n_jobs")
            rule = "runs at once: 1 or more (-1: one per core)"
            require(value != 0, "hydra.launcher.n_jobs", value, rule)

        refuse(n_jobs)


def refuse(checks: Callable[[], Any]) -> None:
    """Run `checks`; a user's mistake ends the command in one `Error:` line."""
    try:
        checks()
    except (*USER_ERRORS, OmegaConfBaseException) as e:
        sys.exit(f"Error: {one_line(e)}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except (UserError, *USER_ERRORS) as e:  # exit here: Hydra would print its own line first
        sys.exit(f"Error: {e}")
    except (HydraException, OmegaConfBaseException) as e:  # e.g. a Trainer setting it refuses
        sys.exit(f"Error: {one_line(e)}")


def main() -> None:
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
        sys.exit(f"Error: {unknown_key(e) or one_line(e).rstrip('.') + '.' + fix}")
    except OSError as e:  # Hydra making the run's folder, before any run starts
        if e.errno == errno.ENAMETOOLONG:
            name = max(Path(e.filename or "").parts, key=len, default="")
            sys.exit(
                f"Error: a folder name of {len(name.encode()):,} bytes ({name[:30]}...) is too "
                "long: 255 at most. Name the run's folder with hydra.run.dir=PATH "
                "(hydra.sweep.dir and hydra.sweep.subdir in a sweep, whose runs are named by "
                "their overrides), or give fewer overrides."
            )
        sys.exit(
            f"Error: {disk_full(e) or f'cannot write {e.filename}: {e.strerror}'}. Point "
            "paths.log_dir (HDR_LOG_DIR), hydra.run.dir or hydra.sweep.dir at a folder you "
            "can write to."
        )


def unknown_key(e: BaseException) -> str | None:
    """Hydra's refusal of an override, said as its fix: the known key nearest an unknown
    one (Hydra's own advice, +key, adds a key hdr refuses), no + on a key that is there."""
    text = f"{e} {e.__cause__}"
    if there := re.search(r"An item is already at '([^']+)'", text):
        given = next((a for a in sys.argv if a.startswith(f"+{there[1]}=")), f"+{there[1]}")
        return f"{there[1]} is a key already: drop the +, {given[1:]}."
    found = re.search(r"Could not override '([^']+)'|Error merging override \+*([^=\s]+)=", text)
    if not found:
        return None
    key = found[1] or found[2]
    others = [a for a in sys.argv[1:] if "=" in a and not a.lstrip("+~").startswith(f"{key}=")]
    for overrides in (others, []):  # the keys of this config, its groups as chosen
        with contextlib.suppress(Exception):
            known = config_keys(compose(overrides, hydra=True))
            if key in known:  # a value Hydra refuses: its own message says which
                return None
            near = nearest_key(key, known)
            return f"{key} is not a key of the config" + (
                f": did you mean {near}?" if near else "."
            )
    return None


def one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's messages, less blank lines and the cause's repeats; a
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
