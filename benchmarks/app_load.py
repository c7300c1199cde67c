"""The app under load: N concurrent clients x M requests each, on loopback only.

    .venv/bin/python benchmarks/app_load.py [--checkpoint PATH] [--clients 20] [--requests 50]

Starts `app/app.py` on a free 127.0.0.1 port (the best recorded model unless --checkpoint),
then each client (its own HTTP connection, in its own thread) sends its requests one after
another through Gradio's HTTP API, as the page does: upload the drawing (an MNIST test digit
re-drawn on a 400x400 canvas), call /predict, read the answer from the event stream, fetch
the preview image. Counts errors (a failed request, a broken preview, or no top-3 answer)
and wrong readings; prints the machine, p50/p95/max latency and throughput. Stops the
server when done.

Plain HTTP (httpx) rather than gradio_client: the client library adds ~65 ms of its own per
call on this machine (measured: 77 ms per call against 11 ms by plain HTTP), which would
measure the client, not the app.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.core.data import MNISTDataModule
from hdr.runs.config import data_dir
from hdr.utils import cpu_description
from tests.helpers import ask_app, free_port, redraw, wait_listening

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", help="default: the best recorded model")
parser.add_argument("--clients", type=int, default=20)
parser.add_argument("--requests", type=int, default=50, help="per client")
parser.add_argument("--data-dir", default=data_dir(), help="default: paths.data_dir's rule")
args = parser.parse_args()

dm = MNISTDataModule(data_dir=args.data_dir, download=False)
dm.setup()
test = dm.splits["test"]
folder = Path(tempfile.mkdtemp())
drawings = []  # (png path, true digit): the first 20 test digits, thick, large, transparent
for i in range(20):
    Image.fromarray(redraw(test.images[i], 400, 0.75, "centre", True)).save(folder / f"{i}.png")
    drawings.append((folder / f"{i}.png", str(test.targets[i].item())))

port = free_port()
cmd = [sys.executable, "app/app.py", "--port", str(port)]
cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
url = f"http://127.0.0.1:{port}/"
try:
    wait_listening(port, server)
except RuntimeError as e:
    server.kill()
    sys.exit(f"The app did not start: {e}. {server.stderr.read()[-2000:]}")

latencies: list[float] = []
errors: list[str] = []
wrong = 0
lock = threading.Lock()


def client_run(k: int) -> None:
    global wrong
    with httpx.Client(timeout=60) as http:
        for r in range(args.requests):
            path, digit = drawings[(k + r) % len(drawings)]
            start = time.perf_counter()
            try:
                label, png = ask_app(http, url, path)
                ok = isinstance(label, dict) and len(label.get("confidences") or []) == 3
                ok = ok and png is not None and png.startswith(b"\x89PNG")
                problem = None if ok else f"unexpected answer {label!r}"
            except Exception as e:  # counted, and the run goes on
                problem = f"{type(e).__name__}: {e}"
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)
                elif label["label"] != digit:
                    wrong += 1


try:
    start = time.perf_counter()
    threads = [threading.Thread(target=client_run, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
finally:
    server.terminate()
    server.wait(timeout=30)

ms = sorted(1000 * t for t in latencies)
q = statistics.quantiles(ms, n=100)
print(f"machine: {cpu_description()}")
print(
    f"{args.clients} clients x {args.requests} requests = {len(ms)} in {wall:.1f} s "
    f"({len(ms) / wall:.1f} requests/s)"
)
print(f"latency p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, max {ms[-1]:.0f} ms")
print(f"errors: {len(errors)}   wrong readings: {wrong} of {len(ms)}")
for problem in sorted(set(errors))[:5]:
    print("  ", problem)
