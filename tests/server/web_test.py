"""Headless-Chromium test of carousel-sd-server's web page (GET /): submit prompts, watch the live progress bars
(Server-Sent Events), see the images; saves a screenshot.

Run it through tests/server/web_test.sh (which starts the server), or against a running server:

    python3 tests/server/web_test.py --url http://127.0.0.1:8080 --screenshot build/server-page.png

Needs: Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), and selenium (pip install
selenium). Exits non-zero with a message when a check fails.
"""

import argparse
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--screenshot", required=True, help="PNG path of the final screenshot")
    parser.add_argument("--steps", type=int, default=300, help="steps per request (enough to watch progress)")
    parser.add_argument("--prompts", nargs="+", default=["a red circle on a blue background",
                                                         "a green square on a white background"])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    try:
        driver.get(args.url + "/")
        wait = WebDriverWait(driver, 60, poll_frequency=0.02)
        wait.until(lambda d: "batching" in d.find_element(By.ID, "meta").text)
        assert driver.find_element(By.LINK_TEXT, "metrics").get_attribute("href").endswith("/metrics")

        steps = driver.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys(str(args.steps))
        n = driver.find_element(By.ID, "n")
        n.clear()
        n.send_keys("2")
        for i, prompt in enumerate(args.prompts):
            box = driver.find_element(By.ID, "prompt")
            box.clear()
            box.send_keys(prompt)
            seed = driver.find_element(By.ID, "seed")
            seed.clear()
            seed.send_keys(str(100 + i))
            driver.find_element(By.ID, "generate").click()

        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".job")) == len(args.prompts))
        # Live progress: some bar strictly between empty and full, with a step count and an ETA in its status line.
        partial = []

        def in_progress(d):
            for job in d.find_elements(By.CSS_SELECTOR, ".job"):
                status = job.find_element(By.CSS_SELECTOR, ".status").text
                width = d.execute_script("return arguments[0].style.width", job.find_element(By.CSS_SELECTOR, ".bar > div"))
                if "step" in status and "ETA" in status and width and 0 < float(width.rstrip("%")) < 100:
                    partial.append((status, width))
                    return True
            return False

        wait.until(in_progress)
        print("progress seen:", partial[-1])
        driver.save_screenshot(args.screenshot.replace(".png", "-progress.png"))

        # Every request finishes with its images shown.
        WebDriverWait(driver, 120, poll_frequency=0.1).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".job.done")) == len(args.prompts))
        images = driver.find_elements(By.CSS_SELECTOR, "img.result")
        assert len(images) == 2 * len(args.prompts), f"expected {2 * len(args.prompts)} images, got {len(images)}"
        for img in images:
            width = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            assert width and width > 0, "an image did not load"
        assert not driver.find_elements(By.CSS_SELECTOR, ".job.failed"), "a request failed"
        time.sleep(0.3)  # let the last bar transition finish before the screenshot
        driver.save_screenshot(args.screenshot)
        print(f"PASS: {len(images)} images shown; screenshot {args.screenshot}")
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
