"""Data augmentation on whole batches with tensor ops: no per-image Python in the loop.

`AugmentConfig` is `model.augment`: its settings, their defaults and allowed values."""

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from hdr.checks import ConfigError, require


@dataclass
class AugmentConfig:
    """What `augment_batch` does to each training batch. The random affine's three settings
    are given together; the rest are off unless a recipe sets them."""

    rotate: float  # degrees, either way
    scale: Sequence[float]  # [low, high]
    shift: float  # pixels, either way
    shear: float = 0.0  # slant: horizontal shear up to this (0.3: about 17 degrees)
    thickness: float = 0.0  # strokes up to this far towards a 3x3 dilation / erosion
    elastic_alpha: float = 0.0  # elastic distortion, pixels
    elastic_sigma: float = 4.0  # its smoothness, pixels
    low_res: float = 0.0  # share of images sent through a low-resolution round trip

    def __post_init__(self) -> None:
        require(0 <= self.shear <= 1, "model.augment.shear", self.shear, "in [0, 1], e.g. 0.3")
        require(0 <= self.thickness <= 1, "model.augment.thickness", self.thickness, "in [0, 1]")
        alpha, sigma = self.elastic_alpha, self.elastic_sigma
        require(alpha >= 0, "model.augment.elastic_alpha", alpha, "pixels, >= 0 (0: off)")
        require(sigma > 0, "model.augment.elastic_sigma", sigma, "pixels, > 0, e.g. 4")
        require(0 <= self.low_res <= 1, "model.augment.low_res", self.low_res, "in [0, 1]")
        require(self.rotate >= 0, "model.augment.rotate", self.rotate, "degrees, >= 0")
        lo_hi = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        require(lo_hi, "model.augment.scale", self.scale, "give [low, high], 0 < low <= high")
        require(self.shift >= 0, "model.augment.shift", self.shift, "pixels, >= 0")

    @classmethod
    def of(cls, value: Any) -> "AugmentConfig":
        """`model.augment` as written in a config (a mapping), checked key by key.
        (Untyped for Hydra: OmegaConf cannot merge a mapping into a typed node that is
        null, so `model.augment={rotate: 10, ...}` would fail to compose.)"""
        example = "e.g. {rotate: 10, scale: [0.9, 1.1], shift: 2}"
        require(isinstance(value, dict), "model.augment", value, f"null, or a mapping, {example}")
        known = [f.name for f in fields(cls)]
        for key in value:
            if key not in known:
                raise ConfigError(
                    f"model.augment.{key} is not a known key: it takes {', '.join(known)}."
                )
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in value]
        require(not missing, "model.augment", value, f"give {', '.join(missing)} too, {example}")
        try:
            return cls(**value)
        except TypeError:  # a string where a number belongs
            raise ConfigError(
                f"model.augment={value!r} is not allowed: its values are numbers, scale a "
                f"[low, high] pair, {example}."
            ) from None


def random_affine(
    x: torch.Tensor, rotate: float, scale: Sequence[float], shift: float, shear: float = 0.0
) -> torch.Tensor:
    """Each image of [N, C, H, W] rotated by up to +-rotate degrees, scaled within `scale`,
    slanted by a horizontal shear up to +-shear (0.3: about 17 degrees), shifted by up to
    +-shift pixels; the background (0) fills what moves in."""
    return warp(x, affine_grid(x, rotate, scale, shift, shear))


def affine_grid(
    x: torch.Tensor,
    rotate: float = 0.0,
    scale: Sequence[float] = (1.0, 1.0),
    shift: float = 0.0,
    shear: float = 0.0,
) -> torch.Tensor:
    """grid_sample's [N, H, W, 2] sampling grid of random_affine, one transform per image
    (all settings 0: the identity)."""
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
    k = (torch.rand(n, device=x.device) * 2 - 1) * shear
    theta = torch.stack(
        [torch.stack([cos, -sin + k, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1
    )
    return F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """x resampled at grid; the background (0) fills what moves in. Bicubic, not bilinear:
    bilinear at random sub-pixel offsets softens every stroke, and the test digits are crisp
    (docs/results.md). Bicubic overshoots a little, hence the clamp."""
    y = F.grid_sample(x, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
    return y.clamp(0, 1)


def random_thickness(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Strokes made thicker or thinner, each image by its own random amount in
    [-amount, amount]: a blend towards the 3x3 dilation (max-pool) above 0, towards the
    erosion (min-pool) below it, half as far, since a whole erosion wipes out MNIST's
    2-px strokes. Thick markers and thin pens, on the tensor side."""
    t = (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * amount
    # One 3x3 max for both: the dilation of x and, negated, of -x (the erosion). Shifted
    # maxima, rows then columns: several times faster than max_pool2d on 1-channel images.
    both = F.pad(torch.cat([x, -x]), (1, 1, 1, 1), value=-math.inf)
    rows = torch.maximum(torch.maximum(both[..., :-2], both[..., 1:-1]), both[..., 2:])
    both = torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
    thick, thin = both.chunk(2)
    return torch.where(t > 0, x + t * (thick - x), x + t / 2 * (thin + x))


def elastic(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003): every pixel moved by a random field,
    uniform in [-1, 1] per pixel, smoothed by a Gaussian of `sigma` px, scaled by `alpha` px."""
    return warp(x, affine_grid(x) + elastic_field(x, alpha, sigma))


def elastic_field(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """elastic's displacements, [N, H, W, 2] in grid_sample's coordinates: added to any
    sampling grid. The smoothing is two small matrix products (rows, then columns), not a
    convolution, and much faster on a CPU for 28x28 fields."""
    n, _, h, w = x.shape

    def gaussian(size: int) -> torch.Tensor:  # [size, size]; each column sums to 1
        i = torch.arange(size, device=x.device, dtype=x.dtype)
        g = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
        return g / g.sum(0, keepdim=True)

    field = torch.rand(n, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
    field = gaussian(h).T @ field @ gaussian(w)
    # pixels -> grid_sample's [-1, 1] coordinates (x first, then y)
    field = (
        field * alpha * 2 / torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1)
    )
    return field.permute(0, 2, 3, 1)


def low_resolution(x: torch.Tensor, share: float, sizes: Sequence[int] = (8, 14)) -> torch.Tensor:
    """A random `share` of the images sent through a low-resolution round trip, as a small
    or blurry scan: shrunk to one random side in `sizes` (area average), then blown back
    up bilinearly, which also blurs."""
    pick = torch.rand(len(x), device=x.device) < share
    if not pick.any():
        return x
    side = int(torch.randint(sizes[0], sizes[1] + 1, ()))
    small = F.interpolate(x[pick], size=(side, side), mode="area")
    x = x.clone()
    x[pick] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x


def augment_batch(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Each augmentation that is switched on (a non-zero setting), on the whole batch:
    stroke thickness, then the elastic distortion and the random affine as ONE resampling
    (the field added to the affine's grid), then low-resolution round trips. Two resamplings
    in a row blur every digit twice (docs/results.md)."""
    if cfg.thickness:
        x = random_thickness(x, cfg.thickness)
    moved = cfg.rotate or cfg.shift or cfg.shear or tuple(cfg.scale) != (1.0, 1.0)
    if moved or cfg.elastic_alpha:
        grid = affine_grid(x, cfg.rotate, cfg.scale, cfg.shift, cfg.shear)
        if cfg.elastic_alpha:
            grid = grid + elastic_field(x, cfg.elastic_alpha, cfg.elastic_sigma)
        x = warp(x, grid)
    if cfg.low_res:
        x = low_resolution(x, cfg.low_res)
    return x
