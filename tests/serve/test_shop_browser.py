"""The shop page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
nothing downloaded) loads the page from a server on 127.0.0.1, clicks a catalog item, picks
changes on two attributes, and the results (with their photos) are the SDK's answer; then
"more like this" on one attribute and a photo upload.

A screenshot is written to a temporary path that the test prints (the README's picture comes
from docs/shop_screenshot.py over the demo bundle). Skipped, with the reason, where
Chromium, chromedriver or selenium are absent.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest
from serve_helpers import free_port, wait_ready

CHROMIUM = os.environ.get("FASHSDK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FASHSDK_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 30  # seconds for anything the page does (2 busy cores)


def _browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y chromium chromium-driver (Debian's {package})"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(serve_app) -> Iterator[str]:
    """The app on 127.0.0.1 in a thread of this process (uvicorn, as `fashsdk serve` runs it)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(serve_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    yield base
    instance.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):  # type: ignore[no-untyped-def]
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception as exc:
        error = driver.find_element(By.ID, "error").text
        raise AssertionError(f"the page did not show {what} within {WAIT} s (page error: {error!r})") from exc


def cards(driver, testid: str) -> list:  # type: ignore[no-untyped-def]
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def photos_loaded(driver, selector: str) -> bool:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", selector)


def test_pick_an_item_change_two_attributes_and_see_results(server: str, browser, real_retriever,
                                                            real_subset_data, tmp_path: Path) -> None:
    driver = browser
    driver.get(server + "/")
    wait_for(driver, lambda d: len(cards(d, "catalog-item")) == 30, "a page of 30 catalog items")
    wait_for(driver, lambda d: photos_loaded(d, "#catalog-grid img"), "the catalog photos")
    assert driver.find_element(By.ID, "catalog-count").text == f"{len(real_subset_data.ids)} items"

    first = cards(driver, "catalog-item")[0]
    item = first.get_attribute("data-id")
    first.click()
    wait_for(driver, lambda d: d.find_element(By.ID, "query-title").text == f"Item {item}", "the chosen item")
    wait_for(driver, lambda d: d.find_element(By.ID, "results-title").text == f"Looks like item {item}",
             "the item's neighbours")

    change = {}
    for attribute in ("baseColour", "season"):
        select = Select(driver.find_element(By.CSS_SELECTOR, f'[data-testid="change-{attribute}"]'))
        select.select_by_index(1)  # the first value other than the item's own
        change[attribute] = select.first_selected_option.get_attribute("value")
    driver.find_element(By.CSS_SELECTOR, '[data-testid="search-button"]').click()
    title = f"Like item {item}, with " + ", ".join(f"{a} → {v}" for a, v in change.items())
    wait_for(driver, lambda d: d.find_element(By.ID, "results-title").text == title, "the changed search")
    wait_for(driver, lambda d: photos_loaded(d, "#results img"), "the results' photos")

    shown = [c.get_attribute("data-id") for c in cards(driver, "result-item")]
    assert shown == [r.id for r in real_retriever.search(item, change=change, k=24)]
    first_result = cards(driver, "result-item")[0].text
    assert shown[0] in first_result and any(v in first_result for v in real_retriever.search(
        item, change=change, k=1)[0].attributes.values() if v)

    screenshot = tmp_path / "shop-page.png"
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"\nshop page screenshot: {screenshot}")

    driver.find_element(By.CSS_SELECTOR, '[data-testid="similar-gender"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "results-title").text.startswith("Same gender as item"),
             "more like this on gender")
    shown = [c.get_attribute("data-id") for c in cards(driver, "result-item")]
    assert shown == [r.id for r in real_retriever.similar(item, "gender", k=24)]

    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_upload_a_photo(server: str, browser, real_retriever, real_subset_data, catalog_images_dir: Path) -> None:
    driver = browser
    driver.get(server + "/")
    wait_for(driver, lambda d: len(cards(d, "catalog-item")) > 0, "the catalog")
    item = real_subset_data.ids[9]
    path = catalog_images_dir / f"{item}.jpg"
    driver.find_element(By.CSS_SELECTOR, '[data-testid="upload-input"]').send_keys(str(path))
    wait_for(driver, lambda d: d.find_element(By.ID, "results-title").text == "Looks like your photo",
             "results for the uploaded photo")
    shown = [c.get_attribute("data-id") for c in cards(driver, "result-item")]
    assert shown == [r.id for r in real_retriever.search(path.read_bytes(), k=24)]
    assert driver.find_element(By.ID, "query-title").text == "Your photo"
    predicted = driver.find_element(By.ID, "query-attrs").text
    assert "predicted" in predicted and "gender" in predicted
