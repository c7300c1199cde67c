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
    shear: float = 0.0,
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
    bilinear at random sub-pixel offsets softens every stroke (56% of MNIST's ink stays
    near full strength after bicubic, 43% after bilinear, 65% untouched), and the test
    digits are crisp. Bicubic overshoots a little, hence the clamp."""
    y = F.grid_sample(x, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
    return y.clamp(0, 1)


def random_thickness(x: torch.Tensor, amount: float = 1.0) -> torch.Tensor:
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


def elastic(x: torch.Tensor, alpha: float = 34.0, sigma: float = 4.0) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003): every pixel moved by a random field,
    uniform in [-1, 1] per pixel, smoothed by a Gaussian of `sigma` px, scaled by `alpha` px."""
    return warp(x, affine_grid(x) + elastic_field(x, alpha, sigma))


def elastic_field(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """elastic's displacements, [N, H, W, 2] in grid_sample's coordinates: added to any
    sampling grid. The smoothing is two small matrix products (rows, then columns), not a
    convolution: ~20x faster on a CPU for 28x28 fields."""
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


def low_resolution(
    x: torch.Tensor, share: float = 0.3, sizes: Sequence[int] = (8, 14)
) -> torch.Tensor:
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


def augment_batch(
    x: torch.Tensor,
    rotate: float = 0.0,
    scale: Sequence[float] = (1.0, 1.0),
    shift: float = 0.0,
    shear: float = 0.0,
    thickness: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
    low_res: float = 0.0,
) -> torch.Tensor:
    """Each augmentation that is switched on (a non-zero setting), on the whole batch:
    stroke thickness, then the elastic distortion and the random affine as ONE resampling
    (the field added to the affine's grid), then low-resolution round trips. Two bilinear
    resamplings in a row blur every digit twice: val accuracy sagged as the learning rate
    annealed (docs/results.md). Recipes set them under model.augment; checkpoints from
    before the newer ones rebuild with them off."""
    if thickness:
        x = random_thickness(x, thickness)
    moved = rotate or shift or shear or tuple(scale) != (1.0, 1.0)
    if moved or elastic_alpha:
        grid = affine_grid(x, rotate, scale, shift, shear)
        if elastic_alpha:
            grid = grid + elastic_field(x, elastic_alpha, elastic_sigma)
        x = warp(x, grid)
    if low_res:
        x = low_resolution(x, low_res)
    return x
