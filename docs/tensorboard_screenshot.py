"""Re-make docs/tensorboard_hparams.png: TensorBoard's HPARAMS table for one sweep.

.venv/bin/python docs/tensorboard_screenshot.py SWEEP_DIR

Starts `tensorboard --logdir SWEEP_DIR` on loopback, opens its HPARAMS tab in headless
Chromium (Debian's, else Playwright's), gives it time to read every run, takes the
screenshot, then stops the server.
"""

import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from tests.helpers import BROWSER_ARGS, CHROMIUM, wait_listening

if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
    sys.exit("usage: python docs/tensorboard_screenshot.py SWEEP_DIR")
PORT = 6123

tensorboard = str(Path(sys.executable).with_name("tensorboard"))
cmd = [tensorboard, "--logdir", sys.argv[1], "--host", "127.0.0.1", "--port", str(PORT)]
server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wait_listening(PORT, server)
try:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"http://127.0.0.1:{PORT}/#hparams")
        time.sleep(15)  # TensorBoard loads its plugins and reads every run's events
        page.screenshot(path="docs/tensorboard_hparams.png")
        browser.close()
finally:
    server.terminate()
