"""The chat page in headless Chromium (Debian's package): send a message, watch the reply stream."""
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        # A persistent context in a fresh directory is Chromium's --user-data-dir.
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"),
                                                   executable_path=CHROMIUM, headless=True,
                                                   args=FLAGS)
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def test_chat_page_streams_a_reply(server, browser_page):
    page = browser_page
    requests = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(server.url + "/")
    # Locators, not page-side eval: the page's CSP forbids eval and must stay in force.
    page.wait_for_selector("#model:has-text('tiny-llama')")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "200")
    page.fill("#input", "Hello there")
    page.click("#send")
    assert page.locator(".msg.user").inner_text() == "Hello there"
    reply = page.locator(".msg.assistant")
    page.wait_for_selector(".msg.assistant .meta", timeout=60_000)   # .meta marks the end
    # The page redrew the reply once per streamed piece, not once at the end.
    assert int(reply.get_attribute("data-pieces")) >= 50
    meta = page.locator(".msg.assistant .meta").text_content()
    assert "200 tokens" in meta
    shown = reply.text_content()
    # The same request through the API gives the same greedy reply.
    import httpx
    api = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": "Hello there"}],
        "temperature": 0, "max_tokens": 200}).json()
    assert shown == api["choices"][0]["message"]["content"] + meta
    page.click("#clear")
    assert page.locator(".msg").count() == 0
    assert all(url.startswith(server.url) for url in requests)        # nothing external


def test_clear_during_a_stream_forgets_that_turn(server, browser_page):
    """Clear while a reply streams: the next message is sent without the cleared turn."""
    import json
    page = browser_page
    bodies = []
    page.on("request", lambda req: bodies.append(json.loads(req.post_data))
            if req.url.endswith("/v1/chat/completions") else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('tiny-llama')")
    page.fill("#max-tokens", "400")                 # the server's limit: a few seconds
    page.fill("#input", "first question")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-pieces]", timeout=60_000)   # streaming now
    page.click("#clear")
    page.wait_for_selector("#send:not([disabled])", timeout=30_000)
    page.fill("#max-tokens", "4")
    page.fill("#input", "second question")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .meta", timeout=60_000)
    assert [m["content"] for m in bodies[-1]["messages"]] == ["second question"]
