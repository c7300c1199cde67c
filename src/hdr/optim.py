"""The optimizer and its per-step schedule, by name, from a model's settings: what the
LightningModule configures and the benchmarks' plain loops step with."""

from typing import Any

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "onecycle", "cosine")  # stepped every batch; lr is the peak


def build_optimizer(
    params: Any, hp: Any, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer and its schedule from settings with optimizer, lr, betas, weight_decay
    and scheduler (a DigitClassifier's hparams, or a ModelConfig)."""
    kwargs = {"lr": hp.lr, "weight_decay": hp.weight_decay}
    if hp.optimizer != "sgd":
        # fused: one kernel updates every tensor; one-cycle cycles betas[0] (0.85-0.95)
        kwargs |= {"betas": tuple(hp.betas), "fused": True}
    opt = OPTIMIZERS[hp.optimizer](params, **kwargs)
    if hp.scheduler == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total_steps)
    if hp.scheduler == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, None
