"""Corrections are kept whole, once, within limits, and read back whatever happened since."""

import json
import subprocess
import time

import numpy as np
import pytest
import torch

from hdr import corrections as corr
from hdr.corrections import CorrectionRefused, Corrections
from hdr.drawings import redraw
from hdr.preprocess import to_mnist


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
