"""The demo in a real browser: headless Chromium (Debian's chromium + chromium-driver, `make system-deps`) via selenium.

A new user's visit to the run folder the README's demo command makes: the page is titled by the folder, clicking an
example that ``evaluate`` wrote classifies it, an uploaded flowers12 photo gets the expected label and score, and the
training results tab leads with the final accuracy and shows the curves. Screenshots go to the test's tmp dir and, when
``PEFT_VISION_LORA_SCREENSHOT_DIR`` is set, there too (CI keeps them as artifacts).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from helpers.demo import serving

from peft_vision_lora.demo import build_app

SCREENSHOT_ENV = "PEFT_VISION_LORA_SCREENSHOT_DIR"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100")


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
    binary = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "Chromium or chromedriver is not installed, and cannot be here: `make system-deps` installs Debian's "
            "chromium and chromium-driver (needs root and the Debian archive)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _save(browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


@pytest.mark.slow
@pytest.mark.shared
def test_upload_a_photo_and_see_the_results_in_chromium(flowers_run, flowers12, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = sorted((flowers12 / "test" / "sunflower").glob("*.jpg"))[0]
    browser = _browser()
    try:
        with serving(build_app([flowers_run], top_k=2)) as url:
            browser.get(url)
            wait = WebDriverWait(browser, TIMEOUT_S)
            examples = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#pvl-examples button.gallery-item"))
            assert browser.title == "sunflower-vs-bluebell: 2 classes"
            assert len(examples) == 2  # one image per class of the evaluated split
            examples[1].click()  # 02-sunflower.jpg
            wait.until(lambda b: "Latency" in b.find_element(By.ID, "pvl-status").text)
            assert re.search(r"sunflower\s+\d+%", browser.find_element(By.ID, "pvl-labels").text)

            upload = browser.find_element(By.CSS_SELECTOR, "#pvl-image input[type=file]")
            upload.send_keys(str(photo))
            # gr.Label: the top label as a heading, then each label with its score bar and percentage.
            wait.until(lambda b: re.search(r"sunflower\s+(9\d|100)%", b.find_element(By.ID, "pvl-labels").text))
            assert re.search(r"Latency:\s*\d+ ms", browser.find_element(By.ID, "pvl-status").text)
            _save(browser, tmp_path, "demo-classify.png")

            browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Training results')]").click()
            curves = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#pvl-curves img"))
            width = wait.until(
                lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", curves)
            )
            assert width > 0
            header = wait.until(
                lambda b: "accuracy" in (text := b.find_element(By.ID, "pvl-results-header").text) and text
            )
            assert re.search(r"Top-1 accuracy \d+\.\d% on the test split \(12 images\)", header), header
            mistakes = browser.find_element(By.CSS_SELECTOR, "#pvl-mistakes img")
            assert browser.execute_script("return arguments[0].naturalWidth", mistakes) > 0
            assert "sunflower" in browser.find_element(By.ID, "pvl-per-class").text
            _save(browser, tmp_path, "demo-results.png")
    finally:
        browser.quit()
