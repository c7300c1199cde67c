"""Servers on this machine's loopback and a headless browser: free ports, waiting for a
server to listen, one drawing through the app's HTTP API. Shared by the tests, the
benchmarks and the docs' screenshot scripts."""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

# Debian's chromium, else the browser Playwright installed (make browser does one or the other).
CHROMIUM = shutil.which("chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, server: subprocess.Popen, seconds: float = 120) -> None:
    """Return once something listens on 127.0.0.1:port; raise if `server` ends or the time
    runs out first."""
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server ended (exit {server.returncode}) before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on port {port} within {seconds} s") from None
            time.sleep(0.5)


def ask_app(http, url: str, drawing: Path) -> tuple[dict, bytes | None]:
    """One drawing through the app's HTTP API, as the page's Submit button sends it: upload
    it, call /predict, read the event stream, then fetch the preview image as a browser
    does. `http` is an httpx.Client; returns the label and the preview's bytes."""
    with drawing.open("rb") as f:
        uploaded = http.post(f"{url}gradio_api/upload", files={"files": f}).raise_for_status()
    composite = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
    body = {"data": [{"background": None, "layers": [], "composite": composite}]}
    event = http.post(f"{url}gradio_api/call/predict", json=body).raise_for_status()
    stream = http.get(f"{url}gradio_api/call/predict/{event.json()['event_id']}").text
    if "event: complete" not in stream:
        raise RuntimeError(f"no answer: {stream[-200:]!r}")
    label, seen = json.loads(stream.rsplit("data:", 1)[1])
    png = http.get(seen["url"]).raise_for_status().content if seen else None
    return label, png
