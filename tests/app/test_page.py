"""The app's page in a real browser: Debian's Chromium, headless, driven by Playwright.

A tiny student keeps each request fast. The browser is the system's (/usr/bin/chromium, set up
by scripts/ensure-chromium.sh); Playwright never downloads one. The screenshot of an answered
request is kept in test-artifacts/ (or $DISTILL_TEST_ARTIFACTS).
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DISTILL_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying Google's hosts, which a closed
# network refuses; a fresh profile keeps runs independent.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SR = 16000
DONE = "Done."


@pytest.fixture(scope="module")
def app_url(student):
    from distill.app.inference import Responder
    from distill.app.page import serve
    from teachers.server import free_port

    port = free_port()
    page = serve(Responder(student, "A tiny random student (test)."), port=port, block=False)
    yield f"http://127.0.0.1:{port}"
    page.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A spoken sentence as the demo makes them, a 35 s clip, and a file that is not audio."""
    from distill.demo.speech import speak

    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "speech.wav", speak("the old man walks near the river"), SR)
    sf.write(folder / "long.wav", np.full(35 * SR, 0.01, dtype=np.float32), SR)
    (folder / "broken.wav").write_bytes(b"RIFF this is not a wave file")
    return folder


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.requested = []
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.goto(app_url)
    tab.wait_for_selector("#submit")
    yield tab
    context.close()


def upload(tab, path: Path) -> None:
    tab.set_input_files("#audio input[type=file]", str(path))
    # The file input goes at once; the player's <audio> appears only when the upload has
    # reached the server. Submitting before that would send no audio.
    tab.wait_for_selector("#audio audio", state="attached")


def submit_and_wait(tab, expect: str, timeout_ms: int = 120_000) -> str:
    tab.click("#submit")
    tab.wait_for_function(
        "(expect) => document.querySelector('#status')?.innerText.includes(expect)",
        arg=expect, timeout=timeout_ms)
    return tab.inner_text("#status")


def artifacts() -> Path:
    folder = Path(os.environ.get("DISTILL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_clip_gets_an_answer_and_its_timings(page, clips, app_url):
    upload(page, clips / "speech.wav")
    submit_and_wait(page, DONE)
    answer = page.input_value("#answer textarea")
    timings = page.inner_text("#timings")
    assert answer.strip(), "no answer on the page"
    for label in ("TTFT", "TPOT", "tokens generated", "peak memory"):
        assert label in timings
    assert " s" in timings and "GB" in timings
    shot = artifacts() / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    # Offline: every request the page made went to the app itself.
    hosts = {urlparse(url).netloc for url in page.requested if url.startswith("http")}
    assert hosts == {urlparse(app_url).netloc}, hosts


def test_presets_fill_the_instruction(page):
    page.get_by_label("Describe the sound").check()
    page.wait_for_function(
        "() => document.querySelector('#instruction textarea').value.includes('hear')")


def test_no_audio_is_answered_on_the_page(page):
    assert "No audio" in submit_and_wait(page, "No audio")


def test_an_empty_instruction_is_answered_on_the_page(page, clips):
    upload(page, clips / "speech.wav")
    page.fill("#instruction textarea", "")
    assert "instruction is empty" in submit_and_wait(page, "instruction is empty")


def test_an_undecodable_file_is_answered_on_the_page(page, clips):
    upload(page, clips / "broken.wav")
    message = submit_and_wait(page, "Could not use the audio file")
    assert "broken.wav" in message and "Traceback" not in page.content()


def test_a_long_clip_is_cut_and_the_page_says_so(page, clips):
    upload(page, clips / "long.wav")
    assert "only its first 30 s" in submit_and_wait(page, "only its first 30 s")


def test_two_people_at_once_both_get_answers(browser, app_url, clips):
    contexts = [browser.new_context() for _ in range(2)]
    tabs = [context.new_page() for context in contexts]
    try:
        for tab in tabs:
            tab.goto(app_url)
            tab.wait_for_selector("#submit")
            upload(tab, clips / "speech.wav")
        for tab in tabs:  # both requests are in the queue before either is answered
            tab.click("#submit")
        for tab in tabs:
            tab.wait_for_function(
                "() => document.querySelector('#status')?.innerText.includes('Done.')",
                timeout=180_000)
            assert tab.input_value("#answer textarea").strip()
    finally:
        for context in contexts:
            context.close()

