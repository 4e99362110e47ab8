"""python docs/shop_screenshot.py: the README's picture of the shop page, from a real server.

Starts ``fashsdk serve`` on 127.0.0.1 with the demo bundle, its index and the catalog's photos,
opens the page in headless Chromium (Debian's chromium and chromium-driver, selenium from the
dev extra), opens one item, picks one change per ``--change``, waits for the results and their
photos, and writes the screenshot (default docs/images/shop-page.png).

    .venv/bin/python docs/shop_screenshot.py --item 5992 --change baseColour=Red
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's own helpers
from benchmarks.serve import free_port, wait_ready  # noqa: E402

WAIT = 60


def shoot(base: str, item: str, changes: list[tuple[str, str]], out: Path, chromium: str, driver_path: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="fashsdk-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1440,1000", "--hide-scrollbars", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1)
    photos = ("return [...document.querySelectorAll(arguments[0])].every(i => i.complete && i.naturalWidth > 0)"
              " && document.querySelectorAll(arguments[0]).length > 0;")
    try:
        driver.get(base + "/")
        wait.until(lambda d: d.execute_script(photos, "#catalog-grid img"))
        box = driver.find_element(By.ID, "find-id")
        box.send_keys(item)
        box.submit()
        wait.until(lambda d: d.find_element(By.ID, "query-title").text == f"Item {item}")
        for attribute, value in changes:
            Select(driver.find_element(By.CSS_SELECTOR, f'[data-testid="change-{attribute}"]')).select_by_value(value)
        driver.find_element(By.CSS_SELECTOR, '[data-testid="search-button"]').click()
        wait.until(lambda d: d.find_element(By.ID, "results-title").text.startswith(f"Like item {item}, with"))
        wait.until(lambda d: d.execute_script(photos, "#results img"))
        out.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(out)):
            raise SystemExit(f"the browser could not write {out}")
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/demo/bundle")
    p.add_argument("--index", type=Path, default=ROOT / "runs/demo/index")
    p.add_argument("--images", nargs="+", default=[str(ROOT.parent / "shared/data/myntra-small")])
    p.add_argument("--item", default="5992")
    p.add_argument("--change", action="append", default=None, metavar="ATTRIBUTE=VALUE",
                   help="one per attribute to change (default baseColour=Red)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/images/shop-page.png")
    p.add_argument("--chromium", default=os.environ.get("FASHSDK_CHROMIUM", "/usr/bin/chromium"))
    p.add_argument("--chromedriver", default=os.environ.get("FASHSDK_CHROMEDRIVER", "/usr/bin/chromedriver"))
    args = p.parse_args(argv)
    changes = []
    for text in args.change or ["baseColour=Red"]:
        attribute, sep, value = text.partition("=")
        if not sep or not attribute or not value:
            p.error(f"--change {text!r}: write ATTRIBUTE=VALUE, e.g. baseColour=Red")
        changes.append((attribute, value))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fashsdk.serve", "--bundle", str(args.bundle), "--index", str(args.index),
               "--port", str(port), "--images", *args.images]
    log = tempfile.TemporaryFile("w+")  # read back only if the server fails to start
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(base, server, log, timeout=WAIT)
        shoot(base, args.item, changes, args.out, args.chromium, args.chromedriver)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
