"""Data augmentation on whole batches with tensor ops: no per-image Python in the loop.
Its settings: hdr.core.settings.AugmentConfig (`model.augment`)."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hdr.core.settings import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Each augmentation that is on (non-zero): stroke thickness, then the elastic distortion
    and the random affine as ONE resampling (two in a row blur every digit twice,
    docs/results.md), then low-resolution round trips."""
    if cfg.thickness:
        x = random_thickness(x, cfg.thickness)
    moved = cfg.rotate or cfg.shift or cfg.shear or tuple(cfg.scale) != (1.0, 1.0)
    if moved or cfg.elastic_alpha:
        grid = affine_grid(x, cfg.rotate, cfg.scale, cfg.shift, cfg.shear)
        if cfg.elastic_alpha:
            grid = grid + elastic_field(x, cfg.elastic_alpha, cfg.elastic_sigma)
        # Bicubic, not bilinear: bilinear at random sub-pixel offsets softens every stroke,
        # and the test digits are crisp. Bicubic overshoots a little, hence the clamp.
        x = F.grid_sample(x, grid, mode="bicubic", align_corners=False).clamp(0, 1)
    if cfg.low_res:
        x = low_resolution(x, cfg.low_res)
    return x


def affine_grid(
    x: torch.Tensor, rotate: float, scale: Sequence[float], shift: float, shear: float
) -> torch.Tensor:
    """grid_sample's [N, H, W, 2] grid: each image rotated by up to +-rotate degrees, scaled
    within `scale`, sheared by up to +-shear, shifted by up to +-shift pixels."""
    n, _, h, w = x.shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(rotate)
    s = torch.empty(n, device=x.device).uniform_(scale[0], scale[1])
    # affine_grid maps output to input coordinates in [-1, 1]: shrinking the grid enlarges.
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    size = torch.tensor([w, h], device=x.device)
    t = (torch.rand(n, 2, device=x.device) * 2 - 1) * shift * 2 / size
    k = (torch.rand(n, device=x.device) * 2 - 1) * shear
    theta = torch.stack(
        [torch.stack([cos, -sin + k, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1
    )
    return F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)


def random_thickness(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Strokes thicker or thinner, each image by a random amount in [-amount, amount]: a
    blend towards the 3x3 dilation above 0, towards the erosion below it, half as far (a
    whole erosion wipes out MNIST's 2-px strokes)."""
    t = (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * amount
    # One 3x3 max for both, x and -x: shifted maxima, rows then columns, several times
    # faster than max_pool2d on 1-channel images.
    both = F.pad(torch.cat([x, -x]), (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(both[..., :-2], both[..., 1:-1]), both[..., 2:])
    both = torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
    thick, thin = both.chunk(2)
    return torch.where(t > 0, x + t * (thick - x), x + t / 2 * (thin + x))


def elastic_field(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003) as [N, H, W, 2] displacements in grid_sample's
    coordinates: a uniform random field smoothed by a Gaussian of `sigma` px (two small
    matrix products, much faster than a convolution on a CPU), scaled by `alpha` px."""
    n, _, h, w = x.shape

    def gaussian(size: int) -> torch.Tensor:  # [size, size]; each column sums to 1
        i = torch.arange(size, device=x.device, dtype=x.dtype)
        g = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
        return g / g.sum(0, keepdim=True)

    field = torch.rand(n, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
    field = gaussian(h).T @ field @ gaussian(w)
    size = torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1)
    return (field * alpha * 2 / size).permute(0, 2, 3, 1)


def low_resolution(x: torch.Tensor, share: float, sizes: Sequence[int] = (8, 14)) -> torch.Tensor:
    """A random `share` of the images as small or blurry scans: shrunk to a random side in
    `sizes` (area average), then blown back up bilinearly."""
    pick = torch.rand(len(x), device=x.device) < share
    if not pick.any():
        return x
    side = int(torch.randint(sizes[0], sizes[1] + 1, ()))
    small = F.interpolate(x[pick], size=(side, side), mode="area")
    x = x.clone()
    x[pick] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x
