"""Loads `runtime serve`'s web page in headless Chromium (Debian's, through Playwright), asks
for a grid, moves the latent-walk slider, and checks from the DOM that the images loaded with
the right sizes. Keeps a screenshot.

  page_check.py URL SCREENSHOT.png CELL    (CELL: the model's image width in pixels)
"""
import sys

from playwright.sync_api import sync_playwright

url, screenshot, cell = sys.argv[1], sys.argv[2], int(sys.argv[3])
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok   {what}", flush=True)


def grid_width(n):
    cols = 1
    while cols * cols < n:
        cols += 1
    return cols * (cell + 2) + 2 if n > 1 else cell


def loaded(page, selector):
    page.wait_for_function(f"document.querySelector('{selector}').dataset.state === 'loaded'", timeout=30000)
    return page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight, img.complete, img.src]")


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    w, h, done, src = loaded(page, "#grid")
    check(done and w == grid_width(16) and h == grid_width(16), f"the first grid loaded: {w}x{h} from {src}")
    page.fill("#n", "4")
    page.fill("#seed", "5")
    page.click("#go")
    page.wait_for_function("document.querySelector('#grid').src.includes('seed=5')", timeout=30000)
    w, h, done, src = loaded(page, "#grid")
    check(done and w == grid_width(4) and "n=4" in src, f"a 4-image grid for seed 5: {w}x{h}")
    check("images in" in page.text_content("#status"), f"status: {page.text_content('#status')}")
    page.fill("#slider", "60")
    page.wait_for_function("document.querySelector('#walk').src.includes('t=0.60')", timeout=30000)
    w, h, done, src = loaded(page, "#walk")
    check(done and (w, h) == (cell, cell), f"the slider moved the walk to t=0.60: {w}x{h} {src}")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value.split('\\u0000')[0])")
    if "classes" in options:
        value = page.eval_on_selector_all("#model option", "os => os.find(o => o.value.startsWith('classes')).value")
        page.select_option("#model", value)
        page.wait_for_selector("#class-field:not([hidden])", timeout=30000)
        page.select_option("#class", "3")
        page.wait_for_function("document.querySelector('#grid').src.includes('class=3')", timeout=30000)
        w, h, done, src = loaded(page, "#grid")
        check(done and w == grid_width(4), f"a conditional model's class 3 grid: {w}x{h}")
    page.fill("#n", "100000")
    page.click("#go")
    page.wait_for_function("document.querySelector('#grid').dataset.state === 'error'", timeout=30000)
    page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=30000)
    check("limit" in page.text_content("#status"), f"a refused request shows the server's error: {page.text_content('#status')}")
    page.fill("#n", "16")
    page.click("#go")
    loaded(page, "#grid")
    page.screenshot(path=screenshot, full_page=True)
    check(not errors, f"no script errors ({errors})")
    browser.close()
print("ALL OK")
