"""A run's folder and its records: the folder's layout (RunDir), the claim on it, result.json,
what a run finds when it comes back to its folder, and best.json, the best model so far.

Every record is written to a temporary file and renamed into place, so a kill never leaves
half a record. A damaged record is named, never costing a finished run: a damaged result.json
makes its run resume, a damaged best.json is set aside and rewritten."""

import fcntl
import itertools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig

from hdr.utils import write_atomic

log = logging.getLogger(__name__)

FINISHED = ("ok", "pruned", "smoke")  # a sweep that comes back to such a run skips it
NO_CHECKPOINT = "it saved no checkpoint (callbacks=none)"  # ranked in its sweep, never served
# The headline figures: the metric, its key in result.json and best.json, and its words.
HEADLINE = (
    ("val/acc_best", "val_acc", "Best validation accuracy"),
    ("test/acc", "test_acc", "Test accuracy"),
    ("test/drawings_acc", "drawings_acc", "Drawings read right (hdr.core.drawings)"),
    ("val/drawings_acc", "val_drawings_acc", "Validation drawings read right (ranks for the app)"),
)


@dataclass(frozen=True)
class RunDir:
    """A run's folder and what it holds, named here only: the YAML reads the parts through
    the `hdr.run` resolver, e.g. ${hdr.run:${paths.output_dir},checkpoints}."""

    path: Path
    last_stem: str = "last"  # checkpoints/last.ckpt: rewritten every epoch, the resume point
    confusion_png: str = "confusion_matrix.png"
    mistakes_png: str = "mistakes.png"

    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / f"{self.last_stem}.ckpt")
    tensorboard = property(lambda self: self.path / "tensorboard")
    result = property(lambda self: self.path / "result.json")
    claim = property(lambda self: self.path / ".claim")  # flock-held while a process trains
    overrides = property(lambda self: self.path / ".hydra" / "overrides.yaml")  # Hydra's

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        return cls(Path(checkpoint).parent.parent)


class RecordError(ValueError):
    """A record is damaged or a folder is not this run's; the message says what to do."""


@contextmanager
def claim(run_dir: str | Path, wait: bool = False) -> Iterator[str | None]:
    """Hold `run_dir` while this process trains in it: an exclusive flock, which the kernel
    lets go of however the process ends (kill -9 too). Yields None once claimed; if another
    process holds it, who that is, or with `wait` waits for it (a sweep run again while the
    first one's jobs still train: each run waits for its twin, then skips or resumes it)."""
    path = RunDir(Path(run_dir)).claim
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder in its place, or no right to write there
        raise RecordError(
            f"Cannot hold {path.parent} for this run: {path} cannot be opened as a file "
            f"({e.strerror}). Remove or fix it, then run the same command again."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                yield holder
                return
            log.warning("%s is in use by another run (%s): waiting for it.", path.parent, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        since = time.strftime("%H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since {since}".encode(), 0)
        yield None
    finally:
        os.close(fd)


@contextmanager
def gpu_lease(count: int, folder: Path | None = None) -> Iterator[int]:
    """The index of one of the node's `count` GPUs that no other run holds, held while this
    run trains (hydra/launcher=gpus: one run per GPU); waits for one if all are held. A
    flock, as `claim`'s, on a file named as CUDA_VISIBLE_DEVICES names the GPU: jobs that
    see different GPUs (SLURM's) never wait for each other."""
    folder = folder or Path(tempfile.gettempdir()) / f"hdr-gpus-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    names = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(count)))
    for attempt in itertools.count():
        for index, name in enumerate(names.split(",")[:count]):
            fd = os.open(folder / f"gpu-{name.strip()}", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield index
            finally:
                os.close(fd)
            return
        if not attempt:
            log.warning("All %d GPUs are held by other runs (%s): waiting for one.", count, folder)
        time.sleep(1)


def task_overrides() -> list[str]:
    """This run's command-line overrides: what makes it this run and not another."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def rank_zero() -> bool:
    """False in DDP's other processes, which join rank 0's run in its folder: by Lightning's
    own rule (RANK, LOCAL_RANK, else SLURM_PROCID: a SLURM task of a run of several), and on
    a node other than the first (NODE_RANK)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def same_run(a: list[str], b: list[str], exclude: list[str]) -> bool:
    """Whether two override lists make the same run, the keys that change no result aside
    (`exclude`: those left out of run folders' names, override_dirname.exclude_keys)."""

    def identity(overrides: list[str]) -> list[str]:
        return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in exclude]

    return identity(a) == identity(b)


def finished_run(run_dir: str | Path, overrides: list[str], exclude: list[str]) -> dict | None:
    """The record of `run_dir` if it holds this run, finished (ok or pruned), else None."""
    result = read_result(run_dir)
    if result is None or result.get("status") not in FINISHED:
        return None
    recorded = result.get("overrides")
    return (
        result if isinstance(recorded, list) and same_run(recorded, overrides, exclude) else None
    )


def resume_point(out: Path, sweeping: bool) -> tuple[str, Any]:
    """What to do in this run's folder: ("start", None), ("resume", last.ckpt) or, in a sweep
    coming back to a finished run, ("skip", its result). A run that failed, was killed or
    whose record is damaged resumes from its last.ckpt if it has one."""
    run = RunDir(out)
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
            f"hydra.run.dir out for a new folder, or resume from {run.last} with ckpt_path=..."
        )
    if result is not None and result.get("damaged"):
        log.warning("%s: %s. Resuming the run instead.", out, result["error"])
    if run.last.exists():  # killed or failed part-way: go on from its last epoch
        return "resume", run.last
    start_afresh(out)
    return "start", None


def start_afresh(out: Path) -> None:
    """Clear what an earlier attempt left in the folder, which a new start would mix in."""
    for part in (RunDir(out).checkpoints, RunDir(out).tensorboard):
        if rank_zero():
            shutil.rmtree(part, ignore_errors=True)


def relative_to_run(checkpoint: str | Path, run_dir: str | Path) -> str:
    """How a record names a checkpoint: relative to its run folder when inside it, so that a
    run or sweep folder moved or copied still finds its own; else the absolute path."""
    path, run = Path(os.path.realpath(checkpoint)), Path(os.path.realpath(run_dir))
    return str(path.relative_to(run)) if path.is_relative_to(run) else str(path)


def write_result(run_dir: str | Path, **fields: Any) -> None:
    """Record how a run ended: status, accuracies, checkpoint, and where it ran."""
    fields.setdefault("host", os.uname().nodename)
    fields.setdefault("pid", os.getpid())
    ray = sys.modules.get("ray")  # a Ray worker: which node of the cluster ran this
    if ray is not None and ray.is_initialized():
        fields.setdefault("ray_node", ray.get_runtime_context().get_node_id())
    # Strict JSON: what was not measured (NaN, no validation) is null, read as missing.
    fields = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()
    }
    text = json.dumps(fields, indent=2, default=str, allow_nan=False)
    write_atomic(RunDir(Path(run_dir)).result, text)


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's result, its checkpoint as a path; None if it has none (killed, or running).
    A damaged one reads as failed and `damaged`, so that a run coming back resumes."""
    path = RunDir(Path(run_dir)).result
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        result = f"{type(e).__name__}: {e}"
    if not (isinstance(result, dict) and isinstance(result.get("status"), str)):
        return {
            "status": "failed",
            "error": f"damaged {path.name} ({str(result)[:100]})",
            "damaged": True,
        }
    if isinstance(result.get("checkpoint"), str) and result["checkpoint"]:
        result["checkpoint"] = str(Path(run_dir) / result["checkpoint"])
    return {**result, "dir": str(run_dir)}


def read_overrides(run_dir: Path) -> list[str] | None:
    """A run folder's overrides, as Hydra wrote them; None for a folder that is not a run's."""
    try:
        overrides = yaml.safe_load(RunDir(run_dir).overrides.read_text()) or []
    except (OSError, yaml.YAMLError):
        return None
    ok = isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    return overrides if ok else None


def _accuracy(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1


def distrust(row: dict[str, Any]) -> str | None:
    """Why a run's record is no model to serve or rank, or None: it ended ok with a val_acc in
    [0, 1] and names a checkpoint that is there, inside its own run folder. (A record forged
    by someone who can write your files is beyond what a record can prove.)"""
    if row.get("status") != "ok" or not _accuracy(row.get("val_acc")):
        return "not finished with a val_acc in [0, 1]"
    if not row.get("checkpoint"):
        return NO_CHECKPOINT
    folder = Path(str(row.get("dir") or ""))
    ckpt = folder / str(row.get("checkpoint"))  # a path relative to it, or absolute
    if not ckpt.resolve().is_relative_to(folder.resolve()):
        return f"its checkpoint {ckpt} is not inside its run folder {folder}"
    return None if ckpt.is_file() else f"its checkpoint {ckpt} is gone"


def read_best(record: str | Path) -> dict[str, Any]:
    """The best-model record; RecordError names a missing or damaged one and the fix."""
    record, fix = Path(record), "Train again (make train) or pass --checkpoint PATH."
    if not record.exists():
        raise RecordError(f"No model recorded yet: {record} does not exist. {fix}")
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError) as e:  # a folder, unreadable, empty or not JSON
        raise RecordError(f"{record} is damaged ({type(e).__name__}: {e}). {fix}") from None
    ok = isinstance(entry, dict) and isinstance(entry.get("checkpoint"), str)
    if not (ok and _accuracy(entry.get("val_acc"))):
        raise RecordError(
            f"{record} is damaged (no checkpoint and a val_acc in [0, 1] in it). {fix}"
        )
    return entry


def sure_acc(row: dict[str, Any]) -> float:
    """What runs are ranked by: the validation accuracy a run is sure of at 95%, the lower end
    of the Wilson interval on its val_images (100 of 100: 0.963, below 4,949 of 5,000: 0.987);
    a record from before the count was kept, its val_acc."""
    p, n, z = row["val_acc"], row.get("val_images"), 1.96
    if type(n) is not int or n < 1:
        return p
    low = p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return low / (1 + z * z / n)


def record_best(rows: list[dict[str, Any]], record: str | Path) -> dict[str, Any] | None:
    """Point `record` at the best trusted run of `rows` if it beats the one recorded. A
    damaged record is set aside as `<name>.bad-<time>` and replaced. Read, compare and write
    are one step under a lock, so two runs ending at once never leave the worse one. Never
    fails the run or sweep that calls it: what goes wrong is one warning."""
    record = Path(record)
    best = max((r for r in rows if distrust(r) is None), key=sure_acc, default=None)
    if best is None:
        return None
    try:
        if record.exists() and not record.is_file():
            raise OSError(f"{record} is a folder: set paths.best_record to a file")
        record.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(record.with_name(f".{record.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # let go of by the kernel when the process ends
            if record.exists():
                try:
                    current = read_best(record)
                    if Path(current["checkpoint"]).is_file():  # one that is gone is replaced
                        if why := distrust({"status": "ok", "dir": current.get("dir"), **current}):
                            raise RecordError(f"{record} is damaged: not to be trusted, as {why}.")
                        if sure_acc(current) >= sure_acc(best):
                            return current
                except RecordError as e:
                    aside = record.with_name(f"{record.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
                    os.replace(record, aside)
                    log.warning("%s Set aside as %s; writing a new one.", e, aside.name)
            keys = ("val_acc", "val_images", "test_acc", "overrides", "dir")
            entry = {k: best.get(k) for k in keys}
            entry["checkpoint"] = str((Path(best["dir"]) / best["checkpoint"]).resolve())
            write_atomic(record, json.dumps(entry, indent=2))
            return entry
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("Could not record the best model in %s (%s).", record, e)
        return None


def recipe_of(result: dict[str, Any]) -> str | None:
    """The recipe a run followed: its experiment=... override ("seed" is "student"), else
    "default"; None when its overrides are damaged (not a list of strings)."""
    overrides = result.get("overrides") or []
    overrides = overrides.split() if isinstance(overrides, str) else overrides
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        return None
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "default")
    return "student" if name == "seed" else name


def trusted_runs(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished, trusted run under log_dir (runs and sweeps), with its "recipe"."""
    results = (read_result(path.parent) or {} for path in Path(log_dir).rglob("result.json"))
    return [{**r, "recipe": recipe_of(r)} for r in results if distrust(r) is None]


def best_per_recipe(log_dir: str | Path) -> list[dict[str, Any]]:
    """The best trusted run of each recipe under log_dir, by sure_acc, best first."""
    best: dict[str, dict[str, Any]] = {}
    for run in sorted(trusted_runs(log_dir), key=sure_acc):
        best[run["recipe"]] = run  # the last, the surest, stays
    return sorted(best.values(), key=lambda r: -sure_acc(r))


def best_on_drawings(log_dir: str | Path) -> dict[str, Any] | None:
    """The trusted run under log_dir that reads validation drawings best, ties to the
    better val_acc; None when no record has that score."""
    scored = [r for r in trusted_runs(log_dir) if _accuracy(r.get("val_drawings_acc"))]
    return min(scored, key=lambda r: (-r["val_drawings_acc"], -sure_acc(r)), default=None)
