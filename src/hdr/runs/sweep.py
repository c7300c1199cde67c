"""A sweep's leaderboard (leaderboard.csv, .md), from one records.scan of its folder; before
the sweep, its folder and the resumed Optuna study. A Hydra callback around every multirun
(conf/hydra/default.yaml), and a command that rebuilds the leaderboard of any sweep folder:
`python -m hdr.runs.sweep <sweep folder>`. (TensorBoard shows a sweep's curves side by side:
tensorboard --logdir <sweep folder>.) Light: imports no torch or Lightning."""

import csv
import io
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from hdr.runs.records import NO_CHECKPOINT, ranked, scan
from hdr.utils import write_atomic

log = logging.getLogger(__name__)

COLUMNS = ["rank", "run", "overrides", "val_acc", "test_acc", "epochs", "seconds", "status"]
STUDY = "pruning"  # the name of a sweep's pruning study (hdr.runs.prune)


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


def leaderboard(runs: list[dict[str, Any]], sweep_dir: str) -> list[dict[str, Any]]:
    """A row for each of scan's `runs`: finished runs by validation accuracy, then pruned, then
    the rest (failed, or killed: no result); an ok run whose record is not trusted is failed."""
    rows = []
    for run in runs:
        if not isinstance(run["overrides"], list):
            log.warning("Not a run's folder (no list of overrides), left out: %s", run["dir"])
            continue
        status, error = run["status"], run.get("error", "")
        if status == "pruned":
            status = f"pruned at epoch {run.get('pruned_at')}"
        if status == "ok" and run["untrusted"] not in (None, NO_CHECKPOINT):  # edited, copied in
            status, error = "failed", f"record not trusted: {run['untrusted']}"
        keys = ("val_acc", "val_images", "test_acc", "epochs", "seconds", "checkpoint", "dir")
        rows.append(
            {k: run.get(k) for k in keys}
            | {"run": os.path.relpath(run["dir"], sweep_dir), "status": status, "error": error}
            | {"overrides": " ".join(map(str, run["overrides"]))}
        )

    def key(row: dict) -> tuple:
        group = 0 if row["status"] == "ok" else 1 if row["status"].startswith("pruned") else 2
        acc = row["val_acc"]
        scored = group < 2 and isinstance(acc, float) and math.isfinite(acc)
        return (group if scored else 2, -acc if scored else 0.0, row["run"])

    rows.sort(key=key)
    return [{**row, "rank": rank} for rank, row in enumerate(rows, 1)]


def write_leaderboard(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """leaderboard.csv (every field, errors whole) and leaderboard.md (accuracies in %, the
    values that differ between runs)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, [*COLUMNS, "val_images", "error", "checkpoint", "dir"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "leaderboard.csv", table.getvalue())
    values: dict[str, set[str]] = {}
    for item in (o for row in rows for o in row["overrides"].split()):
        values.setdefault(item.partition("=")[0], set()).add(item)
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
        swept = [o for o in row["overrides"].split() if len(values[o.partition("=")[0]]) > 1]
        cells[2] = f"`{' '.join(swept)}`" if swept else ""
        if row["error"]:  # one line, whatever the message holds; the CSV keeps it whole
            cells[-1] += ": " + " ".join(str(row["error"]).split()).replace("|", "/")[:120]
        lines.append("| " + " | ".join(cells) + " |")
    write_atomic(sweep_dir / "leaderboard.md", "\n".join(lines) + "\n")
    return sweep_dir / "leaderboard.md"


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write the leaderboard of one sweep folder; its rows."""
    sweep_dir = os.path.abspath(sweep_dir)
    runs = scan(sweep_dir) if os.path.isdir(sweep_dir) else []
    rows = leaderboard(runs, sweep_dir)
    if not rows:
        raise LookupError(f"No runs in {sweep_dir}: give a sweep folder under outputs/.")
    board = write_leaderboard(Path(sweep_dir), rows)
    pruned = sum(r["status"].startswith("pruned") for r in rows)
    failed = sum(r["status"] not in ("ok", "smoke") for r in rows) - pruned
    log.info("Leaderboard (%d runs, %d pruned, %d failed): %s", len(rows), pruned, failed, board)
    for best in ranked(runs)[:1]:
        log.info("Best checkpoint (val acc %.2f%%): %s", 100 * best["val_acc"], best["checkpoint"])
    return rows


class SweepCallback(Callback):
    """Before a multirun: refuse one that would run nothing, place runs outside its folder or
    wait on a Ray head that does not answer; make its folder (the Optuna studies live there)
    and resume a stored Optuna study to n_trials in all. After it: `summarize`. Hydra turns a
    callback's exception into a warning: errors exit here, in one line."""

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
                why = str(e).splitlines()[0]
                log.warning("Pruning is off: its study %s cannot be made (%s). If that file "
                            "is damaged, delete it.", url, why)  # fmt: skip
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
                total, name = sweeper.n_trials, sweeper.study_name
                log.info("Resuming study %s: %d of %d trials done.", name, done, total)
                with read_write(sweeper):
                    sweeper.n_trials = max(0, sweeper.n_trials - done)
                    if sweeper.get("sampler", {}).get("seed") is not None:
                        # A seeded sampler starts its sequence afresh: it would propose the
                        # first trials' parameters again.
                        sweeper.sampler.seed += done

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            summarize(sweep_dir)
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
    import optuna  # as in open_study

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
        sys.exit("usage: python -m hdr.runs.sweep SWEEP_DIR  (e.g. outputs/sweep_lr/multiruns/*)")
    try:
        summarize(sys.argv[1])
    except LookupError as e:
        sys.exit(str(e))
    print((Path(sys.argv[1]) / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
