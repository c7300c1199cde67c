"""Data augmentation on whole batches with tensor ops: no per-image Python in the loop.
Its settings: hdr.core.settings.AugmentConfig (`model.augment`)."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hdr.core.settings import AugmentConfig


def augment_batch(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Each augmentation that is on (non-zero): thickness, then affine and elastic as ONE
    resampling (two in a row blur every digit twice, docs/results.md), then low resolution."""
    if cfg.thickness:
        x = random_thickness(x, cfg.thickness)
    if cfg.rotate or cfg.shift or cfg.shear or tuple(cfg.scale) != (1.0, 1.0) or cfg.elastic_alpha:
        # Rotated by up to +-rotate degrees, scaled, sheared, shifted by up to +-shift px, as a
        # grid mapping output to input coordinates in [-1, 1] (shrinking the grid enlarges).
        n, _, h, w = x.shape
        angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(cfg.rotate)
        s = torch.empty(n, device=x.device).uniform_(cfg.scale[0], cfg.scale[1])
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        t = (torch.rand(n, 2, device=x.device) * 2 - 1) * cfg.shift * 2
        t = t / torch.tensor([w, h], device=x.device)
        k = (torch.rand(n, device=x.device) * 2 - 1) * cfg.shear
        rows = [torch.stack([cos, -sin + k, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)]
        grid = F.affine_grid(torch.stack(rows, 1).to(x.dtype), list(x.shape), align_corners=False)
        if cfg.elastic_alpha:
            grid = grid + elastic_field(x, cfg.elastic_alpha, cfg.elastic_sigma)
        # Bicubic, not bilinear: bilinear at random sub-pixel offsets softens every stroke,
        # and the test digits are crisp. Bicubic overshoots a little, hence the clamp.
        x = F.grid_sample(x, grid, mode="bicubic", align_corners=False).clamp(0, 1)
    if cfg.low_res:
        x = low_resolution(x, cfg.low_res)
    return x


def random_thickness(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Each image's strokes blended by a random t in [-amount, amount] towards their 3x3
    dilation if t > 0, else half as far towards the erosion (a whole one erases 2-px strokes)."""
    t = (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * amount
    # One 3x3 max for x and -x, as shifted maxima: several times faster than max_pool2d here.
    both = F.pad(torch.cat([x, -x]), (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(both[..., :-2], both[..., 1:-1]), both[..., 2:])
    both = torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
    thick, thin = both.chunk(2)
    return torch.where(t > 0, x + t * (thick - x), x + t / 2 * (thin + x))


def elastic_field(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003) as [N, H, W, 2] grid offsets: a random field of
    `alpha` px smoothed by a `sigma` px Gaussian (two matrix products: faster than a conv)."""
    n, _, h, w = x.shape
    i = torch.arange(max(h, w), device=x.device, dtype=x.dtype)
    g = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))  # g[:k, :k]: a side of k
    field = torch.rand(n, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
    field = (g[:h, :h] / g[:h, :h].sum(0)).T @ field @ (g[:w, :w] / g[:w, :w].sum(0))
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
