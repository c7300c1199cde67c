"""After a sweep: leaderboard (CSV, Markdown), best-checkpoint record, one-variable study plot.

Runs automatically at the end of every multirun (a Hydra callback), and by hand on any sweep
folder: `python -m hdr.sweep outputs/sweep_lr/multiruns/<date>_<time>`.
"""

import csv
import io
import logging
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from hdr.plots import add_png, read_scalars, study_image
from hdr.prune import create_study, study_url
from hdr.records import RunDir, distrust, read_result, record_best
from hdr.utils import write_atomic

log = logging.getLogger(__name__)

COLUMNS = ["rank", "run", "overrides", "val_acc", "test_acc", "epochs", "seconds", "status"]
PERCENT = {"val_acc", "test_acc"}  # shown as percentages in leaderboard.md


def _overrides(run_dir: Path) -> list[str] | None:
    """A run folder's overrides; None for a folder that is not a run's (no list of them)."""
    try:
        overrides = yaml.safe_load(RunDir(run_dir).hydra_overrides.read_text()) or []
    except (OSError, yaml.YAMLError):
        return None
    ok = isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    return overrides if ok else None


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run folder, best validation accuracy first; failed runs last."""
    if not Path(sweep_dir).is_dir():
        raise FileNotFoundError(f"No sweep folder {sweep_dir}: give a folder under outputs/.")
    rows = []
    for run_dir in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        overrides = _overrides(run_dir)
        if overrides is None:
            log.warning("Not a run's folder (no list of overrides), left out: %s", run_dir)
            continue
        # A run killed from outside (out of memory, Ctrl-C) leaves no result file.
        result = read_result(run_dir) or {}
        status = str(result.get("status", "no result (killed?)"))
        if status == "pruned":
            status = f"pruned at epoch {result.get('pruned_at')}"
        untrusted = distrust({**result, "dir": str(run_dir)}, cheap=True)
        if status == "ok" and untrusted:  # a record edited or copied from elsewhere
            status, result = "failed", {**result, "error": f"record not trusted: {untrusted}"}
        rows.append(
            {
                "run": run_dir.name,
                "overrides": " ".join(overrides),
                "val_acc": result.get("val_acc"),
                "test_acc": result.get("test_acc"),
                "epochs": result.get("epochs"),
                "seconds": result.get("seconds"),
                "status": status,
                "error": result.get("error", ""),
                "checkpoint": result.get("checkpoint", ""),
                "dir": str(run_dir.resolve()),
            }
        )

    def key(row: dict) -> tuple:
        # Finished runs first, then pruned ones (by their best so far), then the rest.
        group = 0 if row["status"] == "ok" else 1 if row["status"].startswith("pruned") else 2
        acc = row["val_acc"]
        scored = group < 2 and isinstance(acc, float) and math.isfinite(acc)
        return (group if scored else 2, -acc if scored else 0.0, row["run"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _fmt(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in PERCENT and isinstance(value, float):
        return f"{100 * value:.2f}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def write_leaderboard(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """leaderboard.csv (every field, errors whole) and leaderboard.md (accuracies in %, one
    line per run) in the sweep folder."""
    sweep_dir = Path(sweep_dir)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[*COLUMNS, "error", "checkpoint", "dir"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "leaderboard.csv", table.getvalue())
    varying = set(swept_keys(rows))
    lines = [
        "| rank | run | swept values | val acc % | test acc % | epochs | seconds | status |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        cells = [_fmt(c, row[c]) for c in COLUMNS]
        swept = [o for o in row["overrides"].split() if o.partition("=")[0] in varying]
        cells[2] = f"`{' '.join(swept)}`" if swept else ""
        if row["error"]:  # one line, whatever the message holds; the CSV keeps it whole
            error = " ".join(str(row["error"]).split()).replace("|", "/")
            cells[-1] += f": {error[:120]}"
        lines.append("| " + " | ".join(cells) + " |")
    path = sweep_dir / "leaderboard.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between runs."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for item in row["overrides"].split():
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1]


def write_study_plot(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path | None:
    """For a one-variable study: val accuracy per epoch, one curve per value."""
    keys = swept_keys(rows)
    if len(keys) != 1:
        return None
    key = keys[0]
    curves = {}
    for row in sorted(rows, key=lambda r: r["run"]):
        value = dict(o.partition("=")[::2] for o in row["overrides"].split()).get(key, "?")
        scalars = read_scalars(RunDir(Path(row["dir"])).tensorboard)
        curves[value] = [v for _, v in scalars.get("val/acc", [])]
    image = study_image(curves, key)
    path = Path(sweep_dir) / "val_acc.png"
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(Path(sweep_dir) / "study") as writer:
        write_atomic(path, add_png(writer, f"study/val_acc_by_{key}", image))
    return path


def summarize(sweep_dir: str | Path, record: str | Path) -> list[dict[str, Any]]:
    """Leaderboard, best record and study plot for one sweep folder."""
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"No runs in {sweep_dir}: expected folders holding .hydra/.")
    board = write_leaderboard(sweep_dir, rows)
    best = record_best(rows, record)
    plot = write_study_plot(sweep_dir, rows)
    pruned = sum(r["status"].startswith("pruned") for r in rows)
    failed = sum(r["status"] != "ok" for r in rows) - pruned
    log.info("Leaderboard (%d runs, %d pruned, %d failed): %s", len(rows), pruned, failed, board)
    if plot:
        log.info("Study plot: %s", plot)
    if best:
        log.info("Best checkpoint (val acc %.2f%%): %s", 100 * best["val_acc"], best["checkpoint"])
    return rows


def finished_trials(url: str, study_name: str) -> int:
    """How many trials of a stored Optuna study have ended (complete, pruned or failed)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0  # a new sweep: no database yet, and none made here
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(study_name))
    except KeyError:  # no such study yet
        return 0
    finally:  # let go of the database before the sweeper opens it: SQLite locks it
        storage.remove_session()
        storage.engine.dispose()
    return sum(t.state.is_finished() for t in trials)


class SweepCallback(Callback):
    """Hydra callback around every multirun. Before it: make the sweep folder (the Optuna
    studies live there), and count the trials a stored Optuna study already ran into
    n_trials, so the same command resumes it to n_trials in all. After it: the leaderboard,
    the best record and the study plot."""

    def __init__(self, best_record: str) -> None:
        self.best_record = Path(best_record)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning: exit, in one line, instead.
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            sys.exit(
                f"Error: hydra.sweep.dir={sweep_dir} cannot be made a folder "
                f"({e.strerror}): give a folder you can write to."
            )
        if config.get("sweep", {}).get("prune", "none") != "none":
            url = study_url(str(sweep_dir), config.callbacks.get("pruning", {}).get("storage"))
            try:
                create_study(url)
            except Exception as e:
                log.warning(
                    "Pruning is off: its study %s cannot be made (%s). If that file is "
                    "damaged, delete it.",
                    url,
                    str(e).splitlines()[0],
                )
        sweeper = config.hydra.sweeper
        if sweeper.get("storage") and "n_trials" in sweeper:
            try:
                done = finished_trials(sweeper.storage, sweeper.study_name)
            except Exception as e:
                sys.exit(
                    f"Error: the Optuna study {sweeper.storage} cannot be read "
                    f"({type(e).__name__}: {str(e).splitlines()[0]}). Delete it (or move "
                    "it aside) to start the study afresh in a new hydra.sweep.dir."
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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            summarize(sweep_dir, self.best_record)
        except OSError as e:  # Hydra would make this a warning, and the sweep seem to end well
            sys.exit(
                f"Error: the sweep's runs are kept, but {e.filename} cannot be written "
                f"({e.strerror}): fix that, then write its leaderboard with "
                f"python -m hdr.sweep {sweep_dir}"
            )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hdr.sweep SWEEP_DIR   (e.g. outputs/sweep_lr/multiruns/<date>)")
    from hdr.config import compose

    try:
        summarize(sys.argv[1], compose().paths.best_record)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print((Path(sys.argv[1]) / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
