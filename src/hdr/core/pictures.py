"""Any drawing or picture of a digit -> the 28x28 image MNIST would have made of it.

MNIST's digits were size-normalised to fit a 20x20 box (keeping their aspect ratio) and then
centred in 28x28 by their centre of mass. Doing the same to a sketch is what lets a model
trained on MNIST read it, whatever the canvas size and wherever the digit was drawn.
"""

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

BOX = 20  # the longer side of the digit after scaling, as in MNIST
SIZE = 28
MIN_INK = 0.2  # a pixel darker than this (0 = paper, 1 = full ink) counts as drawn
MAX_SIDE = 4096  # uploads larger than this many pixels a side are refused, not decoded
MIN_STRONG = 0.3  # the least share of a digit's inked pixels that is strong ink (> 0.5)
# The formats a picture may be in, told by Pillow from the file's first bytes. No other
# decoder runs on an upload: EPS, for one, hands the file to Ghostscript.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


class BlankDrawing(ValueError):
    """Nothing (or too little) was drawn to read a digit from."""


class NotADigit(ValueError):
    """Something is there, but nothing like a digit's strokes: noise, a texture, a smudge."""


def ink(image: Any) -> np.ndarray:
    """A sketch or picture -> float [H, W] in [0, 1], 1 where there is ink.

    Takes a Gradio Sketchpad value (a dict with "composite", else its "layers" are
    flattened), or an array that is greyscale [H, W], RGB or RGBA [H, W, 3|4], of any integer
    type (0-255; uint16 0-65535) or float type (0-1 or 0-255). Transparent pixels count as
    paper. Dark ink on light paper and light ink
    on dark paper both work: the paper is whatever colour the border mostly is.
    """
    if isinstance(image, dict):
        if image.get("composite") is not None:
            return ink(image["composite"])
        layers = [ink(layer) for layer in image.get("layers") or [] if layer is not None]
        if not layers:
            raise BlankDrawing("Draw a digit")
        if len({layer.shape for layer in layers}) > 1:
            raise ValueError("The drawing's layers differ in size: send its composite instead.")
        return np.maximum.reduce(layers)  # ink on any layer is ink
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"Expected a greyscale, RGB or RGBA image, got an array of {a.shape}.")
    if a.size == 0:
        raise BlankDrawing("Draw a digit")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"Expected image pixels as numbers, got {a.dtype}.")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(
            "The picture holds NaN or infinite pixel values: save it as an ordinary 8-bit "
            "PNG or JPEG."
        )
    if a.dtype.kind == "b":  # a mask: True is ink's colour, as white is
        a = a.astype(np.uint8) * 255
    scale = 1.0 if a.dtype.kind == "f" else 65535.0 if a.dtype == np.uint16 else 255.0
    if a.dtype.kind in "iu" and not 0 <= a.min() <= a.max() <= scale:  # int32 0-255 reads
        raise ValueError(
            f"The picture's pixel values run from {a.min()} to {a.max()}, where 0 to "
            f"{scale:.0f} belong: save it as an ordinary 8-bit PNG or JPEG."
        )
    if a.dtype.kind == "f" and a.size and a.max() > 1:  # 0-255 floats, or nothing we know
        top = float(a.max())
        if top > 255:
            raise ValueError(
                f"The picture's pixel values reach {top:.3g}, where 0 to 1 (or 0 to 255) "
                "belong: save it as an ordinary 8-bit PNG or JPEG."
            )
        scale = 255.0
    a = np.clip(a.astype(np.float32) / scale, 0, 1)
    if a.ndim == 2:
        grey, alpha = a, None
    else:
        channels = a.shape[2]
        colour = a[..., : 3 if channels >= 3 else 1]
        grey = (
            colour @ np.array([0.299, 0.587, 0.114], np.float32)
            if channels >= 3
            else colour[..., 0]
        )
        alpha = a[..., -1] if channels in (2, 4) else None
    if alpha is not None:
        edge = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        if np.median(edge) < 0.5:
            # A sketchpad: strokes on transparent paper, whatever their colour; alpha is the
            # ink. Where the paper is opaque (a palette PNG whose ink is its transparent
            # entry), the colours tell ink from paper, as below.
            return alpha
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    paper = np.median(border)
    x, paper = (1 - grey, 1 - paper) if paper > 0.5 else (grey, paper)
    # Grey paper (a scan, a photo) is paper, not faint ink: stretch it to 0.
    return np.clip((x - paper) / (1 - paper), 0, 1) if 0 < paper < 1 else x


def to_mnist(image: Any) -> torch.Tensor:
    """A sketch or picture -> float [1, 1, 28, 28] in [0, 1], white digit on black, centred.

    Raises BlankDrawing when there is no digit to read (an empty canvas, a single dot).
    """
    x = ink(image)
    rows, cols = np.nonzero(x > MIN_INK)
    # A dot or a speck is not a digit: ask for a drawing rather than guess.
    if len(rows) == 0 or max(np.ptp(rows), np.ptp(cols)) + 1 < max(3, 0.05 * min(x.shape)):
        raise BlankDrawing("Draw a digit")
    x = x[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = x.shape
    f = BOX / max(h, w)
    new = (max(1, round(h * f)), max(1, round(w * f)))
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    # Area-averaging keeps thin strokes as grey instead of dropping them.
    t = F.interpolate(t, size=new, mode="area" if f < 1 else "bilinear", align_corners=None)
    digit = t[0, 0].clamp(0, 1)
    # Centre by the centre of mass, as MNIST was made.
    total = digit.sum()
    ys, xs = torch.arange(new[0]), torch.arange(new[1])
    cy = (digit.sum(1) * ys).sum() / total
    cx = (digit.sum(0) * xs).sum() / total
    top = int(round(SIZE / 2 - 0.5 - cy.item()))
    left = int(round(SIZE / 2 - 0.5 - cx.item()))
    top = min(max(top, 0), SIZE - new[0])  # keep the whole digit on the page
    left = min(max(left, 0), SIZE - new[1])
    out = torch.zeros(SIZE, SIZE)
    out[top : top + new[0], left : left + new[1]] = digit
    # Strokes have a core of strong ink (in MNIST and every drawing style, 53% or more of
    # the inked pixels are above 0.5); noise, a texture or a faint smudge has almost none
    # (under 8%). Refuse those rather than read them confidently as some digit.
    inked = out[out > MIN_INK]
    if (inked > 0.5).float().mean() < MIN_STRONG:
        raise NotADigit(
            "This does not look like a digit: it is faint or speckled all over (noise, a "
            "texture, a light smudge). Draw one digit with a dark pen on light paper."
        )
    return out[None, None]


# Pillow's own words (e.g. "Decompressed Data Too Large" for a text-chunk bomb) help no one.
DAMAGED = "is damaged and cannot be decoded: send an ordinary PNG or JPEG"


def read_picture(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A picture file (a path, or its bytes) -> an array `ink` reads: uint8 L, LA, RGB or
    RGBA, or float.

    Raises ValueError with what is wrong and what to do: not a picture, damaged, too large
    (checked from the header, before any pixel is decoded). Palette, 1-bit, 16-bit, 32-bit
    float, CMYK and other colour spaces are converted.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name, source = name or "the drawing", io.BytesIO(source)
    name = name or Path(source).name
    try:
        # Pillow only warns below 2x its pixel limit; refuse such a bomb before decoding it.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"{name} is far too large to read: send a picture at most {MAX_SIDE} px a side."
        ) from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{name} is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF of "
            "one digit."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports broken data as any
        raise ValueError(f"{name} {DAMAGED} ({type(e).__name__}).") from None
    with im:
        w, h = im.size
        if max(w, h) > MAX_SIDE:
            raise ValueError(
                f"{name} is {w}x{h} pixels: send a picture at most {MAX_SIDE} px a side "
                "(a digit needs no more than a few hundred)."
            )
        try:
            im = ImageOps.exif_transpose(im)  # phone photos: upright as they were taken
            im.load()
        except (OSError, SyntaxError, ValueError) as e:  # ValueError: a text-chunk bomb
            raise ValueError(f"{name} {DAMAGED} ({type(e).__name__}).") from None
        if im.mode in ("1", "L", "LA", "RGB", "RGBA"):
            return np.asarray(im.convert("L") if im.mode == "1" else im)
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit greyscale, as PNG has it
            return np.clip(np.asarray(im, np.float32) / 65535, 0, 1)
        if im.mode == "F":  # `ink` refuses NaN and inf, and clips the rest to [0, 1]
            return np.asarray(im, np.float32)
        if im.mode in ("P", "PA"):  # a palette may hold transparency
            return np.asarray(im.convert("RGBA"))
        return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, ...
