"""What a sweep costs beyond its training: a small sweep of the student's MLP against the same
runs and epochs in a plain PyTorch loop.

    .venv/bin/python benchmarks/sweep_overhead.py [--runs 3] [--epochs 10] [--repeat 3]

Both are whole commands timed from outside, start-up, imports and data loading included,
since that is what a person waits for: `python -m hdr.train -m experiment=student` over
`--runs` learning rates on the basic launcher (with everything a run records: validation
and its confusion matrix each epoch, two checkpoints each epoch, the test, the drawings
report, plots, result.json, the leaderboard), and this script's own plain loop (`--plain`:
one process, the same net, optimizer, batches and epochs, no validation, nothing written).
Prints the machine, both figures in seconds per epoch and their ratio (target <= 1.15).
This shared VM's speed drifts by up to 20% from one minute to the next, more than the overhead
itself, so the two commands run in `--repeat` back-to-back pairs, in turns (sweep first, then
plain first, ...: a steady drift favours neither), and the headline is the median of the
pairs' ratios: each ratio compares two commands of the same minute. The count is even, so
each order weighs the same, and each order's median is printed too (docs/performance.md: one
run split by order, the next did not). So are the fastest of each (which may come from
minutes apart) and the CPU seconds.
The sweeps share one temporary log folder, as a person's sweeps share outputs/: the first
makes the drawings report's drawings (about 2 s) and keeps them in its .cache/, and the later
ones read them, as every sweep after a person's first does. outputs/ stays untouched.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time

LRS = ["0.01", "0.003", "0.001", "0.0003", "0.0001"]
# A quiet multirun of the student's MLP.
BENCH_SWEEP = [sys.executable, "-m", "hdr.train", "-m", "experiment=student", "task_name=bench"]
BENCH_SWEEP += ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--runs", type=int, default=3, help=f"runs (learning rates), 1-{len(LRS)}")
# 10: the epochs of each run of the student's grid (conf/hparams_search/grid.yaml), which
# spread a run's fixed cost (start, test, drawings, plots) as a real sweep spreads it
parser.add_argument("--epochs", type=int, default=10, help="epochs a run")
parser.add_argument(
    "--repeat", type=int, default=4, help="pairs of timings (even: both orders alike)"
)
parser.add_argument("--plain", action="store_true", help="run the plain loop (used by itself)")
args = parser.parse_args()


def plain() -> None:
    """The same runs by hand: build, shuffle, index a batch, step."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from hdr.core.module import build_optimizer
    from hdr.runs.config import compose

    cfg = compose(["experiment=student"])
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


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the command and its children: the
    CPU figure moves less when the VM's neighbours take its time."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu


def main() -> None:
    from hdr.utils import cpu_description

    epochs = args.runs * args.epochs
    lrs = ",".join(LRS[: args.runs])
    print(cpu_description())
    print(f"{args.runs} runs x {args.epochs} epochs of the student's MLP (batch 2900)")
    swept, by_hand = [], []
    logs = tempfile.TemporaryDirectory()  # one log folder, as a person's outputs/
    plain_cmd = [
        sys.executable,
        __file__,
        "--plain",
        f"--runs={args.runs}",
        f"--epochs={args.epochs}",
    ]
    for attempt in range(args.repeat):
        folders = [f"paths.log_dir={logs.name}", f"hydra.sweep.dir={logs.name}/sweep{attempt}"]
        sweep = [*BENCH_SWEEP, f"trainer.max_epochs={args.epochs}", f"model.lr={lrs}", *folders]
        if attempt % 2:  # in turns: plain first
            by_hand.append(timed(plain_cmd))
            swept.append(timed(sweep))
        else:
            swept.append(timed(sweep))
            by_hand.append(timed(plain_cmd))
        print(
            f"pair {attempt + 1}: sweep {swept[-1][0]:.1f} s ({swept[-1][1]:.1f} CPU s), "
            f"plain {by_hand[-1][0]:.1f} s ({by_hand[-1][1]:.1f} CPU s), "
            f"ratio {swept[-1][0] / by_hand[-1][0]:.2f}",
            flush=True,
        )
    logs.cleanup()
    for what, i in (("wall", 0), ("CPU", 1)):
        ratios = [s[i] / p[i] for s, p in zip(swept, by_hand, strict=True)]
        best_sweep, best_plain = min(t[i] for t in swept), min(t[i] for t in by_hand)
        print(
            f"{what}: sweep {best_sweep / epochs:.2f} s/epoch, plain {best_plain / epochs:.2f} "
            f"s/epoch (fastest of {args.repeat}): ratio {best_sweep / best_plain:.2f}; "
            f"median of the pairs' ratios {statistics.median(ratios):.2f}"
        )
    walls = [s[0] / p[0] for s, p in zip(swept, by_hand, strict=True)]
    for order, first in (("sweep first", 0), ("plain first", 1)):
        if same := walls[first::2]:
            print(f"{order}: median of {len(same)} pairs {statistics.median(same):.2f}")
    ratio = statistics.median(walls)
    print(
        f"sweep seconds per epoch / plain seconds per epoch: {ratio:.2f} "
        "(median of the pairs, wall; target <= 1.15)"
    )


if __name__ == "__main__":
    plain() if args.plain else main()
