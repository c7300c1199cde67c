"""How long the command takes to answer without training: `--help`, `--cfg job`, a refused
value and `--info`, each beside `python -c "import hydra"` (the floor), and whether it
imported torch or Lightning (goal: at most 1.5 s on 2 cores, neither imported).

    .venv/bin/python benchmarks/startup.py [--runs 3]

The median wall time of --runs starts of each, from the checkout, records in a temporary
folder."""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from hdr.runs.config import ROOT
from hdr.utils import cpu_description

COMMANDS = {
    'python -c "import hydra" (the floor)': ["-c", "import hydra"],
    "python -m hdr.train --help": ["-m", "hdr.train", "--help"],
    "python -m hdr.train --cfg job": ["-m", "hdr.train", "--cfg", "job"],
    "python -m hdr.train model.lr=-1 (refused)": ["-m", "hdr.train", "model.lr=-1"],
    "python -m hdr.train --info": ["-m", "hdr.train", "--info"],
}

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--runs", type=int, default=3)
args = parser.parse_args()
print(cpu_description())
with tempfile.TemporaryDirectory() as logs:
    env = {**os.environ, "HDR_LOG_DIR": logs}
    for name, argv in COMMANDS.items():
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True)
            times.append(time.perf_counter() - start)
        # once more, listing what it imports (each module's line ends "| name")
        traced = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
        run = subprocess.run([sys.executable, *argv], cwd=ROOT, env=traced, capture_output=True)
        modules = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.decode().splitlines()}
        heavy = " and ".join(m for m in ("torch", "lightning") if m in modules) or "neither"
        print(f"{statistics.median(times):5.2f} s  exit {run.returncode}  {heavy:19}  {name}")
