"""The grid on a budget: one real sub-grid swept twice, without and with pruning.

    .venv/bin/python benchmarks/sweep_pruning.py [--prune halving] [--epochs 10]

Sweeps model.lr (6 values) x model.net.activation (3) = 18 runs of the student's MLP
(experiment=student, 10 epochs a run) on the basic launcher, same seeds, first with
sweep.prune=none, then with --prune. Prints the machine, then for each: the epochs trained,
the wall time and the best run found; then the ratios, and an estimate for the student's
full 7,560-run grid on this machine and on N Ray workers. Everything is written to a
temporary folder (or --out): outputs/ stays untouched.
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hdr.utils import cpu_description

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--prune", default="halving", choices=["median", "halving"])
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--out", help="keep the two sweeps in this folder (default: a temporary one)")
args = parser.parse_args()

GRID = ["model.lr=1,0.1,0.01,0.001,0.0001,0.00001", "model.net.activation=relu,sigmoid,tanh"]
FULL_GRID = 7560


def run_sweep(prune: str, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "hdr.train", "-m", "experiment=student", "task_name=bench"]
    cmd += [f"trainer.max_epochs={args.epochs}", *GRID, f"sweep.prune={prune}"]
    cmd += [f"paths.log_dir={folder}", f"hydra.sweep.dir={folder / prune}"]
    cmd += ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(folder / prune / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    results = [json.loads((Path(r["dir"]) / "result.json").read_text()) for r in rows]
    epochs = sum(r.get("pruned_at") or r.get("epochs") or 0 for r in results)
    pruned = sum(r["status"] == "pruned" for r in results)
    best = rows[0]
    return {
        "wall": wall,
        "epochs": epochs,
        "runs": len(rows),
        "pruned": pruned,
        "best": " ".join(
            o
            for o in best["overrides"].split()
            if o.split("=")[0] in ("model.lr", "model.net.activation")
        ),
        "best_val": float(best["val_acc"]),
    }


print(f"machine: {cpu_description()}")
print(f"sub-grid: {' x '.join(GRID)}, {args.epochs} epochs a run, experiment=student")
with tempfile.TemporaryDirectory() as tmp:
    out = Path(args.out or tmp)
    figures = {p: run_sweep(p, out) for p in ("none", args.prune)}
for prune, f in figures.items():
    best = f"best {f['best']} (val {100 * f['best_val']:.2f}%)"
    print(
        f"prune={prune:8s} {f['runs']} runs ({f['pruned']} pruned): {f['epochs']} epochs "
        f"trained in {f['wall']:.0f} s; {best}"
    )
plain, cut = figures["none"], figures[args.prune]
print(
    f"pruning trains {plain['epochs'] / cut['epochs']:.2f}x fewer epochs in "
    f"{plain['wall'] / cut['wall']:.2f}x less time; same best run: "
    f"{plain['best'] == cut['best']}"
)
for label, f in (("without pruning", plain), (f"with {args.prune}", cut)):
    hours = f["wall"] / f["runs"] * FULL_GRID / 3600
    print(
        f"full grid ({FULL_GRID} runs) {label}: ~{hours:.0f} h here; "
        f"~{hours / 8:.1f} h on 8 such Ray workers, ~{hours / 32:.1f} h on 32"
    )
