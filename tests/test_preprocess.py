"""MNIST-style preprocessing: any canvas, any position, any stroke -> the same 28x28 digit."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hdr.core.module import DigitClassifier
from hdr.core.pictures import BlankDrawing, read_picture, to_mnist
from tests.helpers import BAD_PICTURES, redraw, write_huge, write_pictures


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity after a 5x5 blur: a one-pixel shift of a thin stroke is not a miss."""
    a, b = (F.avg_pool2d(t, 5, stride=1, padding=2) for t in (a, b))
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("canvas", [100, 400, 800])
@pytest.mark.parametrize("size, where", [(0.3, "corner"), (0.8, "centre")])
@pytest.mark.parametrize("thick", [False, True])
def test_redrawn_digits_become_the_same_image(mnist, canvas, size, where, thick):
    test = mnist.splits["test"]
    for i in range(20):
        reference = to_mnist(redraw(test.images[i], 400, 0.8, "centre", thick))
        drawn = to_mnist(redraw(test.images[i], canvas, size, where, thick))
        assert drawn.shape == (1, 1, 28, 28)
        # Canvas size and position change nothing but resampling noise...
        assert similarity(drawn, reference) > (0.85 if thick else 0.9), (i, test.targets[i])
        # ...and the result is still MNIST's own digit (strokes binarised, maybe thickened).
        original = to_mnist(test.images[i, 0].numpy())
        assert similarity(drawn, original) > (0.6 if thick else 0.7), (i, test.targets[i])


def test_digit_is_centred_by_mass_and_fits_20_pixels(mnist):
    drawn = to_mnist(redraw(mnist.splits["test"].images[0], 400, 0.3, "corner", False))[0, 0]
    rows, cols = torch.nonzero(drawn > 0.2, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 20
    ys, xs = torch.arange(28.0), torch.arange(28.0)
    cy = (drawn.sum(1) * ys).sum() / drawn.sum()
    cx = (drawn.sum(0) * xs).sum() / drawn.sum()
    assert abs(cy - 13.5) < 1 and abs(cx - 13.5) < 1


def test_dark_on_light_and_light_on_dark_pictures_agree(mnist):
    digit = redraw(mnist.splits["test"].images[3], 200, 0.6, "centre", False)[..., 3]
    on_black = to_mnist(digit)  # greyscale, light ink on dark
    on_paper = to_mnist(np.stack([255 - digit] * 3, axis=-1))  # RGB, dark ink on white
    assert similarity(on_black, on_paper) > 0.99


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((800, 800, 4), np.uint8),  # an empty sketchpad
        np.full((300, 300, 3), 255, np.uint8),  # white paper
        np.zeros((300, 300), np.uint8),  # black paper
        {"composite": None, "layers": [], "background": None},  # Gradio before any stroke
    ],
    ids=["transparent", "white", "black", "no-composite"],
)
def test_blank_canvas_asks_for_a_digit(image):
    with pytest.raises(BlankDrawing, match="Draw a digit"):
        to_mnist(image)


def test_a_single_dot_is_not_a_digit():
    canvas = np.zeros((400, 400, 4), np.uint8)
    canvas[200:206, 200:206, 3] = 255
    with pytest.raises(BlankDrawing):
        to_mnist(canvas)


def test_strange_arrays_get_a_clear_error():
    with pytest.raises(ValueError, match="greyscale, RGB or RGBA"):
        to_mnist(np.zeros((10, 10, 7), np.uint8))
    with pytest.raises(ValueError, match="run from -1 to -1, where 0 to 255 belong"):
        to_mnist(np.full((10, 10), -1, np.int32))


@pytest.mark.parametrize("dtype, scale", [(np.int32, 1), (np.int64, 1), (np.uint16, 257)])
def test_an_array_of_any_integer_type_reads_as_8_bit_does(mnist, dtype, scale):
    digit = redraw(mnist.splits["test"].images[3], 200, 0.6, "centre", False)[..., 3]
    # numpy's own int64 from a list of 0-255, an int32 as other libraries give: "any integer"
    assert similarity(to_mnist(digit.astype(dtype) * scale), to_mnist(digit)) > 0.999


@pytest.mark.slow
def test_trained_mlp_reads_redrawn_digits(mnist, well_trained_checkpoint):
    path = well_trained_checkpoint
    model = DigitClassifier.load_from_checkpoint(path, weights_only=True).eval()
    test = mnist.splits["test"]
    n = 300
    # Large, thick, off-centre, on a transparent canvas: the hard case for a naive resize.
    drawn = torch.cat(
        [to_mnist(redraw(test.images[i], 400, 0.6, "corner", True)) for i in range(n)]
    )
    with torch.inference_mode():
        clean = (model(test.images[:n]).argmax(1) == test.targets[:n]).float().mean().item()
        acc = (model(drawn).argmax(1) == test.targets[:n]).float().mean().item()
    assert acc >= 0.97, f"re-drawn {acc:.3f} vs the same digits as MNIST has them {clean:.3f}"


@pytest.fixture(scope="module")
def pictures(mnist, tmp_path_factory) -> dict:
    """Every kind of upload, good and bad, written once for the module (the 100-megapixel
    PNG takes a few seconds to make)."""
    folder = tmp_path_factory.mktemp("pictures")
    drawn = redraw(mnist.splits["test"].images[3], 300, 0.7, "centre", True)
    return {**write_pictures(folder, drawn), "huge.png": write_huge(folder / "huge.png")}


def test_pictures_in_any_mode_become_the_same_digit(pictures):
    paths = pictures
    reference = to_mnist(read_picture(paths["grey.png"]))
    for name in [n for n in paths if n not in BAD_PICTURES]:
        assert similarity(to_mnist(read_picture(paths[name])), reference) > 0.97, name


@pytest.mark.parametrize("name", BAD_PICTURES)
def test_bad_pictures_get_a_message(pictures, name):
    with pytest.raises(ValueError, match=BAD_PICTURES[name]):
        to_mnist(read_picture(pictures[name]))


def test_an_eps_upload_is_refused_and_runs_no_ghostscript(pictures, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    ran = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"  # where Ghostscript is installed, Pillow calls it for EPS
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # looked up again, finding ours
    for name in ("digit.eps", "eps-named.png"):
        with pytest.raises(ValueError, match="is not a picture hdr reads"):
            read_picture(pictures[name])
        with pytest.raises(ValueError, match="is not a picture hdr reads"):
            read_picture(pictures[name].read_bytes())
    assert not ran.exists()
