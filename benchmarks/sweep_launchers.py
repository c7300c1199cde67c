"""Wall time of a short learning-rate study: Hydra's default launcher vs joblib with 2 workers.

    .venv/bin/python benchmarks/sweep_launchers.py [--epochs 3]

Runs `python -m hdr.train hparams_search=lr trainer.max_epochs=N` (6 runs of the seed MLP)
twice, one launcher after the other, each writing into a temporary folder so outputs/ stays
untouched. The default launcher runs the jobs one after another with
every core each; joblib runs 2 at once with cores / 2 torch threads each (torch_threads=auto).
"""

import argparse
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
args = parser.parse_args()

LAUNCHERS = {
    "basic (one job at a time)": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
seconds = {}
for name, overrides in LAUNCHERS.items():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "hdr.train", "hparams_search=lr"]
        cmd += [f"trainer.max_epochs={args.epochs}", f"paths.log_dir={tmp}", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds[name] = time.perf_counter() - start
    print(f"{name:28s} {seconds[name]:6.1f} s", flush=True)

basic, joblib = seconds.values()
print(f"lr study, 6 runs x {args.epochs} epochs: joblib / basic = {joblib / basic:.2f}")
