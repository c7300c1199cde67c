"""Corrections are kept whole, once, within limits, and read back whatever happened since."""

import json
import subprocess
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra

from hdr import corrections as corr
from hdr.corrections import CorrectionRefused, Corrections
from hdr.drawings import pen_lines, pen_path, place, redraw
from hdr.preprocess import to_mnist
from hdr.train import train
from tests.helpers import shrunk_cfg


@pytest.fixture
def drawing(mnist):
    """A real drawing made from an MNIST digit, and the 28x28 the app would read."""

    def make(i: int) -> tuple[np.ndarray, torch.Tensor]:
        rgba = redraw(mnist.splits["val"].images[i], 300, 0.6, "centre", i % 2 == 0)
        return rgba, to_mnist(rgba)

    return make


def keep(folder_or_store, picture, seen, label, client="a"):
    store = folder_or_store
    if not isinstance(store, Corrections):
        store = Corrections(store)
    store._tried.clear()  # these tests are not about pace, except the one that is
    return store.add(picture, seen, label, "MLP [1400]", client)


def test_a_correction_keeps_its_drawing_28x28_label_model_and_time_and_survives_a_restart(
    tmp_path, drawing
):
    picture, seen = drawing(0)
    store = Corrections(tmp_path)
    assert keep(store, picture, seen, "7").startswith("Kept: this drawing is a 7")
    (entry,) = Corrections(tmp_path).entries()  # a new instance reads what a restart reads
    assert entry["label"] == 7 and entry["model"] == "MLP [1400]"
    assert abs(entry["time"] - time.time()) < 60
    assert (tmp_path / "drawings" / f"{entry['id']}.png").read_bytes().startswith(b"\x89PNG")
    images, labels = Corrections(tmp_path).dataset()
    assert images.shape == (1, 1, 28, 28) and labels.tolist() == [7]
    assert (images - seen).abs().max() <= 1 / 255 + 1e-6  # the 28x28 the model read
    # The same drawing again: folded, even after a restart; relabelled, the latest wins.
    assert keep(Corrections(tmp_path), picture, seen, 7).startswith("Already kept")
    keep(store, picture, seen, 1)
    other, other_seen = drawing(1)
    keep(store, other, other_seen, 3)
    assert [e["label"] for e in Corrections(tmp_path).entries()] == [1, 3]
    assert len((tmp_path / corr.INDEX).read_text().splitlines()) == 3


@pytest.mark.parametrize("label", [11, -1, "seven", None, "", 3.5, "../x", "1 2"])
def test_a_label_that_is_no_digit_is_refused_and_writes_nothing(tmp_path, drawing, label):
    picture, seen = drawing(0)
    with pytest.raises(CorrectionRefused, match="not a digit"):
        keep(tmp_path, picture, seen, label)
    assert not any(tmp_path.iterdir())


def test_a_burst_is_refused_whole_and_each_client_has_its_own_pace(tmp_path, drawing):
    store = Corrections(tmp_path)
    picture, seen = drawing(0)
    assert store.add(picture, seen, 2, "m", "a").startswith("Kept")
    for i in range(1, 40):  # a burst: each try within 2 s of the last
        other, other_seen = drawing(i)
        with pytest.raises(CorrectionRefused, match="Too fast"):
            store.add(other, other_seen, 2, "m", "a")
    assert store.add(*drawing(40), 2, "m", "b").startswith("Kept")  # another client
    assert len(Corrections(tmp_path).entries()) == 2
    assert len(list((tmp_path / "drawings").iterdir())) == 4


def test_damaged_lines_and_pictures_are_skipped_and_the_rest_read(tmp_path, drawing, caplog):
    store = Corrections(tmp_path)
    for i, label in enumerate([4, 5, 6]):
        keep(store, *drawing(i), label)
    index = tmp_path / corr.INDEX
    lines = index.read_text().splitlines()
    # a torn last line (a kill or a full disk mid-write), garbage, and a forged id
    forged = json.dumps({"id": "../../etc/passwd", "label": 1, "model": "x", "time": 0})
    index.write_text("\n".join([lines[0], "{not json", forged, lines[1], lines[2][:20]]))
    (tmp_path / "drawings" / f"{json.loads(lines[1])['id']}.28.png").write_bytes(b"cut")
    assert [e["label"] for e in store.entries()] == [4, 5]
    images, labels = store.dataset()
    assert labels.tolist() == [4] and "damaged" in caplog.text
    keep(store, *drawing(7), 8)  # appended after the torn line, on a line of its own
    assert [e["label"] for e in Corrections(tmp_path).entries()] == [4, 5, 8]


def test_a_full_disk_refuses_the_correction_and_loses_none_kept(small_disk, drawing):
    store = Corrections(small_disk / "corrections")
    keep(store, *drawing(0), 9)
    before = (small_disk / "corrections" / corr.INDEX).read_bytes()
    filler = small_disk / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=40"], capture_output=True
    )
    with pytest.raises(CorrectionRefused, match="free some disk space"):
        keep(store, *drawing(1), 1)
    assert (small_disk / "corrections" / corr.INDEX).read_bytes() == before
    filler.unlink()
    assert [e["label"] for e in Corrections(small_disk / "corrections").entries()] == [9]
    assert Corrections(small_disk / "corrections").dataset()[1].tolist() == [9]


def one_persons_style(digits: torch.Tensor, seed: int) -> list[np.ndarray]:
    """Drawings as one person makes them: always the same thin pen, always leaning hard
    right; white canvas, black ink."""
    rng = np.random.default_rng(seed)
    lean = torch.tensor([[1.0, 0.9, 0.0], [0.0, 1.0, 0.0]])[None]
    pictures = []
    for lines in pen_lines(digits):
        x = pen_path(lines, 8)[None, None]
        grid = F.affine_grid(lean, list(x.shape), align_corners=False)
        ink = place(F.grid_sample(x, grid, align_corners=False)[0, 0], 300, 0.7, rng)
        pictures.append(np.repeat((255 * (1 - ink)).astype(np.uint8)[..., None], 3, 2))
    return pictures


@pytest.mark.slow
def test_tuning_on_60_corrections_reads_that_style_better_and_mnist_as_well(tmp_path):
    """A model, 60 corrections in one person's style (from validation digits), 40 new
    drawings in that style (from test digits): tuned with data.corrections, it reads them
    better, and MNIST test does not fall by more than 0.1 points."""
    try:
        base = train(
            shrunk_cfg(tmp_path / "base", ["experiment=fast_mlp", "trainer.max_epochs=2"])
        )[1]
        val, test = base["datamodule"].splits["val"], base["datamodule"].splits["test"]
        store = Corrections(tmp_path / "corrections")
        for i, picture in enumerate(one_persons_style(val.images[:60], seed=0)):
            keep(store, picture, to_mnist(picture), int(val.targets[i]))
        new = torch.cat([to_mnist(p) for p in one_persons_style(test.images[:40], seed=1)])

        def scores(model) -> tuple[float, float]:
            model.eval()
            with torch.inference_mode():
                style = (model(new).argmax(-1) == test.targets[:40]).float().mean().item()
                mnist = (model(test.images).argmax(-1) == test.targets).float().mean().item()
            return style, mnist

        before = scores(base["model"])
        GlobalHydra.instance().clear()
        tuned = train(
            shrunk_cfg(
                tmp_path / "tuned",
                [
                    "experiment=fast_mlp",
                    f"init_from={base['result']['checkpoint']}",
                    f"data.corrections={tmp_path / 'corrections'}",
                    "data.corrections_share=0.3",
                    "model.lr=0.001",
                    "model.scheduler=none",
                    "trainer.max_epochs=2",
                ],
            )
        )[1]
        after = scores(tuned["model"])
    finally:
        GlobalHydra.instance().clear()
    print(f"style {before[0]:.3f} -> {after[0]:.3f}, MNIST test {before[1]:.4f} -> {after[1]:.4f}")
    assert after[0] >= before[0] + 0.1
    assert after[1] >= before[1] - 0.001
    # what was trained on: MNIST's 55,000 and the 60 corrections, repeated to 30%
    assert len(tuned["datamodule"].splits["train"]) == 55_000 + 60 * 393
    assert len(tuned["datamodule"].splits["val"]) == 5_000  # never validated on
