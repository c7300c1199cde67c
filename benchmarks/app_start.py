"""The app's time from its start to its first answer, and whether it imports Lightning.

    .venv/bin/python benchmarks/app_start.py --checkpoint PATH [--starts 3]

Starts `app/app.py --checkpoint PATH` on a free 127.0.0.1 port and times it until its first
/predict answer (one stroke through the HTTP API, as the page sends it), `--starts` times;
prints the machine, the median, and whether a fresh `import app.app` imports lightning.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout: tests.helpers

from hdr.utils import cpu_description
from tests.helpers import ask_app, free_port

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", required=True)
parser.add_argument("--starts", type=int, default=3)
args = parser.parse_args()
drawing = Path(tempfile.mkdtemp()) / "one.png"
picture = Image.new("RGBA", (400, 400))
ImageDraw.Draw(picture).line([(200, 60), (200, 340)], fill=(0, 0, 0, 255), width=30)
picture.save(drawing)


def first_answer() -> float:
    port = free_port()
    cmd = [sys.executable, "app/app.py", "--checkpoint", args.checkpoint, "--port", str(port)]
    start = time.perf_counter()
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(timeout=60) as http:
            while server.poll() is None:
                try:
                    ask_app(http, f"http://127.0.0.1:{port}/", drawing)
                    return time.perf_counter() - start
                except httpx.TransportError:  # not listening yet
                    time.sleep(0.05)
        sys.exit(f"The app ended (exit {server.returncode}): {server.stderr.read()[-2000:]}")
    finally:
        server.terminate()
        server.wait(timeout=30)


times = [first_answer() for _ in range(args.starts)]
probe = "import sys, app.app; print('lightning' in sys.modules)"  # from the checkout
imported = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
print(f"machine: {cpu_description()}")
print(f"start to first answer: median {statistics.median(times):.2f} s of {args.starts}", end="")
print(f" ({', '.join(f'{t:.2f}' for t in times)})")
print(f"app imports lightning: {imported.stdout.strip() or imported.stderr[-500:]}")
