"""After a sweep: leaderboard (CSV, Markdown), best-checkpoint record, one-variable study plot.

Runs automatically at the end of every multirun (a Hydra callback), and by hand on any sweep
folder: `python -m hdr.sweep outputs/train/multiruns/<date>_<time>`.
"""

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hdr.plots import read_scalars, study_figure

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # written by every run into its own folder
BEST_RECORD = Path("outputs") / "best.json"  # the app loads the checkpoint named here
COLUMNS = ["rank", "run", "overrides", "val_acc", "test_acc", "epochs", "seconds", "status"]


def write_result(output_dir: str | Path, **fields: Any) -> None:
    """Record how a run ended, for the leaderboard."""
    path = Path(output_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=2, default=str))


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.exists() else []


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run folder, best validation accuracy first; failed runs last."""
    if not Path(sweep_dir).is_dir():
        raise FileNotFoundError(f"No sweep folder {sweep_dir}: give a folder under outputs/.")
    rows = []
    for run_dir in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        result_path = run_dir / RESULT_FILE
        # A run killed from outside (out of memory, Ctrl-C) leaves no result file.
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        rows.append(
            {
                "run": run_dir.name,
                "overrides": " ".join(_overrides(run_dir)),
                "val_acc": result.get("val_acc"),
                "test_acc": result.get("test_acc"),
                "epochs": result.get("epochs"),
                "seconds": result.get("seconds"),
                "status": result.get("status", "no result (killed?)"),
                "error": result.get("error", ""),
                "checkpoint": result.get("checkpoint", ""),
                "dir": str(run_dir.resolve()),
            }
        )

    def key(row: dict) -> tuple:
        ok = row["status"] == "ok" and row["val_acc"] is not None and math.isfinite(row["val_acc"])
        return (not ok, -(row["val_acc"] or 0.0) if ok else 0.0, row["run"])

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{100 * value:.2f}" if value <= 1 else f"{value:.1f}"
    return "" if value is None else str(value)


def write_leaderboard(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """leaderboard.csv (every field) and leaderboard.md (accuracies in %) in the sweep folder."""
    sweep_dir = Path(sweep_dir)
    with open(sweep_dir / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "error", "checkpoint", "dir"])
        writer.writeheader()
        writer.writerows(rows)
    varying = set(swept_keys(rows))
    lines = [
        "| rank | run | swept values | val acc % | test acc % | epochs | seconds | status |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        cells = [_fmt(row[c]) for c in COLUMNS]
        swept = [o for o in row["overrides"].split() if o.partition("=")[0] in varying]
        cells[2] = f"`{' '.join(swept)}`" if swept else ""
        if row["error"]:
            cells[-1] += f": {row['error'][:120]}"
        lines.append("| " + " | ".join(cells) + " |")
    path = sweep_dir / "leaderboard.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_best(rows: list[dict[str, Any]], record: Path = BEST_RECORD) -> dict | None:
    """Point `outputs/best.json` at this sweep's best checkpoint if it beats the one recorded."""
    best = next((r for r in rows if r["status"] == "ok" and r["checkpoint"]), None)
    if best is None:
        return None
    if record.exists():
        current = json.loads(record.read_text())
        still_there = Path(current.get("checkpoint", "")).exists()
        if still_there and current.get("val_acc", 0) >= best["val_acc"]:
            return current
    entry = {k: best[k] for k in ("checkpoint", "val_acc", "test_acc", "overrides", "dir")}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(entry, indent=2))
    return entry


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
        value = dict(o.partition("=")[::2] for o in row["overrides"].split())[key]
        scalars = read_scalars(Path(row["dir"]) / "tensorboard")
        curves[value] = [v for _, v in scalars.get("val/acc", [])]
    fig = study_figure(curves, key)
    path = Path(sweep_dir) / "val_acc.png"
    fig.savefig(path)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(Path(sweep_dir) / "study") as writer:
        writer.add_figure(f"study/val_acc_by_{key}", fig)
    return path


def summarize(sweep_dir: str | Path, record: Path = BEST_RECORD) -> list[dict[str, Any]]:
    """Leaderboard, best record and study plot for one sweep folder."""
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"No runs in {sweep_dir}: expected folders holding .hydra/.")
    board = write_leaderboard(sweep_dir, rows)
    best = record_best(rows, record)
    plot = write_study_plot(sweep_dir, rows)
    failed = sum(r["status"] != "ok" for r in rows)
    log.info("Leaderboard (%d runs, %d failed): %s", len(rows), failed, board)
    if plot:
        log.info("Study plot: %s", plot)
    if best:
        log.info("Best checkpoint (val acc %.2f%%): %s", 100 * best["val_acc"], best["checkpoint"])
    return rows


class LeaderboardCallback(Callback):
    """Hydra callback: summarize every multirun when its last job has ended."""

    def __init__(self, best_record: str = str(BEST_RECORD)) -> None:
        self.best_record = Path(best_record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(config.hydra.sweep.dir, self.best_record)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hdr.sweep SWEEP_DIR   (e.g. outputs/train/multiruns/<date>)")
    try:
        summarize(sys.argv[1])
    except FileNotFoundError as e:
        sys.exit(str(e))
    print((Path(sys.argv[1]) / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
