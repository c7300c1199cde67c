"""Re-make docs/app.png: start the app on the recorded models, draw a 3, Submit, screenshot
the page with its comparison row (it shows when the records hold an MLP and a CNN).

HDR_LOG_DIR=<records> .venv/bin/python docs/app_screenshot.py
"""

import math
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from tests.helpers import BROWSER_ARGS, CHROMIUM, wait_listening

PORT = 7890

server = subprocess.Popen([sys.executable, "app/app.py", "--port", str(PORT)])
wait_listening(PORT, server)
try:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1060})
        page.goto(f"http://127.0.0.1:{PORT}/")
        canvas = page.locator("canvas").first
        expect(canvas).to_be_visible(timeout=30_000)
        time.sleep(1)  # the app picks the brush just after load
        box = canvas.bounding_box()
        # A 3: an upper arc ending in the middle, a lower arc starting there.
        arcs = ((0.33, -150, 90), (0.61, -90, 150))
        points = [
            (0.5 + 0.14 * math.cos(math.radians(a)), cy + 0.14 * math.sin(math.radians(a)))
            for cy, a0, a1 in arcs
            for a in range(a0, a1 + 1, 10)
        ]
        at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in points]
        page.mouse.move(*at[0])
        page.mouse.down()
        for x, y in at[1:]:
            page.mouse.move(x, y, steps=3)
        page.mouse.up()
        page.get_by_role("button", name="Submit", exact=True).click()
        expect(page.locator(".output-class").first).to_have_text("3", timeout=30_000)
        expect(page.locator(".output-class")).to_have_count(3, timeout=30_000)  # compared
        time.sleep(1)
        page.screenshot(path="docs/app.png")
        browser.close()
finally:
    server.terminate()
