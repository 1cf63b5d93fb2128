"""The page `sentmtl serve` serves at /, in a real headless Chromium (Debian's, driven by Playwright's
Python client; no browser is downloaded): type a sentence with a person and a city, submit, and see
the entities highlighted with their types and the sentiment bars drawn; compare two texts. A
screenshot is saved in the test's tmp folder. Skipped, with a message, where no Chromium is
installed (.ci/run installs Debian's chromium, so CI runs it)."""

import shutil
from pathlib import Path

import pytest
from test_serve import running_server

pytestmark = pytest.mark.slow

# what the machine's closed network needs: no background requests, no first-run, no QUIC
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does)")
    return path


def test_the_page_highlights_entities_and_draws_the_sentiment_bars(tmp_path: Path):
    exe = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
    with running_server() as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(base + "/")
            page.wait_for_selector("#model:has-text('heads:')", timeout=30_000)  # no eval: the page's CSP forbids it
            page.fill("#text", "Angela Merkel flew to Paris and loved every minute of it.")
            page.click("#analyse")
            page.wait_for_selector("mark.entity", timeout=30_000)
            marks = page.eval_on_selector_all(
                "mark.entity",
                "els => els.map(e => [e.firstChild.textContent, e.dataset.label, getComputedStyle(e).backgroundColor])",
            )
            found = {(text, label) for text, label, _ in marks}
            assert ("Angela Merkel", "PER") in found and ("Paris", "LOC") in found, marks
            colours = {label: bg for _, label, bg in marks}
            assert colours["PER"] != colours["LOC"]  # each type its own colour
            assert page.inner_text("#entities").replace("\n", " ").startswith("Angela Merkel")
            bars = page.eval_on_selector_all(
                "#sentiment .bar-row",
                "rows => rows.map(r => [r.dataset.label, r.querySelector('.bar').getBoundingClientRect().width])",
            )
            assert {label for label, _ in bars} == {"negative", "neutral", "positive"}
            assert max(w for _, w in bars) > 20 and sum(w for _, w in bars) > 0  # drawn, not just present
            assert page.locator("#topic .bar-row").count() == 4
            page.click("#compare")
            page.wait_for_selector("#similarity:not([hidden])", timeout=30_000)
            score = float(page.get_attribute("#similarity", "data-score"))
            assert 0.2 < score < 1.0
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_in_the_tab(tmp_path: Path):
    """A page load sends no bearer header: the page is served, the API answers 401, the page asks
    for the key, and with it (kept in sessionStorage, not a cookie) every call works."""
    exe = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
    with running_server("--api-key", "s3cret-key") as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)
            page.fill("#api-key", "wrong")
            page.click("#use-key")
            page.wait_for_selector("#key-why:has-text('refused')", timeout=30_000)
            page.fill("#api-key", "s3cret-key")
            page.click("#use-key")
            page.wait_for_selector("#model:has-text('heads:')", timeout=30_000)  # no eval: the page's CSP forbids it
            assert page.is_hidden("#key-form")
            assert page.evaluate("sessionStorage.getItem('sentmtl-api-key')") == "s3cret-key"
            assert page.evaluate("document.cookie") == ""
            page.click("#analyse")
            page.wait_for_selector("mark.entity", timeout=30_000)
        finally:
            browser.close()
