"""Run records: each run's result.json, and best.json, the best model so far.

Every record is written to a temporary file and renamed into place, so a kill never leaves
half a record. Records are read defensively: a damaged one is named, and a damaged best.json
is set aside and rewritten, never costing a finished run.
"""

import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from hdr.utils import write_atomic

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # every run writes one into its own folder
CLAIM_FILE = ".claim"  # held (flock) by the process that trains in the folder
FINISHED = ("ok", "pruned")  # a sweep that comes back to such a run skips it


@dataclass(frozen=True)
class RunDir:
    """A run's folder and what it holds, spelled here only: the YAML reads the parts by name
    through the `hdr.run` resolver, e.g. ${hdr.run:${paths.output_dir},checkpoints}."""

    path: Path
    last_stem: str = "last"  # checkpoints/last.ckpt: rewritten every epoch, the resume point

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{self.last_stem}.ckpt"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def hydra_overrides(self) -> Path:
        """Hydra's record of the run's command-line overrides (its .hydra/ folder)."""
        return self.path / ".hydra" / "overrides.yaml"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        """The run that wrote `checkpoint` (checkpoints/<name>.ckpt inside it)."""
        return cls(Path(checkpoint).parent.parent)


class RecordError(ValueError):
    """A record file is damaged; the message names it and says how to repair it."""


@contextmanager
def claim(run_dir: str | Path, wait: bool = False) -> Iterator[str | None]:
    """Hold `run_dir` while this process trains in it: an exclusive flock on its .claim file,
    which the kernel lets go of when the process ends, however it ends (kill -9 too), so a
    dead run never holds a folder. Yields None once claimed; if another process holds it,
    yields who that is, or with `wait` says so and waits for it to let go (a sweep run again
    while the first one's jobs still train: each run waits for its twin, then finds it
    finished, or resumes it if it died)."""
    path = Path(run_dir) / CLAIM_FILE
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
            log.warning(
                "%s is in use by another run (%s): waiting for it to end.", path.parent, holder
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        holder = f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield None
    finally:
        os.close(fd)


def task_overrides() -> list[str]:
    """This run's command-line overrides: what makes it this run and not another."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def rank_zero() -> bool:
    """False in the other processes of a DDP run, which re-run this command into rank 0's
    folder: they neither claim it nor clear it."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def resume_point(out: Path, sweeping: bool) -> tuple[str, Any]:
    """What to do in this run's folder: ("start", None), ("resume", last.ckpt) or, in a
    sweep that comes back to a finished (or pruned) run, ("skip", its result). A run that
    failed, was killed or whose record is damaged resumes from its last.ckpt if it has one."""
    from hdr.checkpoint import CheckpointError, read_checkpoint

    run_dir = RunDir(out)
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
            f"hydra.run.dir out for a new folder, or resume from {run_dir.last} with "
            "ckpt_path=..."
        )
    if result is not None and result.get("damaged"):
        log.warning("%s: %s. Resuming the run instead.", out, result["error"])
    if run_dir.last.exists():  # killed or failed part-way: go on from its last epoch
        try:
            read_checkpoint(run_dir.last)
            return "resume", run_dir.last
        except CheckpointError as e:
            log.warning("%s Starting this run again.", e)
    for part in (run_dir.checkpoints, run_dir.tensorboard):  # what an attempt left would mix in
        if rank_zero():
            shutil.rmtree(part, ignore_errors=True)
    return "start", None


def relative_to_run(checkpoint: str | Path, run_dir: str | Path) -> str:
    """How a record names a checkpoint: relative to its run folder when inside it, so that a
    run or sweep folder moved or copied still finds its own; else the absolute path."""
    path, run = Path(os.path.realpath(checkpoint)), Path(os.path.realpath(run_dir))
    return str(path.relative_to(run)) if path.is_relative_to(run) else str(path)


def checkpoint_of(row: dict[str, Any]) -> Path:
    """The checkpoint a record names, found from its run folder (`dir`)."""
    return Path(str(row.get("dir") or "")) / str(row.get("checkpoint") or "")


def write_result(run_dir: str | Path, **fields: Any) -> None:
    """Record how a run ended: status, accuracies, checkpoint, and where it ran."""
    fields.setdefault("host", os.uname().nodename)
    fields.setdefault("pid", os.getpid())
    ray = sys.modules.get("ray")  # a Ray worker: which node of the cluster ran this
    if ray is not None and ray.is_initialized():
        fields.setdefault("ray_node", ray.get_runtime_context().get_node_id())
    write_atomic(RunDir(Path(run_dir)).result, json.dumps(fields, indent=2, default=str))


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's result, None if it has none (killed, or still running)."""
    path = RunDir(Path(run_dir)).result
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        result = f"{type(e).__name__}: {e}"
    if isinstance(result, dict) and isinstance(result.get("status"), str):
        if isinstance(result.get("checkpoint"), str) and result["checkpoint"]:
            result["checkpoint"] = str(checkpoint_of({**result, "dir": run_dir}))
        return result
    # Marked, so that a run coming back to it resumes from its checkpoints instead.
    return {
        "status": "failed",
        "error": f"damaged {RESULT_FILE} ({str(result)[:100]})",
        "damaged": True,
    }


def same_run(a: list[str], b: list[str], exclude: list[str]) -> bool:
    """Whether two override lists make the same run, the keys that change no result aside
    (`exclude`: those left out of run folders' names, override_dirname.exclude_keys)."""

    def identity(overrides: list[str]) -> list[str]:
        return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in exclude]

    return identity(a) == identity(b)


def finished_run(run_dir: str | Path, overrides: list[str], exclude: list[str]) -> dict | None:
    """The record of `run_dir` if it holds this run, finished (ok or pruned): a sweep that
    comes back to it skips it. None for anything else (new, failed, killed, damaged)."""
    result = read_result(run_dir)
    if result is None or result.get("status") not in FINISHED:
        return None
    recorded = result.get("overrides")
    ours = isinstance(recorded, list) and same_run(recorded, overrides, exclude)
    return result if ours else None


def read_best(record: str | Path) -> dict[str, Any]:
    """The best-model record; RecordError names a missing or damaged one and the fix."""
    record = Path(record)
    if not record.exists():
        raise RecordError(
            f"No model recorded yet: {record} does not exist. Train one (make train, or a "
            "sweep) or pass --checkpoint PATH."
        )
    fix = "Train again (make train) to write a new one, or pass --checkpoint PATH."
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError) as e:  # a folder, unreadable, empty or not JSON
        raise RecordError(f"{record} is damaged ({type(e).__name__}: {e}). {fix}") from None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("checkpoint"), str)
        and _accuracy(entry.get("val_acc"))
    ):
        raise RecordError(
            f"{record} is damaged (no checkpoint and a val_acc in [0, 1] in it). {fix}"
        )
    return entry


def _accuracy(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1


def distrust(row: dict[str, Any], cheap: bool = False) -> str | None:
    """Why the record of a finished run cannot be trusted as a model to serve or rank, or
    None: it ended ok with a val_acc in [0, 1], and names a checkpoint inside its own run
    folder that hdr.train wrote, holding that same validation accuracy. `cheap` leaves out
    reading the checkpoint."""
    from hdr.checkpoint import CheckpointError, read_checkpoint  # torch: only when needed

    if row.get("status") != "ok" or not _accuracy(row.get("val_acc")):
        return "not finished with a val_acc in [0, 1]"
    ckpt, folder = checkpoint_of(row), Path(str(row.get("dir") or ""))
    if not row.get("checkpoint") or not ckpt.resolve().is_relative_to(folder.resolve()):
        return f"its checkpoint {ckpt} is not inside its run folder {folder}"
    if not ckpt.is_file():
        return f"its checkpoint {ckpt} is gone"
    if cheap:
        return None
    try:
        saved = read_checkpoint(ckpt).get("val_acc_best")
    except CheckpointError as e:
        return str(e)
    if isinstance(saved, float) and abs(saved - row["val_acc"]) > 1e-6:
        return f"it says val_acc {row['val_acc']}, its checkpoint {saved}"
    return None


def record_best(rows: list[dict[str, Any]], record: str | Path) -> dict[str, Any] | None:
    """Point `record` at the best trusted run of `rows` if it beats the one recorded.

    Pruned, failed and untrusted runs (`distrust`) never count. A damaged or untrusted
    record is set aside as `<name>.bad-<time>` with one warning and replaced; a folder in
    its place is never touched. A record that cannot be written is warned about. None of
    this fails the run or the sweep that calls this. Reading, comparing and writing are one
    step under a lock, so two runs ending at once never leave the worse one recorded.
    """
    record = Path(record)
    if record.exists() and not record.is_file():
        log.warning(
            "Not recording the best model: %s is a folder, not a file (set "
            "paths.best_record to a file, e.g. outputs/best.json).",
            record,
        )
        return None
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(record.with_name(f".{record.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        log.warning("Could not record the best model in %s (%s).", record, e)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # let go of by the kernel when the process ends
        return _record_best(rows, record)
    finally:
        os.close(fd)


def _record_best(rows: list[dict[str, Any]], record: Path) -> dict[str, Any] | None:
    ok = [r for r in rows if distrust(r, cheap=True) is None]
    for r in sorted(ok, key=lambda r: -r["val_acc"]):
        if (why := distrust(r)) is None:
            best = r
            break
        log.warning("Run %s is not recorded as a best model: %s.", r.get("dir"), why)
    else:
        return None
    if record.exists():
        try:
            current = read_best(record)
            if Path(current["checkpoint"]).is_file():  # one that is gone is just replaced
                why = distrust({"status": "ok", "dir": current.get("dir"), **current})
                if why is not None:
                    raise RecordError(f"{record} is damaged: not to be trusted, as {why}.")
                if current["val_acc"] >= best["val_acc"]:
                    return current
        except RecordError as e:
            aside = record.with_name(f"{record.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(record, aside)
                log.warning("%s Set aside as %s; writing a new one.", e, aside.name)
            except OSError as move_error:
                log.warning("%s It cannot be set aside either (%s).", e, move_error)
                return None
    entry = {k: best.get(k) for k in ("val_acc", "test_acc", "overrides", "dir")}
    entry["checkpoint"] = str(checkpoint_of(best).resolve())  # best.json is outside any run
    try:
        write_atomic(record, json.dumps(entry, indent=2))
    except OSError as e:
        log.warning("Could not record the best model in %s (%s); it is %s.", record, e, entry)
        return None
    return entry


def recipe_of(result: dict[str, Any]) -> str:
    """The recipe a run followed: its experiment=... override ("seed" read as its new name,
    "student"), else "default"."""
    overrides = result.get("overrides") or []
    if isinstance(overrides, str):
        overrides = overrides.split()
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "default")
    return "student" if name == "seed" else name


def trusted_runs(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run under log_dir (runs and sweeps) whose record passes the cheap
    checks of `distrust`, each with its "recipe" and "dir"."""
    runs = []
    for path in Path(log_dir).rglob(RESULT_FILE):
        result = {**(read_result(path.parent) or {}), "dir": str(path.parent)}
        if distrust(result, cheap=True) is None:
            runs.append({**result, "recipe": recipe_of(result)})
    return runs


def best_per_recipe(log_dir: str | Path) -> list[dict[str, Any]]:
    """The best trusted run of each recipe under log_dir (runs and sweeps), by validation
    accuracy, best first. Untrusted records (`distrust`: a checkpoint gone or outside its
    folder, a forged accuracy) are passed over."""
    candidates: dict[str, list[dict[str, Any]]] = {}
    for run in trusted_runs(log_dir):
        candidates.setdefault(run["recipe"], []).append(run)
    best = []
    for runs in candidates.values():  # the expensive check only for the best of each
        best += [
            next(
                (r for r in sorted(runs, key=lambda r: -r["val_acc"]) if distrust(r) is None), None
            )
        ]
    return sorted((r for r in best if r), key=lambda r: -r["val_acc"])


def best_on_drawings(log_dir: str | Path) -> dict[str, Any] | None:
    """The trusted run under log_dir that reads validation drawings best (val_drawings_acc,
    hdr.report.DrawingsReport), ties to the better val_acc; None when no record has that
    score (records from before it existed are passed over, not failed)."""
    scored = [r for r in trusted_runs(log_dir) if _accuracy(r.get("val_drawings_acc"))]
    ranked = sorted(scored, key=lambda r: (-r["val_drawings_acc"], -r["val_acc"]))
    return next((r for r in ranked if distrust(r) is None), None)
