"""Any drawing or picture of a digit -> the 28x28 image MNIST would have made of it. MNIST's
digits were scaled to fit a 20x20 box (aspect kept) and centred in 28x28 by their centre of
mass: doing the same to a sketch lets a model trained on MNIST read it, wherever it was drawn."""

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
# The only decoders an upload meets, told from its first bytes (EPS would run Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
SAVE_8_BIT = "save it as an ordinary 8-bit PNG or JPEG."
# Pillow's own words (e.g. "Decompressed Data Too Large" for a text-chunk bomb) help no one.
DAMAGED = "is damaged and cannot be decoded: send an ordinary PNG or JPEG"


class BlankDrawing(ValueError):
    """Nothing (or too little) was drawn to read a digit from."""


class NotADigit(ValueError):
    """Something is there, but nothing like a digit's strokes: noise, a texture, a smudge."""


def ink(image: Any) -> np.ndarray:
    """A sketch or picture -> float [H, W] in [0, 1], 1 where there is ink, from a Sketchpad
    value ("composite", else "layers" flattened) or a grey, RGB or RGBA array of ints (uint16:
    0-65535, else 0-255) or floats (0-1 or 0-255). Transparent pixels are paper, and so is the
    colour the border mostly is: dark ink on light paper and light on dark both work."""
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
        raise ValueError(f"The picture holds NaN or infinite pixel values: {SAVE_8_BIT}")
    if a.dtype.kind == "b":  # a mask: True is ink's colour, as white is
        a = a.astype(np.uint8) * 255
    top = a.max()
    scale = 65535.0 if a.dtype == np.uint16 else 1.0 if a.dtype.kind == "f" and top <= 1 else 255.0
    if a.dtype.kind in "iu" and not 0 <= a.min() <= top <= scale:  # int32 0-255 reads
        raise ValueError(
            f"The picture's pixel values run from {a.min()} to {top}, where 0 to {scale:.0f} "
            f"belong: {SAVE_8_BIT}"
        )
    if a.dtype.kind == "f" and top > 255:  # floats in 0-1 or 0-255, or nothing we know
        raise ValueError(
            f"The picture's pixel values reach {float(top):.3g}, where 0 to 1 (or 0 to 255) "
            f"belong: {SAVE_8_BIT}"
        )
    a = np.clip(a.astype(np.float32) / scale, 0, 1).reshape(*a.shape[:2], -1)
    channels = a.shape[2]
    grey = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if channels >= 3 else a[..., 0]
    # On transparent paper (a sketchpad) alpha is the ink, whatever its colour; on opaque
    # paper (a palette PNG whose ink is its transparent entry) the colours tell, as below.
    alpha = a[..., -1] if channels in (2, 4) else np.ones_like(grey)
    if np.median(np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])) < 0.5:
        return alpha
    paper = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    x, paper = (1 - grey, 1 - paper) if paper > 0.5 else (grey, paper)
    # Grey paper (a scan, a photo) is paper, not faint ink: stretch it to 0.
    return np.clip((x - paper) / (1 - paper), 0, 1) if 0 < paper < 1 else x


def to_mnist(image: Any) -> torch.Tensor:
    """A sketch or picture -> float [1, 1, 28, 28] in [0, 1], white digit on black, centred.
    BlankDrawing when there is nothing to read (an empty canvas, a dot); NotADigit for noise."""
    x = ink(image)
    rows, cols = np.nonzero(x > MIN_INK)
    # A dot or a speck is not a digit: ask for a drawing rather than guess.
    if len(rows) == 0 or max(np.ptp(rows), np.ptp(cols)) + 1 < max(3, 0.05 * min(x.shape)):
        raise BlankDrawing("Draw a digit")
    x = x[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    f = BOX / max(x.shape)
    new = (max(1, round(x.shape[0] * f)), max(1, round(x.shape[1] * f)))
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    # Area-averaging keeps thin strokes as grey instead of dropping them.
    t = F.interpolate(t, size=new, mode="area" if f < 1 else "bilinear", align_corners=None)
    digit = t[0, 0].clamp(0, 1)
    # Centred by the centre of mass, as MNIST was made, the whole digit kept on the page.
    cy = (digit.sum(1) * torch.arange(new[0])).sum() / digit.sum()
    cx = (digit.sum(0) * torch.arange(new[1])).sum() / digit.sum()
    top = min(max(round(SIZE / 2 - 0.5 - cy.item()), 0), SIZE - new[0])
    left = min(max(round(SIZE / 2 - 0.5 - cx.item()), 0), SIZE - new[1])
    out = torch.zeros(SIZE, SIZE)
    out[top : top + new[0], left : left + new[1]] = digit
    # Strokes have a core of strong ink (53% or more of the inked pixels above 0.5, in MNIST
    # and every drawing style); noise, a texture, a smudge has under 8%: refused, not read.
    if (out[out > MIN_INK] > 0.5).float().mean() < MIN_STRONG:
        raise NotADigit(
            "This does not look like a digit: it is faint or speckled all over (noise, a "
            "texture, a light smudge). Draw one digit with a dark pen on light paper."
        )
    return out[None, None]


def read_picture(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A picture file (a path, or its bytes) -> an array `ink` reads (uint8 L, LA, RGB, RGBA,
    or float), any other mode converted. ValueError saying what is wrong and what to do: not a
    picture, damaged, too large (told from the header, before any pixel is decoded)."""
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
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit greyscale, as PNG has it
            return np.clip(np.asarray(im, np.float32) / 65535, 0, 1)
        if im.mode == "F":  # `ink` refuses NaN and inf, and clips the rest to [0, 1]
            return np.asarray(im, np.float32)
        if im.mode not in ("L", "LA", "RGB", "RGBA"):  # a palette may hold transparency
            im = im.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(im.mode, "RGB"))  # CMYK..
        return np.asarray(im)
