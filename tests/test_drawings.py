"""People's drawings made from MNIST test digits: pictures the app accepts, the same every
time, and read through the app's preprocessing."""

import numpy as np
import pytest
import torch

from hdr.checkpoint import load_model
from hdr.drawings import STYLES, accuracy, draw, make_drawings, pen_lines


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
