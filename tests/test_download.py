"""Downloads from a real HTTP server on 127.0.0.1 serving good, truncated, wrong and slow files."""

import gzip
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hdr.core.data import (
    RAW,
    DataError,
    MNISTDataModule,
    download,
    raw_dir,
    verify_raw_files,
)
from tests.helpers import DATA_DIR

SILENT_FOR = 3.0  # seconds the "slow" mirror waits before answering; the client gives up at 0.5


@pytest.fixture(scope="module")
def mirror():
    """http://127.0.0.1:PORT/{good,truncated,wrong,slow,html}/<name>.gz; yields the base URL."""
    good = {f"{n}.gz": gzip.compress((raw_dir(DATA_DIR) / n).read_bytes(), 1) for n in RAW}
    labels = good["t10k-labels-idx1-ubyte.gz"]
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip, as the files are
    zeros = b"\0" * (64 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(4)) + packer.flush()  # 256 MB in 0.3

    kinds = {
        "good": lambda name: good[name],
        "truncated": lambda name: good[name][: len(good[name]) // 2],
        "wrong": lambda name: (
            labels if name != "t10k-labels-idx1-ubyte.gz" else good["train-labels-idx1-ubyte.gz"]
        ),
        "html": lambda name: b"<html>Service unavailable</html>",
        "slow": lambda name: good[name],
        "bomb": lambda name: bomb,
        "trickle": lambda name: good[name],
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            kind, _, name = self.path.strip("/").partition("/")
            if kind not in kinds or name not in good:
                self.send_error(404)
                return
            if kind == "slow":
                time.sleep(SILENT_FOR)
            body = kinds[kind](name)
            try:
                self.send_response(200)
                if kind == "trickle":  # a byte every 1.5 s: never silent for long, never done
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1.5)
                    return
                # Truncated: the server claims the whole length, as a dropped connection would.
                length = len(good[name]) if kind == "truncated" else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def leftovers(root) -> list[str]:
    folder = raw_dir(root)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_mirror_gives_verified_files_that_load(tmp_path, mirror):
    dm = MNISTDataModule(data_dir=str(tmp_path), mirrors=[f"{mirror}/good"], timeout=5)
    dm.setup()  # downloads, verifies, parses
    assert leftovers(tmp_path) == sorted(RAW)
    verify_raw_files(tmp_path)
    assert len(dm.splits["train"]) == 55_000 and len(dm.splits["test"]) == 10_000


def test_a_file_damaged_after_it_was_verified_is_caught_next_time(tmp_path, mirror):
    # Checks are remembered per process (a sweep verifies once), but only for unchanged files.
    download(tmp_path, [f"{mirror}/good"], timeout=5, deadline=60)
    verify_raw_files(tmp_path)
    verify_raw_files(tmp_path)
    labels = raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # one label changed, the size the same
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*damaged|damaged.*t10k-labels"):
        verify_raw_files(tmp_path)


def test_bad_mirrors_are_skipped_in_turn(tmp_path, mirror):
    bad = [f"{mirror}/{kind}" for kind in ("slow", "truncated", "wrong", "html", "missing")]
    start = time.perf_counter()
    download(tmp_path, [*bad, f"{mirror}/good"], timeout=0.5, deadline=60)
    verify_raw_files(tmp_path)
    assert leftovers(tmp_path) == sorted(RAW)
    # 4 files, each waiting 0.5 s on the silent mirror, not the SILENT_FOR it takes to answer
    assert time.perf_counter() - start < 4 * SILENT_FOR


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("truncated", "ended early"),
        ("wrong", "wrong content: sha256"),
        ("slow", "timed out"),
        ("html", "incorrect header check"),
        ("missing", "404"),
        ("bomb", "it unpacks to more than the file's 47,040,016 bytes"),  # not 256 MB on disk
        ("trickle", "not done within data.deadline=4 s"),
    ],
)
def test_each_bad_mirror_is_named_with_its_reason_and_leaves_nothing(
    tmp_path, mirror, kind, reason
):
    with pytest.raises(DataError) as err:
        download(tmp_path, [f"{mirror}/{kind}"], timeout=2, deadline=4)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and reason in message
    assert f"{mirror}/{kind}/train-images-idx3-ubyte.gz" in message
    assert "copy the four raw IDX files" in message and str(raw_dir(tmp_path)) in message
    assert leftovers(tmp_path) == []  # no partial or temporary file


def test_offline_with_no_data_says_where_it_looked(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), mirrors=["http://127.0.0.1:9/"], timeout=1)
    with pytest.raises(DataError, match="Could not download") as err:
        dm.setup()
    assert str(raw_dir(tmp_path)) in str(err.value) and "HDR_DATA_DIR" in str(err.value)
