"""How long one scan of a folder's runs takes (hdr.runs.records.scan, then ranked): what the
app, the leaderboard, the best_of resolver and the SLURM launcher each do once. 7,560 run
folders (the grid study's size) as runs leave them: result.json, .hydra/overrides.yaml,
checkpoints/ with last.ckpt and the best epoch, tensorboard/ with its events file.

    .venv/bin/python benchmarks/scan.py [--runs 7560] [--dir FOLDER]

Goal: under 1 s. The median of 3 scans; the first reads files the generation just wrote, so
it is the page cache's figure, not a cold disk's."""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hdr.runs.records import ranked, scan
from hdr.utils import cpu_description

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--runs", type=int, default=7560)
parser.add_argument("--dir", help="where to generate them (default: a temporary folder)")
args = parser.parse_args()

with tempfile.TemporaryDirectory(dir=args.dir) as folder:
    sweep = Path(folder) / "sweep_grid" / "multiruns" / "2026-01-01_00-00-00_000000"
    for i in range(args.runs):
        overrides = [f"model.lr={10 ** -(i % 6)}", f"model.hidden=[{64 * (i % 9 + 1)}]"]
        run = sweep / f"{i}_{','.join(overrides)}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"0" * 64)
        (run / "checkpoints" / f"epoch_{i % 10:03d}.ckpt").write_bytes(b"0" * 64)
        (run / "tensorboard").mkdir()
        (run / "tensorboard" / f"events.out.tfevents.{i}").write_bytes(b"0" * 64)
        result = {
            "status": "ok" if i % 10 else "failed",
            "val_acc": 0.9 + (i % 97) / 1000,
            "val_images": 5000,
            "test_acc": 0.9,
            "epochs": 10,
            "seconds": 61.2,
            "checkpoint": f"checkpoints/epoch_{i % 10:03d}.ckpt",
            "overrides": overrides,
            "tags": ["dev"],
            "host": "node1",
            "pid": 1000 + i,
        }
        (run / "result.json").write_text(json.dumps(result, indent=2))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        rows = ranked(scan(folder))
        times.append(time.perf_counter() - start)
    print(cpu_description())
    print(
        f"scan + ranked of {args.runs:,} runs: {statistics.median(times):.3f} s "
        f"(median of 3: {', '.join(f'{t:.3f}' for t in times)}), {len(rows):,} ranked"
    )
