"""Where a recipe's training time goes: torch's profiler over epochs of the real Trainer.

    .venv/bin/python benchmarks/profile_train.py experiment=fast_cnn [--epochs 1]
    .venv/bin/python benchmarks/profile_train.py experiment=student --epochs 4

The recipe comes from the real config (any Hydra overrides). Prints the wall time of the
fit and the share of it in each kind of work, from the profiler's own time per operator:
matmuls and convolutions forward and backward, pooling, batch norm, activations, the
optimizer, batch indexing, zero-filling, and the rest, which is Python: Lightning's hooks,
our training_step, the sampler (and torch's own per-step checks, such as the CUDA check in
Adam's step). The profiler slows the fit; the shares, not the seconds, are the point. Then the
top operators by own time.
"""

import argparse
import sys
import time
from pathlib import Path

from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.runs.config import check, compose
from hdr.utils import cpu_description
from tests.helpers import quiet_trainer

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_cnn")
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()

cfg = compose(args.overrides or ["experiment=student"])
check(cfg)
dm = instantiate(cfg.data, download=False)
dm.setup()
trainer = quiet_trainer(max_epochs=args.epochs, accelerator="cpu", precision=cfg.trainer.precision)
model = instantiate(cfg.model)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - start

# Operator name fragments -> kind of work; the first match wins.
KINDS = [
    ("convolutions, forward", ("mkldnn_convolution",)),
    ("convolutions, backward", ("convolution_backward",)),
    ("matmuls, forward and backward", ("aten::addmm", "aten::mm", "aten::bmm")),
    ("max-pool, forward and backward", ("max_pool",)),
    ("batch norm, forward and backward", ("batch_norm",)),
    ("ReLU, forward and backward", ("relu", "threshold_backward", "clamp_min")),
    ("zero-filling (pool gradients)", ("aten::fill_", "aten::zero_")),
    ("loss and softmax", ("cross_entropy", "log_softmax", "nll_loss")),
    ("optimizer step (the update itself)", ("_fused_adam", "_foreach_")),
    ("batch indexing", ("aten::index",)),
]
events = prof.key_averages()
seconds = {kind: 0.0 for kind, _ in KINDS}
for event in events:
    name = event.key.lower()
    kind = next((k for k, parts in KINDS if any(p.lower() in name for p in parts)), None)
    if kind:
        seconds[kind] += event.self_cpu_time_total / 1e6
print(cpu_description())
print(
    f"recipe: {' '.join(args.overrides) or 'experiment=student'}, {args.epochs} epoch(s), "
    f"precision {cfg.trainer.precision}; fit took {wall:.2f} s (profiled)"
)
for kind, s in seconds.items():
    print(f"  {kind:34s} {s:6.2f} s  {s / wall:5.1%}")
rest = wall - sum(seconds.values())
print(f"  {'everything else (Python, hooks)':34s} {rest:6.2f} s  {rest / wall:5.1%}")
print()
print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
