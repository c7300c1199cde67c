"""A run's folder and its one record, result.json. The folder's layout is RunDir's (the
tree is there); how a folder is resumed is `claim` and `resume_point`: a run holds its
folder (a flock the kernel lets go of, kill -9 too), then reads its result.json: a sweep
skips a finished run, a killed or failed one goes on from checkpoints/last.ckpt, else it
starts afresh. `scan` reads every run under a folder once: the leaderboard, the app's
models, the `best_of` resolver and the SLURM launcher's skip are its answers.

Records are written to a temporary file and renamed (hdr.utils.write_atomic): a kill never
leaves half of one. A damaged one is named, never costing a finished run: its run resumes."""

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

from hdr.utils import UserError, write_atomic

log = logging.getLogger(__name__)

FINISHED = ("ok", "pruned", "smoke")  # a sweep that comes back to such a run skips it
NO_CHECKPOINT = "it saved no checkpoint (callbacks=none)"  # ranked in its sweep, never served
NO_RESULT = "no result (still training, or killed)"  # a run folder without result.json
# The headline figures: the metric, its key in result.json, and its words.
HEADLINE = (
    ("val/acc_best", "val_acc", "Best validation accuracy"),
    ("test/acc", "test_acc", "Test accuracy"),
    ("test/drawings_acc", "drawings_acc", "Drawings read right (hdr.core.drawings)"),
    ("val/drawings_acc", "val_drawings_acc", "Validation drawings read right (ranks for the app)"),
)


@dataclass(frozen=True)
class RunDir:
    """A run's folder, the one description of its layout. It is hydra.run.dir, or for a
    sweep's run hydra.sweep.dir/hydra.sweep.subdir, under paths.log_dir (outputs/): see
    conf/hydra/default.yaml. The YAML names its parts as ${paths.output_dir}/checkpoints.

        .hydra/overrides.yaml       what makes it this run (Hydra writes it)
        .claim                      flock-held while a process trains in it (claim)
        result.json                 how it ended (write_result); none while it trains
        checkpoints/epoch_NNN.ckpt  its best epoch by val/acc: what the app serves
        checkpoints/last.ckpt       rewritten every epoch: where a resume goes on
        tensorboard/                its curves, pictures and hparams
        confusion_matrix.png, mistakes.png   (hdr.runs.report)

    A sweep's folder holds one such folder per run, and leaderboard.csv/.md (hdr.runs.sweep)."""

    path: Path
    confusion_png: str = "confusion_matrix.png"
    mistakes_png: str = "mistakes.png"

    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / "last.ckpt")
    tensorboard = property(lambda self: self.path / "tensorboard")
    result = property(lambda self: self.path / "result.json")
    claim = property(lambda self: self.path / ".claim")
    overrides = property(lambda self: self.path / ".hydra" / "overrides.yaml")

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        return cls(Path(checkpoint).parent.parent)


class RecordError(UserError, ValueError):
    """A record is damaged or a folder is not this run's; the message says what to do."""


@contextmanager
def claim(run_dir: str | Path, wait: bool = False) -> Iterator[str | None]:
    """Hold `run_dir` while this process trains in it (a flock: let go of however the process
    ends). Yields None once held; if another process holds it, who, or with `wait` (a sweep run
    again while its first command's jobs train) waits for it, then skips or resumes the run."""
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
        who = f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%H:%M:%S')}"
        os.pwrite(fd, who.encode(), 0)
        yield None
    finally:
        os.close(fd)


@contextmanager
def gpu_lease(count: int, folder: Path | None = None) -> Iterator[int]:
    """The index of one of `count` GPUs no other run holds, held while this run trains
    (hydra/launcher=gpus), waiting for one if all are. A flock on a file named as
    CUDA_VISIBLE_DEVICES names it: jobs seeing different GPUs (SLURM's) never wait."""
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
    """False in DDP's other processes, which join rank 0's run: Lightning's rule (RANK,
    LOCAL_RANK, else SLURM_PROCID), and on a node other than the first (NODE_RANK)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def same_run(a: Any, b: list[str], exclude: list[str]) -> bool:
    """Whether overrides `a` (as recorded: a list, if not damaged) make the same run as `b`,
    the keys that change no result aside (`exclude`: override_dirname.exclude_keys)."""

    def kept(overrides: list) -> list:
        return [o for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in exclude]

    return isinstance(a, list) and kept(a) == kept(b)


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
    if result and result["status"] in FINISHED:
        if sweeping:
            return "skip", result
        raise RecordError(
            f"{out} already holds a run that ended ({result.get('status')}): leave "
            f"hydra.run.dir out for a new folder, or resume from {run.last} with ckpt_path=..."
        )
    if result and result.get("damaged"):
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
    """A run's result with its "dir" and its "checkpoint" as a path ("": none); None if it
    has none (killed, or running). A damaged one reads as failed and `damaged`, its error
    naming it, so that a run coming back resumes."""
    try:
        with open(os.path.join(run_dir, "result.json"), "rb") as f:
            result = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a folder, unreadable, cut short, not JSON
        result = f"{type(e).__name__}: {e}"
    if not (isinstance(result, dict) and isinstance(result.get("status"), str)):
        error = f"damaged result.json ({str(result)[:100]})"
        result = {"status": "failed", "error": error, "damaged": True}
    ckpt = result.get("checkpoint")  # relative to its folder, or absolute
    result["checkpoint"] = os.path.join(run_dir, ckpt) if isinstance(ckpt, str) and ckpt else ""
    return {**result, "dir": str(run_dir)}


def distrust(row: dict[str, Any]) -> str | None:
    """Why a run's record is no model to serve or rank, or None: it ended ok with a val_acc in
    [0, 1] and names a checkpoint that is there, inside its own run folder. (A record forged
    by someone who can write your files is beyond what a record can prove.)"""
    acc = row.get("val_acc")  # NaN fails both comparisons
    if row.get("status") != "ok" or not (isinstance(acc, int | float) and 0 <= acc <= 1):
        return "not finished with a val_acc in [0, 1]"
    if not row.get("checkpoint"):
        return NO_CHECKPOINT
    folder = str(row.get("dir") or ".")
    ckpt = os.path.join(folder, str(row["checkpoint"]))  # relative to it, or absolute
    parts = os.path.relpath(ckpt, folder).split(os.sep)  # quick: inside, and through no link
    steps = (os.path.join(folder, *parts[: i + 1]) for i in range(len(parts)))
    inside = parts[0] != ".." and not any(map(os.path.islink, steps))
    if not (inside or os.path.realpath(ckpt).startswith(os.path.realpath(folder) + os.sep)):
        return f"its checkpoint {ckpt} is not inside its run folder {folder}"
    return None if os.path.isfile(ckpt) else f"its checkpoint {ckpt} is gone"


def sure_acc(row: dict[str, Any]) -> float:
    """What runs are ranked by: the validation accuracy a run is sure of at 95%, the lower end
    of the Wilson interval on its val_images (100 of 100: 0.963, below 4,949 of 5,000: 0.987);
    a record from before the count was kept, its val_acc."""
    p, n, z = row["val_acc"], row.get("val_images"), 1.96
    if type(n) is not int or n < 1:
        return p
    low = p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return low / (1 + z * z / n)


def recipe_of(result: dict[str, Any]) -> str | None:
    """The recipe a run followed: its experiment=... override ("seed" is "student"), else
    "default"; None when its overrides are damaged (not a list of strings)."""
    overrides = result.get("overrides") or []
    overrides = overrides.split() if isinstance(overrides, str) else overrides
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        return None
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "default")
    return "student" if name == "seed" else name


def _overrides(run_dir: str) -> Any:
    """A run folder's overrides as Hydra wrote them (a list); None if unreadable."""
    try:
        return yaml.safe_load(RunDir(Path(run_dir)).overrides.read_text())
    except (OSError, yaml.YAMLError):
        return None


def scan(folder: str | Path) -> list[dict[str, Any]]:
    """One row per run folder under `folder` (a folder holding result.json or .hydra/; none
    is looked into further, nor dot-folders such as .cache and .submitit), in path order: its
    read_result, else {"status": NO_RESULT}; its "overrides" (from result.json, else from
    .hydra/overrides.yaml: None if unreadable), "recipe" and "untrusted": None for a run to
    serve and rank, else why not (distrust, or damaged overrides). Never raises for a record."""
    rows, todo = [], [os.path.abspath(folder)]
    while todo:
        path = todo.pop()
        row = read_result(path)
        if row is None and not os.path.isdir(os.path.join(path, ".hydra")):
            try:  # not a run's folder: look for runs in it
                with os.scandir(path) as entries:
                    dirs = (e for e in entries if e.is_dir(follow_symlinks=False))  # no loop
                    todo += [e.path for e in dirs if e.name[0] != "."]
            except OSError:  # unreadable, or gone meanwhile
                pass
            continue
        row = row or {"status": NO_RESULT, "checkpoint": "", "dir": path}
        overrides = row["overrides"] if "overrides" in row else _overrides(path)
        row["overrides"] = overrides.split() if isinstance(overrides, str) else overrides
        row["recipe"] = recipe_of(row)
        damaged = row["recipe"] is None and "its result.json's overrides are damaged"
        ended = row["status"] != NO_RESULT and not row.get("damaged")
        why = (distrust(row) or damaged) if ended else row.get("error", NO_RESULT)
        row["untrusted"] = why or None
        rows.append(row)
    return sorted(rows, key=lambda r: r["dir"])


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows to serve and rank (untrusted None), best first by sure_acc; ties in path order."""
    return sorted((r for r in rows if r["untrusted"] is None), key=sure_acc, reverse=True)
