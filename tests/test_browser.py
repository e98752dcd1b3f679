"""The page at `/` in a real browser: headless Chromium (selenium) against a real `kqa serve` process.

It types a Korean passage and a question, submits, and waits for the answer highlighted in the
passage (a <mark> holding 부산) and the top-k list. A screenshot is saved under the test's tmp folder
(its path is printed; run with `-s` to see it). Skips, saying why, when selenium, Chromium or
chromedriver is missing (.ci/run installs `chromium` and `chromium-driver` with apt-get).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="kqa serve needs fastapi (pip install -r requirements.txt)")
pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -r requirements.txt)")

from kqa.serving.harness import ServerProcess  # noqa: E402
from kqa.testing import KOREAN_EXAMPLES, token_scoring_model  # noqa: E402

CHROMEDRIVER_CANDIDATES = [
    os.environ.get("CHROMEDRIVER", ""),
    "/usr/bin/chromedriver",
    "/usr/lib/chromium/chromedriver",
    shutil.which("chromedriver") or "",
]
CHROMIUM_CANDIDATES = [
    os.environ.get("CHROMIUM", ""),
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    shutil.which("chromium") or "",
    shutil.which("google-chrome") or "",
]
CAPITAL = KOREAN_EXAMPLES[0]


def _first_existing(paths: list[str]) -> str | None:
    return next((p for p in paths if p and Path(p).is_file() and os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    driver_path, chromium = _first_existing(CHROMEDRIVER_CANDIDATES), _first_existing(CHROMIUM_CANDIDATES)
    if driver_path is None or chromium is None:
        pytest.skip(
            "headless browser test skipped: Chromium and chromedriver are not installed "
            f"(chromedriver: {driver_path or 'missing'}, chromium: {chromium or 'missing'}); "
            "install them with `apt-get install chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,1100",
        "--lang=ko-KR",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as err:
        pytest.skip(f"headless browser test skipped: Chromium did not start ({str(err).splitlines()[0]})")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model = token_scoring_model(tokenizer, {"부": 8.0}, {"##산": 8.0})  # the answer is 부산
    model_dir = tmp_path_factory.mktemp("page") / "model"
    model.save_pretrained(
        model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    )
    with ServerProcess(model_dir, ["--device", "cpu"], log_path=model_dir.parent / "server.log") as process:
        yield process


def test_the_page_highlights_the_answer_and_lists_the_top_k(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    assert "kqa" in browser.title
    browser.find_element(By.ID, "context").send_keys(CAPITAL["context"])
    browser.find_element(By.ID, "question").send_keys("가장 큰 항구 도시는 어디인가?")
    top_k = browser.find_element(By.ID, "top_k")
    top_k.clear()
    top_k.send_keys("3")
    browser.find_element(By.ID, "submit").click()

    mark = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#passage mark")))
    assert mark.text == "부산"
    assert browser.find_element(By.ID, "passage").text == CAPITAL["context"]  # the whole passage, in order
    assert browser.find_element(By.ID, "answer").text == "부산"
    items = browser.find_elements(By.CSS_SELECTOR, "#topk li")
    assert len(items) == 3
    assert items[0].text.startswith("부산") and "score 16.000" in items[0].text
    assert browser.find_element(By.ID, "error").text == ""

    # Korean renders with a CJK font, not as boxes: the passage's font stack starts with Noto Sans CJK KR.
    font = browser.execute_script("return getComputedStyle(document.getElementById('passage')).fontFamily")
    assert "Noto Sans CJK KR" in font
    # A glyph check: a Hangul syllable is as wide as a CJK font draws it (a missing glyph is a narrow box).
    width = browser.execute_script(
        "const c = document.createElement('canvas').getContext('2d');"
        "c.font = '32px \"Noto Sans CJK KR\"'; return c.measureText('부').width"
    )
    assert width > 25, f"Hangul drawn {width:.1f}px wide at 32px: no CJK font (apt-get install fonts-noto-cjk)?"

    screenshot = tmp_path / "kqa-page.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_an_error_from_the_server_is_shown_on_the_page(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    browser.find_element(By.ID, "context").send_keys("   ")  # blank: the server answers 422
    browser.find_element(By.ID, "question").send_keys("어디인가?")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    error = browser.find_element(By.ID, "error").text
    assert "422" in error and "context" in error
    assert not browser.find_element(By.ID, "result").is_displayed()


@pytest.fixture(scope="module")
def ask_server(tmp_path_factory, tiny_tokenizer_dir):
    """A calibrated model (P(correct) = sigmoid(score - 17): 부산's 16 gives 0.27, below the stored 0.5)
    over a one-document index."""
    from transformers import AutoTokenizer

    from kqa.calibration import Calibrator, save_calibrator
    from kqa.retrieval import Document, Retriever, RetrieverSettings

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model_dir = tmp_path_factory.mktemp("ask_page") / "model"
    token_scoring_model(tokenizer, {"부": 8.0}, {"##산": 8.0}).save_pretrained(
        model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    )
    save_calibrator(model_dir, Calibrator("platt", {"features": ["score"], "weights": [1.0], "bias": -17.0}, 0.5))
    document = Document(id="capital", title="", text=CAPITAL["context"], source="capital")
    index = Retriever.build([document], RetrieverSettings(method="sparse", analyzer="bigrams")).save(
        model_dir.parent / "index"
    )
    with ServerProcess(model_dir, ["--device", "cpu", "--index", index], log_path=model_dir.parent / "server.log") as p:
        yield p


def test_the_page_says_no_answer_below_the_threshold(browser, ask_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ask_server.url + "/")
    WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "score_threshold")))
    browser.find_element(By.ID, "question").send_keys("가장 큰 항구 도시는 어디인가?")  # no passage: the index
    browser.find_element(By.ID, "submit").click()
    none = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.ID, "no_answer")))
    assert none.text.startswith("답 없음 (no answer)") and "0.27 < 기준 0.50" in none.text

    browser.find_element(By.ID, "score_threshold").send_keys("0.2")
    browser.find_element(By.ID, "submit").click()
    mark = WebDriverWait(browser, 60).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#passage mark")))
    assert mark.text == "부산" and browser.find_element(By.ID, "answer").text == "부산"
    assert "confidence 0.269" in browser.find_element(By.CSS_SELECTOR, "#topk li").text
