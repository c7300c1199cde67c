"""Where the seed MLP's training time goes: cProfile over a few epochs with the real Trainer.

    .venv/bin/python benchmarks/profile_train.py [--epochs 4]

Prints the share of the fit spent in the forward matmuls (`linear`), the backward pass
(`run_backward`), batch indexing (`__getitems__`), the optimizer step and everything else
(Lightning's hooks, logging, metrics, the sampler), then the top functions by own time.
"""

import argparse
import cProfile
import os
import pstats

import lightning as L

from hdr.data import MNISTDataModule
from hdr.module import DigitClassifier

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--data-dir", default=os.environ.get("HDR_DATA_DIR", "data"))
args = parser.parse_args()

dm = MNISTDataModule(data_dir=args.data_dir, batch_size=2900, download=False)
dm.setup()
model = DigitClassifier(net={"name": "mlp", "hidden": [1400]}, lr=0.01, standardize=False)
trainer = L.Trainer(
    max_epochs=args.epochs,
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    limit_val_batches=0,
)
profile = cProfile.Profile()
profile.runcall(trainer.fit, model, datamodule=dm)
stats = pstats.Stats(profile)

own = {f"{func[2]}": row[2] for func, row in stats.stats.items()}  # own time by function name
cumulative = {f"{func[2]}": row[3] for func, row in stats.stats.items()}
total = max(cumulative.values())
parts = {
    "forward matmuls (linear)": own.get("<built-in method torch._C._nn.linear>", 0.0),
    "backward pass (run_backward)": own.get(
        "<method 'run_backward' of 'torch._C._EngineBase' objects>", 0.0
    ),
    "batch indexing (__getitems__)": cumulative.get("__getitems__", 0.0),
    "optimizer step (Adam)": cumulative.get("_single_tensor_adam", 0.0),
}
print(f"fit of {args.epochs} epochs: {total:.2f} s")
for name, seconds in parts.items():
    print(f"  {name:32s} {seconds:6.2f} s  {seconds / total:5.1%}")
rest = total - sum(parts.values())
print(f"  {'everything else':32s} {rest:6.2f} s  {rest / total:5.1%}")
print()
stats.sort_stats("tottime").print_stats(12)
