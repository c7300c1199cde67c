"""Corrections are kept whole, once, within limits, and read back whatever happened since."""

import json
import subprocess
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from hdr.core.corrections import INDEX, read_dataset, read_entries
from hdr.core.drawings import pen_lines, pen_path, place
from hdr.core.pictures import to_mnist
from hdr.runs.train import train
from hdr.serving import corrections as corr
from hdr.serving.corrections import Corrections
from tests.helpers import redraw, shrunk_cfg


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
    store._last.clear()  # these tests are not about pace, except the ones that are
    return store.add(picture, seen, label, "MLP [1400]", client)


def test_a_correction_keeps_its_drawing_28x28_label_model_and_time_and_survives_a_restart(
    tmp_path, drawing
):
    picture, seen = drawing(0)
    store = Corrections(tmp_path)
    assert keep(store, picture, seen, "7").startswith("Kept: this drawing is a 7")
    (entry,) = read_entries(tmp_path)  # a new instance reads what a restart reads
    assert entry["label"] == 7 and entry["model"] == "MLP [1400]"
    assert abs(entry["time"] - time.time()) < 60
    assert (tmp_path / "drawings" / f"{entry['id']}.png").read_bytes().startswith(b"\x89PNG")
    images, labels = read_dataset(tmp_path)
    assert images.shape == (1, 1, 28, 28) and labels.tolist() == [7]
    assert (images - seen).abs().max() <= 1 / 255 + 1e-6  # the 28x28 the model read
    # The same drawing again: folded, even after a restart; relabelled, the latest wins.
    assert keep(Corrections(tmp_path), picture, seen, 7).startswith("Already kept")
    keep(store, picture, seen, 1)
    other, other_seen = drawing(1)
    keep(store, other, other_seen, 3)
    assert [e["label"] for e in read_entries(tmp_path)] == [1, 3]
    assert len((tmp_path / INDEX).read_text().splitlines()) == 3


@pytest.mark.parametrize("label", [11, -1, "seven", None, "", 3.5, "../x", "1 2", "²", "٣"])
def test_a_label_that_is_no_digit_is_refused_and_writes_nothing(tmp_path, drawing, label):
    picture, seen = drawing(0)
    with pytest.raises(ValueError, match="not a digit"):
        keep(tmp_path, picture, seen, label)
    assert not any(tmp_path.iterdir())


def test_a_burst_keeps_one_and_each_client_has_its_own_pace(tmp_path, drawing):
    store = Corrections(tmp_path)
    burst = [drawing(i) for i in range(40)]  # made first: the burst itself takes no time
    assert store.add(*burst[0], 2, "m", "a").startswith("Kept")
    for picture, seen in burst[1:]:  # each within 2 s of the one kept
        with pytest.raises(ValueError, match="Too fast"):
            store.add(picture, seen, 2, "m", "a")
    assert store.add(*drawing(40), 2, "m", "b").startswith("Kept")  # another client
    assert len(read_entries(tmp_path)) == 2
    assert len(list((tmp_path / "drawings").iterdir())) == 4


def test_two_people_behind_one_address_both_get_through_at_a_persons_pace(
    tmp_path, drawing, monkeypatch
):
    # Only kept corrections set the pace: one person's refused tries do not lock out another
    # behind the same address (the old store counted every try: "Too fast" 3 of 3).
    monkeypatch.setattr(corr, "MIN_GAP", 0.5)
    store = Corrections(tmp_path)
    assert store.add(*drawing(0), 1, "m", "10.0.0.1").startswith("Kept")
    time.sleep(0.3)
    with pytest.raises(ValueError, match="Too fast"):
        store.add(*drawing(1), 1, "m", "10.0.0.1")  # the first person, too soon
    time.sleep(0.3)
    assert store.add(*drawing(2), 2, "m", "10.0.0.1").startswith("Kept")  # the second


def test_one_client_holds_at_most_its_share_of_the_folder_even_after_a_restart(
    tmp_path, drawing, monkeypatch
):
    monkeypatch.setattr(corr, "MAX_SHARE", 2)
    for i in range(2):
        keep(tmp_path, *drawing(i), 4, client="a")
    for store in (Corrections(tmp_path), Corrections(tmp_path)):  # a restart counts them too
        with pytest.raises(ValueError, match="one client's share"):
            keep(store, *drawing(5), 4, client="a")
    assert keep(tmp_path, *drawing(6), 4, client="b").startswith("Kept")
    assert len(read_entries(tmp_path)) == 3
    assert "10.0.0" not in (tmp_path / INDEX).read_text()  # addresses kept as hashes


def test_a_drawing_corrected_7_then_3_then_7_is_a_7_everywhere(tmp_path, drawing):
    store, (picture, seen) = Corrections(tmp_path), drawing(0)
    assert keep(store, picture, seen, 7).startswith("Kept: this drawing is a 7")
    keep(store, picture, seen, 3)
    assert keep(store, picture, seen, 7).startswith("Kept: this drawing is a 7")
    assert keep(store, picture, seen, 7).startswith("Already kept: this drawing as a 7")
    assert [e["label"] for e in read_entries(tmp_path)] == [7]
    assert read_dataset(tmp_path)[1].tolist() == [7]


def test_a_drawing_and_its_reshape_are_two_corrections(tmp_path, drawing):
    picture, seen = drawing(0)
    tall = np.ascontiguousarray(picture[:280, :140])
    wide = tall.reshape(140, 280, 4)  # the same bytes, another shape
    keep(tmp_path, tall, seen, 1)
    keep(tmp_path, wide, seen, 2)
    entries = read_entries(tmp_path)
    assert [e["label"] for e in entries] == [1, 2] and entries[0]["id"] != entries[1]["id"]
    assert len(list((tmp_path / "drawings").glob("*.png"))) == 4


def test_damaged_lines_and_pictures_are_skipped_and_the_rest_read(tmp_path, drawing, caplog):
    store = Corrections(tmp_path)
    for i, label in enumerate([4, 5, 6]):
        keep(store, *drawing(i), label)
    index = tmp_path / INDEX
    lines = index.read_text().splitlines()
    # a torn last line (a kill or a full disk mid-write), garbage, and a forged id
    forged = json.dumps({"id": "../../etc/passwd", "label": 1, "model": "x", "time": 0})
    odd = json.dumps({"id": json.loads(lines[0])["id"], "label": 2, "client": [1]})
    index.write_text("\n".join([lines[0], "{not json", forged, odd, lines[1], lines[2][:20]]))
    (tmp_path / "drawings" / f"{json.loads(lines[1])['id']}.28.png").write_bytes(b"cut")
    assert [e["label"] for e in read_entries(store.folder)] == [4, 5]
    images, labels = read_dataset(store.folder)
    assert labels.tolist() == [4] and "damaged" in caplog.text
    keep(store, *drawing(7), 8)  # appended after the torn line, on a line of its own
    assert [e["label"] for e in read_entries(tmp_path)] == [4, 5, 8]


def test_a_full_disk_refuses_the_correction_and_loses_none_kept(small_disk, drawing):
    store = Corrections(small_disk / "corrections")
    keep(store, *drawing(0), 9)
    before = (small_disk / "corrections" / INDEX).read_bytes()
    filler = small_disk / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=40"], capture_output=True
    )
    with pytest.raises(ValueError, match="free some disk space"):
        keep(store, *drawing(1), 1)
    assert (small_disk / "corrections" / INDEX).read_bytes() == before
    filler.unlink()
    assert [e["label"] for e in read_entries(small_disk / "corrections")] == [9]
    assert read_dataset(small_disk / "corrections")[1].tolist() == [9]


def test_a_read_only_folder_is_named_as_such_not_as_a_full_disk(tmp_path, drawing):
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)])
    if mount.returncode != 0:
        pytest.skip("a read-only folder for root needs a read-only mount, as root")
    try:
        with pytest.raises(ValueError) as refused:
            keep(folder, *drawing(0), 5)
        assert f"make {folder} writable" in str(refused.value)
        assert "disk space" not in str(refused.value)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_line_nested_deep_or_a_huge_picture_is_skipped_not_raised(tmp_path, drawing, caplog):
    store = Corrections(tmp_path)
    keep(store, *drawing(0), 4)
    keep(store, *drawing(1), 5)
    with (tmp_path / INDEX).open("a") as f:  # nested 100,000 deep: RecursionError
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    deep = json.dumps({"id": "a" * 24, "label": 1, "pad": [[[[[[[[[[[[]]]]]]]]]]]] * 150})
    (tmp_path / INDEX).open("a").write(deep + "\n")  # long: never parsed
    second = read_entries(tmp_path)[1]["id"]
    Image.new("1", (20_000, 20_000)).save(tmp_path / "drawings" / f"{second}.28.png")
    restarted = Corrections(tmp_path)  # starts, as the app does
    assert [e["label"] for e in read_entries(restarted.folder)] == [4, 5]
    assert read_dataset(restarted.folder)[1].tolist() == [4]
    assert "Skipped 2 damaged line(s)" in caplog.text and "Skipped 1 missing" in caplog.text


@pytest.mark.parametrize(
    "model, kept",
    [
        ("/" + "d" * 949, True),  # a 950-character checkpoint path
        ("/" + "é" * 217, True),  # 218 characters, 6 bytes each in JSON
        ("😀" * 120, False),  # 12 bytes each: over MAX_LINE even cut short
    ],
    ids=["950-chars", "218-non-ascii", "emoji"],
)
def test_a_correction_is_kept_only_if_it_reads_back_whatever_the_models_name(
    tmp_path, drawing, model, kept
):
    store = Corrections(tmp_path)
    try:
        said = store.add(*drawing(0), 4, model, "a")
    except ValueError as e:
        said = str(e)
    assert said.startswith("Kept") == kept, said
    entries = read_entries(tmp_path)
    assert [e["label"] for e in entries] == ([4] if kept else []), said
    if kept:
        assert entries[0]["model"] == model[: corr.MAX_MODEL]
    else:
        assert "over 1024 bytes. Nothing was kept" in said
        assert not (tmp_path / "drawings").exists()


def test_three_clients_agreeing_are_not_overruled_by_one_and_a_change_of_mind_counts_once(
    tmp_path, drawing
):
    picture, seen = drawing(0)
    store = Corrections(tmp_path)
    for client in "abc":
        assert keep(store, picture, seen, 3, client).startswith("Kept: this drawing is a 3")
    said = keep(store, picture, seen, 5, "d")
    assert said.startswith("Kept your 5. This drawing stays a 3"), said
    assert [e["label"] for e in read_entries(tmp_path)] == [3]
    for label in (5, 7, 5):  # "b" changes its mind twice: one voice, its latest
        keep(store, picture, seen, label, "b")
    assert [e["label"] for e in read_entries(tmp_path)] == [3]  # a, c: 3; b, d: 5; 3 held longest
    said = keep(Corrections(tmp_path), picture, seen, 5, "e")  # after a restart too
    assert said.startswith("Kept: this drawing is a 5"), said
    assert [e["label"] for e in read_entries(tmp_path)] == [5]


def test_client_ids_are_keyed_with_a_secret_made_once_beside_the_corrections(tmp_path, drawing):
    import hashlib

    keep(tmp_path / "one", *drawing(0), 4, client="10.0.0.1")
    keep(tmp_path / "one", *drawing(1), 4, client="10.0.0.1")  # another instance, same key
    keep(tmp_path / "two", *drawing(0), 4, client="10.0.0.1")
    key = tmp_path / "one" / corr.KEY
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    ids = [e["client"] for f in ("one", "two") for e in read_entries(tmp_path / f)]
    assert ids[0] == ids[1] != ids[2]  # the same client in one folder; unlinkable across
    assert hashlib.sha256(b"hdr-client 10.0.0.1").hexdigest()[:16] not in ids


def test_a_drawings_folder_that_is_a_file_is_named_as_such(tmp_path, drawing):
    (tmp_path / "drawings").write_text("not a folder")
    with pytest.raises(ValueError) as refused:
        keep(tmp_path, *drawing(0), 5)
    assert f"{tmp_path / 'drawings'} is a file where a folder belongs" in str(refused.value)
    assert "writable" not in str(refused.value)


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
    # what was trained on: MNIST's 55,000 and the 60 corrections, repeated to 30% of an epoch
    extra = len(tuned["datamodule"].splits["train"]) - 55_000
    assert extra % 60 == 0 and abs(extra / (55_000 + extra) - 0.3) < 0.005
    assert len(tuned["datamodule"].splits["val"]) == 5_000  # never validated on
