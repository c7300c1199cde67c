"""People's drawings made from MNIST test digits: pictures the app accepts, the same every
time, and read through the app's preprocessing."""

import numpy as np
import pytest
import torch

from hdr.core.drawings import (
    STYLES,
    accuracy,
    draw,
    make_drawings,
    pen_lines,
    pen_path,
    thin,
)
from hdr.runs.checkpoint import load_model
from hdr.runs.report import DrawingsReport


def test_each_style_is_a_picture_as_the_app_receives_it(mnist):
    (lines,) = pen_lines(mnist.splits["test"].images[:1])
    rng = np.random.default_rng(0)
    canvas, thin, layer, scan = (draw(lines, style, rng) for style in STYLES)
    assert canvas.shape == (400, 400, 3) and canvas[0, 0].tolist() == [255, 255, 255]
    assert thin.shape == (100, 100) and thin.min() < 128  # dark ink on white
    assert layer.shape == (512, 512, 4) and layer[..., 3].max() == 255 and layer[0, 0, 3] == 0
    assert scan.shape == (200, 200) and 150 < np.median(scan) < 255  # grey paper
    for picture in (canvas, thin, layer, scan):
        assert picture.dtype == np.uint8
    with pytest.raises(ValueError, match="Unknown drawing style 'oil'"):
        draw(lines, "oil", rng)


@pytest.mark.slow
def test_drawings_are_the_same_every_time_and_mostly_read_right(mnist, well_trained_checkpoint):
    test = mnist.splits["test"]
    first = make_drawings(test.images, test.targets, 25)
    again = make_drawings(test.images, test.targets, 25)
    for style in STYLES:
        x, y = first[style]
        assert x.shape == (25, 1, 28, 28) and torch.equal(x, again[style][0])
        assert torch.equal(y, again[style][1])
    acc = accuracy(load_model(well_trained_checkpoint), first)
    assert set(acc) == {*STYLES, "all"}
    assert acc["all"] > 0.7  # an MLP trained 4 epochs on plain MNIST reads most of them


def test_thinning_keeps_a_ring_whole_and_one_pixel_wide():
    i = torch.arange(84.0)
    r = ((i[:, None] - 41.5) ** 2 + (i[None, :] - 41.5) ** 2).sqrt()
    ring = ((r > 12) & (r < 21)).float()  # a stroke 9 px wide
    line = thin(ring[None])[0]
    ys, xs = line.nonzero(as_tuple=True)
    radius = ((ys - 41.5) ** 2 + (xs - 41.5) ** 2).sqrt()
    assert 15 < radius.mean() < 18.5 and radius.min() > 12 and radius.max() < 21  # its middle
    blocks = line[:-1, :-1] * line[1:, :-1] * line[:-1, 1:] * line[1:, 1:]
    assert blocks.sum() == 0  # no 2x2 block of ink: one pixel wide
    angle = torch.atan2(ys - 41.5, xs - 41.5)
    assert len(torch.unique(((angle + torch.pi) / (2 * torch.pi) * 72).long())) >= 71  # whole
    # traced again with a 5-px pen: a ring 5 px wide, not the 9 px it was
    pen = pen_path(torch.nn.functional.interpolate(line[None, None], scale_factor=2)[0, 0], 5)
    assert 0.2 < pen.sum() / (ring.sum() * 4) < 0.75


def test_drawings_are_made_once_into_their_cache_and_a_damaged_one_is_made_again(mnist, tmp_path):
    test = mnist.splits["test"]
    made = DrawingsReport(per_style=5, cache_dir=str(tmp_path))._cached(test, "test", 5, 0)
    (cached,) = tmp_path.glob("drawings-test-5-0-*.pt")  # named by the code that makes them
    fresh = make_drawings(test.images, test.targets, 5)
    for style in STYLES:
        assert torch.equal(made[style][0], fresh[style][0])
    stamp = cached.stat().st_mtime_ns
    again = DrawingsReport(per_style=5, cache_dir=str(tmp_path))._cached(test, "test", 5, 0)
    assert cached.stat().st_mtime_ns == stamp and torch.equal(again["scan"][0], fresh["scan"][0])
    cached.write_bytes(b"cut short")
    remade = DrawingsReport(per_style=5, cache_dir=str(tmp_path))._cached(test, "test", 5, 0)
    assert torch.equal(remade["canvas"][0], fresh["canvas"][0]) and cached.stat().st_size > 1000
