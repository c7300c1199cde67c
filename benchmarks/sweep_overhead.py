"""What a sweep costs beyond its training: a small sweep of the student's MLP against the same
runs and epochs in a plain PyTorch loop.

    .venv/bin/python benchmarks/sweep_overhead.py [--runs 3] [--epochs 5]

Both are whole commands timed from outside, start-up, imports and data loading included,
since that is what a person waits for: `python -m hdr.train -m experiment=student` over
`--runs` learning rates on the basic launcher (with everything a run records: validation
and its confusion matrix each epoch, two checkpoints each epoch, the test, the drawings
report, plots, result.json, the leaderboard), and this script's own plain loop (`--plain`:
one process, the same net, optimizer, batches and epochs, no validation, nothing written).
Prints the machine, both figures in seconds per epoch and their ratio (target <= 1.15).
Everything is written to a temporary folder: outputs/ and its best.json stay untouched.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LRS = ["0.01", "0.003", "0.001", "0.0003", "0.0001"]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--runs", type=int, default=3, help=f"runs (learning rates), 1-{len(LRS)}")
parser.add_argument("--epochs", type=int, default=5, help="epochs a run")
parser.add_argument("--plain", action="store_true", help="run the plain loop (used by itself)")
args = parser.parse_args()


def plain() -> None:
    """The same runs by hand: build, shuffle, index a batch, step."""
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hdr.config import CONF_DIR
    from hdr.module import build_optimizer

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=student"])
    dm = instantiate(cfg.data, download=False)
    dm.setup()
    train, batch = dm.splits["train"], cfg.data.batch_size
    for lr in LRS[: args.runs]:
        torch.manual_seed(0)
        model = instantiate(cfg.model, lr=float(lr))
        opt, _ = build_optimizer(model.parameters(), model.hparams, 0)
        for _ in range(args.epochs):
            for idx in torch.randperm(len(train)).split(batch):
                loss = F.cross_entropy(model(train.images[idx]), train.targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    from hdr.utils import cpu_description

    epochs = args.runs * args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        sweep = [
            sys.executable, "-m", "hdr.train", "-m", "experiment=student", "task_name=bench",
            f"trainer.max_epochs={args.epochs}", f"model.lr={','.join(LRS[: args.runs])}",
            f"paths.log_dir={tmp}", f"hydra.sweep.dir={Path(tmp) / 'sweep'}",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        ]  # fmt: skip
        swept = timed(sweep)
    by_hand = timed([sys.executable, __file__, "--plain", f"--runs={args.runs}",
                     f"--epochs={args.epochs}"])  # fmt: skip
    print(cpu_description())
    print(f"{args.runs} runs x {args.epochs} epochs of the student's MLP (batch 2900)")
    print(f"sweep: {swept:.1f} s, {swept / epochs:.2f} s/epoch")
    print(f"plain: {by_hand:.1f} s, {by_hand / epochs:.2f} s/epoch")
    print(f"sweep seconds per epoch / plain seconds per epoch: {swept / by_hand:.2f} "
          "(target <= 1.15)")  # fmt: skip


if __name__ == "__main__":
    plain() if args.plain else main()
