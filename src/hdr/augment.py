"""Data augmentation on whole batches with tensor ops: no per-image Python in the loop."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_affine(
    x: torch.Tensor,
    rotate: float = 10.0,
    scale: Sequence[float] = (0.9, 1.1),
    shift: float = 2.0,
) -> torch.Tensor:
    """Each image of [N, C, H, W] rotated by up to +-rotate degrees, scaled within `scale`,
    shifted by up to +-shift pixels; the background (0) fills what moves in."""
    n, _, h, w = x.shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(rotate)
    s = torch.empty(n, device=x.device).uniform_(scale[0], scale[1])
    # affine_grid maps output to input coordinates in [-1, 1]: shrinking the grid enlarges.
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    t = (
        (torch.rand(n, 2, device=x.device) * 2 - 1)
        * shift
        * 2
        / torch.tensor([w, h], device=x.device)
    )
    theta = torch.stack(
        [torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
