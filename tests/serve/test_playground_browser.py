"""The playground in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): a streamed chat and a transcription against the real app."""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audio_files import SPEECH_EN
from tests.serve.conftest import API_KEY, ROOT

pytestmark = pytest.mark.serve

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = ROOT / "test-artifacts"  # git-ignored
LLM = "smollm2-135m-instruct"
STT = "whisper-tiny.en"

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs chromium and chromedriver: `make test` installs them")
    pytest.skip("no chromium/chromedriver (`make test` installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only with a browser to drive
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        # Nothing but the app: no update checks, sync or component downloads.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def idle(driver: webdriver.Chrome, timeout: float = 120) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    )


@pytest.fixture(scope="module")
def playground(browser, base_url) -> webdriver.Chrome:
    browser.get(f"{base_url}/playground")
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "load-models").click()
    WebDriverWait(browser, 30).until(
        lambda d: (
            LLM
            in [
                o.get_attribute("value")
                for o in Select(d.find_element(By.ID, "chat-model")).options
            ]
        )
    )
    idle(browser)
    return browser


def test_chat_streams_into_the_page_and_shows_usage(playground):
    Select(playground.find_element(By.ID, "chat-model")).select_by_value(LLM)
    max_tokens = playground.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("48")
    playground.find_element(By.ID, "chat-input").send_keys("Tell me a story about a cat.")
    playground.find_element(By.ID, "chat-send").click()
    lengths = []  # the answer's length as the page shows it, while the request runs
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = playground.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        answers = playground.find_elements(By.CSS_SELECTOR, "#chat-log .assistant .content")
        if answers:
            lengths.append(len(answers[-1].text))
        if state == "idle" and lengths:
            break
        time.sleep(0.05)
    idle(playground)
    answer = playground.find_elements(By.CSS_SELECTOR, "#chat-log .assistant .content")[-1].text
    assert answer.strip(), playground.find_element(By.ID, "status").text
    growing = sorted({n for n in lengths if 0 < n < len(answer)})
    assert len(growing) >= 2, f"the answer did not arrive in pieces: {lengths}"
    usage = playground.find_element(By.ID, "chat-usage").text
    assert "tokens/s" in usage and "completion" in usage, usage
    ARTIFACTS.mkdir(exist_ok=True)
    assert playground.save_screenshot(str(ARTIFACTS / "playground-chat.png"))


def test_transcribes_the_speech_fixture(playground):
    Select(playground.find_element(By.ID, "stt-model")).select_by_value(STT)
    playground.find_element(By.ID, "audio-file").send_keys(str(Path(SPEECH_EN).resolve()))
    playground.find_element(By.ID, "audio-send").click()
    WebDriverWait(playground, 120).until(
        lambda d: (
            d.find_element(By.ID, "transcript").text.strip()
            or "error" in (d.find_element(By.ID, "status").get_attribute("class") or "")
        )
    )
    idle(playground)
    transcript = playground.find_element(By.ID, "transcript").text.lower()
    assert "quick brown fox" in transcript, playground.find_element(By.ID, "status").text
    assert playground.save_screenshot(str(ARTIFACTS / "playground-speech.png"))


def test_shows_tokens_per_key_per_day_from_the_ledger(playground):
    """After the chat and speech above: the session key's row for today, read from the Usage
    API, with the tokens and audio seconds it was charged."""
    playground.find_element(By.ID, "usage-load").click()
    WebDriverWait(playground, 60).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#usage-table td")
            or "error" in (d.find_element(By.ID, "status").get_attribute("class") or "")
        )
    )
    idle(playground)
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in playground.find_elements(By.CSS_SELECTOR, "#usage-table tr")
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    mine = [row for row in rows if row[:2] == [today, "env-1"]]
    assert mine, (rows, playground.find_element(By.ID, "status").text)
    _, _, input_tokens, output_tokens, seconds, requests = mine[0]
    assert int(input_tokens) > 0 and int(output_tokens) > 0 and int(requests) > 0
    assert int(seconds) > 0  # the transcription above
    assert playground.save_screenshot(str(ARTIFACTS / "playground-usage.png"))


def test_thinking_shows_the_reasoning_apart_from_the_answer(playground):
    """ "think first" opens SmolLM2's <think> block: the page shows the reasoning stream in its
    own box and counts its tokens (SmolLM2 spends every token of a short reply thinking)."""
    Select(playground.find_element(By.ID, "chat-model")).select_by_value(LLM)
    thinking = playground.find_element(By.ID, "chat-thinking")
    max_tokens = playground.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    thinking.click()
    try:
        playground.find_element(By.ID, "chat-input").send_keys("Is 17 a prime number?")
        playground.find_element(By.ID, "chat-send").click()
        WebDriverWait(playground, 120).until(
            lambda d: (
                "reasoning" in d.find_element(By.ID, "chat-usage").text
                or d.find_elements(By.CSS_SELECTOR, "#chat-log .error")
            )
        )
        idle(playground)
    finally:
        if thinking.is_selected():
            thinking.click()
    assert not playground.find_elements(By.CSS_SELECTOR, "#chat-log .error")
    last = playground.find_elements(By.CSS_SELECTOR, "#chat-log .assistant")[-1]
    reasoning = last.find_element(By.CSS_SELECTOR, ".reasoning")
    assert reasoning.text.strip() and reasoning.is_displayed()
    assert "<think>" not in last.text
    usage = playground.find_element(By.ID, "chat-usage").text
    completion = int(usage.split(" completion")[0].rsplit(" ", 1)[1])
    assert f"{completion} reasoning" in usage, usage
    ARTIFACTS.mkdir(exist_ok=True)
    assert playground.save_screenshot(str(ARTIFACTS / "playground-reasoning.png"))
