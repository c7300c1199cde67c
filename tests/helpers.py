"""What several test modules share: the real config and data, odd pictures, a quiet
Trainer, subprocess runs of the CLI. (Servers, ports and the browser: hdr.loopback; drawings
made from digits: hdr.drawings.)"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from hdr.config import CONF_DIR, ROOT, compose

CONF = Path(CONF_DIR)
DATA_DIR = Path(compose().paths.data_dir).resolve()  # the config's own rule finds the data


def shrunk_cfg(output_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The real config on the real data, writing to `output_dir` (records beside it), quiet."""
    cfg = compose([f"paths.log_dir={output_dir}", *(overrides or [])], hydra=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    return cfg


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600, **env: str):
    """`python -m hdr.train ARGS` from the checkout, its records in tmp_path."""
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "hdr.train", *args, "+trainer.enable_progress_bar=false"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def sketch(rgba: np.ndarray) -> dict:
    """What gr.Sketchpad(type="numpy") hands the function: layers and their composite."""
    return {"background": np.zeros_like(rgba), "layers": [rgba], "composite": rgba}


def write_pictures(folder: Path, rgba: np.ndarray) -> dict[str, Path]:
    """A drawn digit saved as a person might upload it: odd modes and formats, good and bad."""
    paper = Image.fromarray(255 - rgba[..., 3])  # dark digit on white paper, greyscale
    good = {
        "grey.png": paper,
        "rgb.jpg": paper.convert("RGB"),
        "palette.png": paper.convert("P"),
        "1-bit.png": paper.point(lambda v: 255 if v > 127 else 0).convert("1"),
        "16-bit.png": Image.fromarray(np.asarray(paper).astype(np.uint16) * 257),
        "float.tif": Image.fromarray(np.asarray(paper, np.float32) / 255),
        "cmyk.jpg": paper.convert("CMYK"),
        "sketch.png": Image.fromarray(rgba),  # transparent, as the Sketchpad saves
    }
    paths = {}
    for name, im in good.items():
        im.save(folder / name)
        paths[name] = folder / name
    # Ink as a palette's transparent entry on opaque paper: its colours tell which is which.
    ink = paper.point(lambda v: 1 if v < 128 else 0).convert("P")
    ink.putpalette([255, 255, 255, 0, 0, 0])
    ink.save(folder / "ink-transparent.png", transparency=1)
    paths["ink-transparent.png"] = folder / "ink-transparent.png"
    paper.convert("RGB").save(folder / "digit.eps")  # PostScript: Pillow would run Ghostscript
    (folder / "eps-named.png").write_bytes((folder / "digit.eps").read_bytes())
    nan = np.asarray(paper, np.float32) / 255
    nan[: nan.shape[0] // 3] = np.nan  # a band of NaN over the paper above the digit
    nan[-5:, -5:] = np.inf
    Image.fromarray(nan).save(folder / "nan.tif")
    Image.new("RGB", (300, 300), "white").save(folder / "white.png")
    Image.new("RGB", (300, 300), "black").save(folder / "black.png")
    Image.new("L", (5000, 100), 255).save(folder / "wide.png")
    (folder / "notes.png").write_text("a shopping list, not a picture")
    data = (folder / "grey.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    for name in (
        "nan.tif",
        "white.png",
        "black.png",
        "wide.png",
        "notes.png",
        "cut.png",
        "digit.eps",
        "eps-named.png",
    ):
        paths[name] = folder / name
    return paths


def write_huge(path: Path) -> Path:
    """A 10000x10000 PNG (100 megapixels, ~15 kB): a decompression bomb for a decoder."""
    Image.new("1", (10_000, 10_000), 1).save(path)
    return path


BAD_PICTURES = {  # what `to_mnist(read_picture(...))` says to each
    "nan.tif": "holds NaN or infinite pixel values",
    "white.png": "Draw a digit",  # BlankDrawing from to_mnist
    "black.png": "Draw a digit",
    "huge.png": "far too large to read: send a picture at most 4096 px a side",
    "wide.png": "is 5000x100 pixels: send a picture at most 4096 px a side",
    "notes.png": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
    "cut.png": "is damaged and cannot be decoded",
    "digit.eps": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
    "eps-named.png": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
}
