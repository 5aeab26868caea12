"""Screenshots TensorBoard's Time Series dashboard for the runs under a folder (headless
Chromium through Playwright, both in .tools/venv from scripts/setup-tools.sh):

    .tools/venv/bin/python scripts/tensorboard-screenshot.py runs/watch docs/images/tensorboard.png

Starts `tensorboard --logdir DIR` on a free port, waits for it, shows the scalars matching
FILTER (default: d_real|d_fake|loss|eval/fid|eval/classes) and writes the picture."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

logdir, out = sys.argv[1], sys.argv[2]
pattern = sys.argv[3] if len(sys.argv) > 3 else "loss_|d_real|d_fake|eval/fid$|eval/classes"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
venv_bin = Path(sys.executable).parent
server = subprocess.Popen(
    [str(venv_bin / "tensorboard"), "--logdir", logdir, "--port", str(port), "--host", "127.0.0.1"],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    url = f"http://127.0.0.1:{port}/"
    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(f"{url}?pinnedCards=&tagFilter={urllib.request.quote(pattern)}#timeseries")
        page.wait_for_selector("canvas, .line-chart, card-view img, img.image", timeout=60000)
        settings = page.get_by_role("button", name="Close settings")
        if settings.count():
            settings.first.click()
        time.sleep(6)
        page.screenshot(path=out, full_page=False)
        browser.close()
finally:
    server.terminate()
    server.wait()
print(f"wrote {out}")
