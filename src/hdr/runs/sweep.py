"""After a sweep: the leaderboard (CSV, Markdown) and the best record; before it, its folder
and the resumed Optuna study. A Hydra callback around every multirun, and a command for any
sweep folder: `python -m hdr.runs.sweep <sweep folder>`. (TensorBoard shows a sweep's curves
side by side: tensorboard --logdir <sweep folder>.)"""

import csv
import io
import logging
import math
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from hdr.runs.config import compose
from hdr.runs.prune import open_study, study_url
from hdr.runs.records import NO_CHECKPOINT, distrust, read_overrides, read_result, record_best
from hdr.utils import write_atomic

log = logging.getLogger(__name__)

COLUMNS = ["rank", "run", "overrides", "val_acc", "test_acc", "epochs", "seconds", "status"]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run folder: finished runs by validation accuracy, then pruned, then the
    rest (failed, or killed: no result)."""
    rows = []
    for run_dir in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        overrides = read_overrides(run_dir)
        if overrides is None:
            log.warning("Not a run's folder (no list of overrides), left out: %s", run_dir)
            continue
        result = read_result(run_dir) or {}
        status = str(result.get("status", "no result (killed?)"))
        if status == "pruned":
            status = f"pruned at epoch {result.get('pruned_at')}"
        untrusted = distrust(result) if status == "ok" else None  # edited, or copied in
        if untrusted not in (None, NO_CHECKPOINT):
            status, result = "failed", {**result, "error": f"record not trusted: {untrusted}"}
        keys = ("val_acc", "val_images", "test_acc", "epochs", "seconds")  # val_images: ranks
        row = {k: result.get(k) for k in keys}
        rows.append(
            {
                **row,
                "run": run_dir.name,
                "overrides": " ".join(overrides),
                "status": status,
                "error": result.get("error", ""),
                "checkpoint": result.get("checkpoint", ""),
                "dir": str(run_dir.resolve()),
            }
        )

    def key(row: dict) -> tuple:
        group = 0 if row["status"] == "ok" else 1 if row["status"].startswith("pruned") else 2
        acc = row["val_acc"]
        scored = group < 2 and isinstance(acc, float) and math.isfinite(acc)
        return (group if scored else 2, -acc if scored else 0.0, row["run"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between runs."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for item in row["overrides"].split():
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1]


def write_leaderboard(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """leaderboard.csv (every field, errors whole) and leaderboard.md (accuracies in %)."""
    table = io.StringIO()
    writer = csv.DictWriter(
        table, fieldnames=[*COLUMNS, "val_images", "error", "checkpoint", "dir"]
    )
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "leaderboard.csv", table.getvalue())
    varying = set(swept_keys(rows))
    lines = [
        "| rank | run | swept values | val acc % | test acc % | epochs | seconds | status |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        cells = [
            "" if v is None else f"{100 * v:.2f}" if c.endswith("_acc") and isinstance(v, float)
            else f"{v:.1f}" if isinstance(v, float) else str(v)
            for c, v in ((c, row[c]) for c in COLUMNS)
        ]  # fmt: skip
        swept = [o for o in row["overrides"].split() if o.partition("=")[0] in varying]
        cells[2] = f"`{' '.join(swept)}`" if swept else ""
        if row["error"]:  # one line, whatever the message holds; the CSV keeps it whole
            cells[-1] += ": " + " ".join(str(row["error"]).split()).replace("|", "/")[:120]
        lines.append("| " + " | ".join(cells) + " |")
    write_atomic(sweep_dir / "leaderboard.md", "\n".join(lines) + "\n")
    return sweep_dir / "leaderboard.md"


def summarize(sweep_dir: str | Path, record: str | Path) -> list[dict[str, Any]]:
    """Leaderboard and best record for one sweep folder."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        raise LookupError(f"No runs in {sweep_dir}: give a sweep folder under outputs/.")
    board = write_leaderboard(sweep_dir, rows)
    best = record_best(rows, record)
    pruned = sum(r["status"].startswith("pruned") for r in rows)
    failed = sum(r["status"] not in ("ok", "smoke") for r in rows) - pruned
    log.info("Leaderboard (%d runs, %d pruned, %d failed): %s", len(rows), pruned, failed, board)
    if best:
        log.info("Best checkpoint (val acc %.2f%%): %s", 100 * best["val_acc"], best["checkpoint"])
    return rows


class SweepCallback(Callback):
    """Before a multirun: refuse one that would run nothing, place runs outside its folder or
    wait on a Ray head that does not answer; make its folder (the Optuna studies live there)
    and resume a stored Optuna study to n_trials in all. After it: `summarize`. Hydra turns a
    callback's exception into a warning: errors exit here, in one line."""

    def __init__(self, best_record: str) -> None:
        self.best_record = Path(best_record)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweeper = config.hydra.sweeper
        params = sweeper.get("params") or {}
        swept = [*config.hydra.overrides.task, *(f"{k}={v}" for k, v in params.items())]
        nothing = [
            f"{o.input_line} sweeps no value"
            for o in OverridesParser.create().parse_overrides(swept)
            if o.is_range_sweep() and not list(o.sweep_iterator())
        ]
        if sweeper.get("n_trials", 1) < 1:
            nothing.append(f"hydra.sweeper.n_trials={sweeper.n_trials} asks for no trial")
        if nothing:
            sys.exit(f"Error: the sweep would run nothing: {nothing[0]}. Give it one or more.")
        # Unresolved: hydra.job.num, which the default names runs by, is set run by run.
        subdir = OmegaConf.to_container(config.hydra.sweep)["subdir"]
        if Path(subdir).is_absolute() or ".." in Path(subdir).parts:
            sys.exit(
                f"Error: hydra.sweep.subdir={subdir} places runs outside the sweep's folder "
                f"{sweep_dir}, where its leaderboard and a resume look: name a folder inside "
                "it (or set hydra.sweep.dir instead)."
            )
        ray_head(config.hydra.launcher.get("ray", {}).get("init", {}).get("address"))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            sys.exit(
                f"Error: hydra.sweep.dir={sweep_dir} cannot be made a folder ({e.strerror}): "
                "give a folder you can write to."
            )
        if config.get("sweep", {}).get("prune", "none") != "none":
            # Made once, before the runs start: two runs making one SQLite schema collide.
            url = study_url(str(sweep_dir), config.callbacks.get("pruning", {}).get("storage"))
            try:
                open_study(url)
            except Exception as e:
                log.warning(
                    "Pruning is off: its study %s cannot be made (%s). If that file is "
                    "damaged, delete it.",
                    url,
                    str(e).splitlines()[0],
                )
        if sweeper.get("storage") and "n_trials" in sweeper:
            try:
                done = resume_study(sweeper.storage, sweeper.study_name, sweep_dir)
            except Exception as e:
                sys.exit(
                    f"Error: the Optuna study {sweeper.storage} cannot be read "
                    f"({type(e).__name__}: {str(e).splitlines()[0]}). Delete it (or move it "
                    "aside) to start the study afresh."
                )
            if done:
                log.info(
                    "Resuming study %s: %d of %d trials done.",
                    sweeper.study_name,
                    done,
                    sweeper.n_trials,
                )
                with read_write(sweeper):
                    sweeper.n_trials = max(0, sweeper.n_trials - done)
                    if sweeper.get("sampler", {}).get("seed") is not None:
                        # A seeded sampler starts its sequence afresh: it would propose the
                        # first trials' parameters again.
                        sweeper.sampler.seed += done

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            summarize(sweep_dir, self.best_record)
        except LookupError:
            sys.exit(
                f"Error: no run of the sweep left its record in {sweep_dir} (see the lines "
                "above), so it has no leaderboard."
            )
        except OSError as e:
            sys.exit(
                f"Error: the sweep's runs are kept, but {e.filename} cannot be written "
                f"({e.strerror}): fix that, then write its leaderboard with "
                f"python -m hdr.runs.sweep {sweep_dir}"
            )


def resume_study(url: str, study_name: str, sweep_dir: Path) -> int:
    """How many trials a stored Optuna study holds. A study in the sweep's folder is run by
    one command at a time (its runs' folders would collide): a trial still running there
    was left by a killed sweep, and is marked failed. (One stored elsewhere may be shared.)"""
    path = Path(url.removeprefix("sqlite:///"))
    if url.startswith("sqlite:///") and not path.exists():
        return 0  # a new sweep: no database yet, and none made here
    import optuna  # as in hdr.runs.prune.open_study

    storage = optuna.storages.RDBStorage(url)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(study_name))
        for t in trials:
            if t.state == optuna.trial.TrialState.RUNNING and path.parent == sweep_dir:
                log.warning("Trial %d was running when its sweep was killed: failed.", t.number)
                storage.set_trial_state(t._trial_id, optuna.trial.TrialState.FAIL)
    except KeyError:  # no such study yet
        return 0
    finally:  # let go of the database before the sweeper opens it: SQLite locks it
        storage.remove_session()
        storage.engine.dispose()
    return sum(t.state != optuna.trial.TrialState.WAITING for t in trials)


def ray_head(address: str | None) -> None:
    """Exit in one line unless the Ray head at `address` (HOST:PORT, ray://HOST:PORT) takes
    a connection: ray.init waits minutes for one that does not."""
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # null (a local instance), "auto": Ray's own rules
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        sys.exit(
            f"Error: no Ray head answers at hydra.launcher.ray.init.address={address} "
            f"({e.strerror or e}): start one there (ray start --head --port={port}), give "
            "the head's HOST:PORT, or null to start Ray on this machine."
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        sys.exit(
            "usage: python -m hdr.runs.sweep SWEEP_DIR   (e.g. outputs/sweep_lr/multiruns/<date>)"
        )
    try:
        summarize(sys.argv[1], compose().paths.best_record)
    except LookupError as e:
        sys.exit(str(e))
    print((Path(sys.argv[1]) / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
