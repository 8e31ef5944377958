"""app.py in a real headless Chromium: upload a SynthCXR image, paste its report, press Ground,
and find the overlay and one table row per phrase.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``requirements-app.txt`` (``.ci/run``
installs them). Two servers: ``python app.py`` itself on the tiny exported model, and the same
page built in-process around a model scripted to write the row's answer (an untrained model
seldom writes a ``[BOX]``), so the table has rows to count. Screenshots go to the test's tmp dir.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from model.build import build_umedground
from model.config import GroundingConfig
from model.grounding_model import UMedGround
from tests.scripted import ScriptedAnswer
from utils.annotations import load_annotations
from utils.dataset import ordered_findings
from utils.image_io import read_image
from utils.inference import Grounder
from utils.prompts import answer_text

try:  # the optional app requirements; imported here so that `make test-fast` runs without them
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import app
except ImportError as error:
    MISSING_APP_REQUIREMENTS = f"{error}: pip install -r requirements-app.txt (.ci/run does it)"
else:
    MISSING_APP_REQUIREMENTS = ""


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1100")
SERVER_START_S = 180
GROUND_S = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + SERVER_START_S
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {SERVER_START_S} s")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if MISSING_APP_REQUIREMENTS:
        pytest.fail(MISSING_APP_REQUIREMENTS)
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.fail(f"{missing} missing: apt-get install -y chromium chromium-driver "
                    "(.ci/run does it)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4)
    model, processor, _ = build_umedground(config)
    return model.save_pretrained(tmp_path_factory.mktemp("app_export"), processor)


@pytest.fixture(scope="module")
def row(synth_dir):
    return next(s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings)


def phrase_rows(driver) -> list[str]:
    """The texts of the phrase table's body rows (Gradio draws them as ``div[role=row]``; the
    header is a ``tr``)."""
    return [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#phrases div[role=row]")]


def ground_in_browser(driver, url: str, image: Path, report: str, expected: int,
                      screenshot: Path) -> list[str]:
    """Upload, paste, press Ground, wait for the overlay and ``expected`` phrase rows;
    returns the rows found (a screenshot is saved either way)."""
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ground"))
    driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image))
    try:
        WebDriverWait(driver, GROUND_S).until(
            lambda d: image.stem in d.find_element(By.CSS_SELECTOR, "#image").text)
    except TimeoutException:
        driver.save_screenshot(str(screenshot))
        pytest.fail(f"the upload of {image.name} did not show; see {screenshot}")
    driver.find_element(By.CSS_SELECTOR, "#report textarea").send_keys(report)
    driver.find_element(By.CSS_SELECTOR, "#ground").click()
    try:
        WebDriverWait(driver, GROUND_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img")
            and "generated_text" in d.find_element(By.CSS_SELECTOR, "#json").text
            and len(phrase_rows(d)) == expected)
    except TimeoutException:
        pass  # the assertions below say what is missing
    driver.save_screenshot(str(screenshot))
    assert driver.find_elements(By.CSS_SELECTOR, "#overlay img"), "no overlay image"
    return phrase_rows(driver)


def test_app_py_serves_and_grounds_in_chromium(browser, exported, synth_dir, row, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--version", str(exported), "--port", str(port),
         "--examples_dir", str(synth_dir), "--device", "cpu"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(url, process)
        model, processor = UMedGround.from_pretrained(exported)
        expected = Grounder(model, processor).ground(read_image(row.image_path),
                                                     report=row.report)
        rows = ground_in_browser(browser, url, row.image_path, row.report,
                                 len(expected.phrases), tmp_path / "app_py.png")
        assert len(rows) == len(expected.phrases), rows
        assert row.image_path.name in browser.find_element(By.CSS_SELECTOR, "body").text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_page_shows_one_row_per_phrase(browser, exported, synth_dir, row, tmp_path):
    model, processor = UMedGround.from_pretrained(exported)
    ScriptedAnswer(model, processor.tokenizer, answer_text(
        [f.phrase for f in ordered_findings(row)]))
    demo = app.build_demo(Grounder(model, processor), app.load_examples(synth_dir))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        theme=app.THEME, ssr_mode=False, allowed_paths=[str(synth_dir)],
                        quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_server(url)
        rows = ground_in_browser(browser, url, row.image_path, row.report, len(row.findings),
                                 tmp_path / "app.png")
        assert len(rows) == len(row.findings) >= 1, rows
        assert all(any(f.phrase in text for text in rows) for f in row.findings), rows
        assert (tmp_path / "app.png").stat().st_size > 10_000
    finally:
        demo.close()
