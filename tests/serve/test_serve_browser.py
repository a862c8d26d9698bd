"""The chat page in a real headless Chromium (selenium + chromedriver): streaming, multi-turn, regenerate,
stop, and a conversation that survives a reload. Skipped where no browser is installed
(Debian: `apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import shutil
import time

import pytest
from serve_utils import MODEL_NAME, SERVE_KEY

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium + chromedriver installed", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

MAX_TOKENS = 200  # long enough that the reply arrives over many network reads


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # selenium must not try to download drivers or browsers
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def messages(driver) -> list[tuple[str, str]]:
    """(role, text) of every bubble on the page."""
    return [tuple(m) for m in driver.execute_script(
        "return [...document.querySelectorAll('#messages .msg')].map(m => "
        "[m.classList.contains('user') ? 'user' : 'assistant', m.querySelector('.text').textContent]);")]


def idle(driver) -> bool:
    return driver.execute_script("return document.body.dataset.state") == "idle"


def send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def greedy(client, conversation: list[tuple[str, str]], max_tokens: int = MAX_TOKENS) -> str:
    got = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=max_tokens,
                                         messages=[{"role": r, "content": t} for r, t in conversation])
    return got.choices[0].message.content


def open_page(d, served, max_tokens: int) -> None:
    """Loads the page, gives it the API key it asks for, and sets greedy sampling."""
    d.get(served.url + "/")
    # The server wants a key: the page says so, and opens its settings to take one.
    wait_until(lambda: "API key" in d.find_element(By.ID, "status").text, 30, "the API-key prompt")
    key = d.find_element(By.ID, "api-key")
    assert key.is_displayed(), "settings open by themselves when a key is needed"
    key.send_keys(SERVE_KEY, Keys.TAB)
    wait_until(lambda: d.find_element(By.ID, "model-name").text == MODEL_NAME, 30, "the model name")
    for field, value in (("temperature", "0"), ("max-tokens", str(max_tokens))):
        el = d.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)


def test_chat_page_streams_replies(browser, served, client):
    d = browser
    open_page(d, served, max_tokens=MAX_TOKENS)
    # Record every change of the reply's text, to see it arrive in pieces.
    d.execute_script("""
        window.lengths = [];
        new MutationObserver(() => {
          const t = document.querySelector('#messages .msg.assistant:last-child .text');
          if (t) window.lengths.push(t.textContent.length);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    """)
    send(d, "Hello, who are you?")
    wait_until(lambda: len(messages(d)) == 2 and idle(d), what="the first reply")
    first = messages(d)
    assert first[0] == ("user", "Hello, who are you?")
    assert first[1][1] == greedy(client, first[:1])
    growth = sorted({n for n in d.execute_script("return window.lengths") if 0 < n < len(first[1][1])})
    assert len(growth) >= 3, f"the reply did not stream: text lengths seen {growth}"

    # Multi-turn: the second request carries the whole conversation.
    send(d, "Tell me more.")
    wait_until(lambda: len(messages(d)) == 4 and idle(d), what="the second reply")
    convo = messages(d)
    assert convo[3][1] == greedy(client, convo[:3])

    # Regenerate replaces the last reply (greedy: with the same text) instead of adding one.
    d.find_element(By.ID, "regenerate").click()
    wait_until(lambda: not idle(d), 10, "regeneration to start")
    wait_until(lambda: idle(d), what="the regenerated reply")
    assert messages(d) == convo

    # The conversation is kept by the page across a reload.
    d.refresh()
    wait_until(lambda: messages(d) == convo, 30, "the restored conversation")
    # The page needs nothing from outside this server (no CDN): every resource came from it.
    resources = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(served.url + "/") for r in resources), resources


def test_stop_button_ends_the_reply_and_frees_the_row(browser, served, client):
    d = browser
    open_page(d, served, max_tokens=480)
    d.find_element(By.ID, "new-chat").click()
    assert messages(d) == []
    full = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=480,
                                          messages=[{"role": "user", "content": "Count to a thousand."}])
    assert full.usage.completion_tokens > 200, "precondition: a long reply"
    # The whole reply takes well under a second here, faster than a WebDriver round trip: so the page itself
    # clicks Stop the moment the first text shows, through the button's own click handler.
    d.execute_script("""
        const observer = new MutationObserver(() => {
          const t = document.querySelector('#messages .msg.assistant:last-child .text');
          if (t && t.textContent) { observer.disconnect(); document.getElementById('stop').click(); }
        });
        observer.observe(document.getElementById('messages'),
                         {childList: true, subtree: true, characterData: true});
    """)
    send(d, "Count to a thousand.")
    wait_until(lambda: len(messages(d)) == 2 and idle(d), 30, "the page to stop")
    reply = messages(d)[1][1]
    assert "stopped" in d.find_element(By.CSS_SELECTOR, "#messages .msg.assistant").get_attribute("class")
    whole = full.choices[0].message.content
    assert whole.startswith(reply) and len(reply) < len(whole)
    assert served.wait_idle()["active"] == 0
