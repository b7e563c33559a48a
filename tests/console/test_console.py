"""The console in a real headless Chromium: sign-in, the overview, the playground in
each API it offers, keys added and disabled in the page as the API sees them, and the
usage after known traffic. Each page is saved as a screenshot."""

import json
import re
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect



def sign_in(page, gateway, key):
    page.goto(f"{gateway}/ui")
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def chat(gateway, key, model, text="one two three"):
    """A whole OpenAI chat answer: (status, body)."""
    request = urllib.request.Request(
        f"{gateway}/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_sign_in_is_refused_for_a_user_key_and_taken_for_an_admin_key(page, gateway, screenshots, admin_key, user_key):
    sign_in(page, gateway, user_key)
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("user key")
    expect(page.get_by_role("navigation")).to_be_hidden()
    sign_in(page, gateway, "sk-not-a-key-at-all-000")
    expect(alert).to_contain_text("not known")
    page.screenshot(path=screenshots / "login.png")
    # By keyboard: the key field has the focus, Enter signs in.
    page.goto(f"{gateway}/ui")
    expect(page.get_by_label("Admin key")).to_be_focused()
    page.keyboard.type(admin_key)
    page.keyboard.press("Enter")
    nav = page.get_by_role("navigation")
    expect(nav).to_be_visible()
    for name in ["Overview", "Playground", "Keys", "Usage"]:
        expect(nav.get_by_role("link", name=name)).to_be_visible()
    # The key lives in the tab's session storage only, never in the address.
    assert admin_key not in page.url
    assert page.evaluate("sessionStorage.getItem('switchyard-admin-key')") == admin_key
    assert page.evaluate("localStorage.length") == 0
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('switchyard-admin-key')") is None


def test_the_overview_shows_each_backend(page, gateway, screenshots, admin_key):
    sign_in(page, gateway, admin_key)
    for name, kind in [("oa", "openai"), ("ol", "ollama"), ("echo", "echo")]:
        card = page.get_by_role("article", name=f"Backend {name}")
        expect(card).to_contain_text(f"kind {kind}")
        expect(card).to_contain_text("in flight 0")
        expect(card).to_contain_text("queued 0")
    expect(page.get_by_role("article", name="Backend oa")).to_contain_text("healthy")
    expect(page.get_by_role("article", name="Backend oa")).to_contain_text("last hour")
    page.screenshot(path=screenshots / "overview.png", full_page=True)
    # The system's dark scheme is followed.
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    page.screenshot(path=screenshots / "overview-dark.png", full_page=True)
    page.emulate_media(color_scheme="light")
    # At a phone's width nothing runs off the side.
    page.set_viewport_size({"width": 390, "height": 800})
    page.reload()
    expect(page.get_by_role("article", name="Backend echo")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    page.screenshot(path=screenshots / "overview-phone.png", full_page=True)


def test_the_playground_streams_an_echo_answer_in_each_api(page, gateway, screenshots, admin_key):
    sign_in(page, gateway, admin_key)
    page.get_by_role("link", name="Playground").click()
    api = page.get_by_label("API", exact=True)
    options = api.locator("option").all_inner_texts()
    assert any("OpenAI chat" in o for o in options) and any("Ollama" in o for o in options), options
    # The models come from /v1/models through the gateway.
    expect(page.locator("#model-list option[value='oa/mock-model']")).to_have_count(1)
    message = "the quick brown fox jumps"
    for index, label in enumerate(options):
        api.select_option(index=index)
        page.get_by_label("Model", exact=True).fill("echo/demo")
        page.get_by_label("System prompt").fill("Answer briefly.")
        page.get_by_label("Message", exact=True).fill(message)
        # Every state the answer passes through, to see it grow piece by piece.
        page.evaluate(
            """() => {
                window.seen = [];
                const answer = document.getElementById('play-answer');
                new MutationObserver(() => window.seen.push(answer.textContent))
                    .observe(answer, {childList: true, characterData: true, subtree: true});
            }"""
        )
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#play-answer")).to_have_text(message)
        stats = page.locator("#play-stats")
        expect(stats).to_contain_text("Completion tokens", timeout=5000)
        expect(stats).to_contain_text("Server-Timing")
        seen = [s for s in page.evaluate("window.seen") if s]
        partial = [s for s in seen if s and s != message]
        assert partial and all(message.startswith(s) for s in partial), (label, seen)
        completion = page.locator("#play-stats dt:has-text('Completion tokens') + dd").inner_text()
        assert int(completion) == len(message.split()), (label, completion)
        if index == 0:
            page.screenshot(path=screenshots / "playground.png", full_page=True)
    # A name the gateway does not know is answered with the error, shown in the page.
    api.select_option(index=0)
    page.get_by_label("Model", exact=True).fill("oa/")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#play-error")).to_contain_text("404")


def test_a_key_added_in_the_page_works_at_once_within_its_models_until_disabled(page, gateway, screenshots, admin_key):
    sign_in(page, gateway, admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("User", exact=True).fill("dora")
    page.get_by_label("Models").fill("echo/*")
    page.get_by_label("Requests per minute").fill("-5")
    page.get_by_role("button", name="Add key").click()
    expect(page.locator("#add-error")).to_contain_text("rpm")
    page.get_by_label("Requests per minute").fill("600")
    page.get_by_label("Note").fill("console test")
    page.get_by_role("button", name="Add key").click()
    new_key = page.locator("#new-key-value")
    expect(new_key).to_have_text(re.compile(r"^sk-\S{40,}$"))
    key = new_key.inner_text()
    expect(page.get_by_role("button", name="Copy key")).to_be_visible()
    row = page.locator("#keys-table tbody tr", has_text="dora")
    expect(row).to_contain_text("echo/*")
    expect(row).to_contain_text("rpm 600")
    expect(row).not_to_contain_text(key)
    page.screenshot(path=screenshots / "keys.png", full_page=True)

    status, _ = chat(gateway, key, "echo/x")
    assert status == 200
    status, body = chat(gateway, key, "oa/mock-model")
    assert status == 403, body

    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    status, body = chat(gateway, key, "echo/x")
    assert status == 401 and "disabled" in json.dumps(body), body
    row.get_by_role("button", name="Enable").click()
    expect(row).to_contain_text("active")
    assert chat(gateway, key, "echo/x")[0] == 200

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove").click()
    expect(row).to_have_count(0)
    assert chat(gateway, key, "echo/x")[0] == 401


def test_usage_after_known_traffic_shows_the_right_totals(page, gateway, screenshots, admin_key):
    sign_in(page, gateway, admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("User", exact=True).fill("erin")
    page.get_by_role("button", name="Add key").click()
    key = page.locator("#new-key-value")
    expect(key).to_have_text(re.compile(r"^sk-"))
    key = key.inner_text()
    tokens = 0
    for text in ["one", "one two", "one two three"]:
        status, body = chat(gateway, key, "echo/usage-test", text)
        assert status == 200
        tokens += body["usage"]["total_tokens"]
    status, _ = chat(gateway, key, "oa/")
    assert status == 404

    page.get_by_role("link", name="Usage").click()
    row = page.get_by_role("region", name="Totals by user").locator("tbody tr", has_text="erin")
    deadline = time.monotonic() + 10
    # The ledger writes in small batches: look again until the rows are there.
    while time.monotonic() < deadline:
        page.get_by_role("button", name="Show").click()
        page.wait_for_timeout(300)
        if row.count() and row.locator("td").first.inner_text() == "4":
            break
    cells = row.locator("td").all_inner_texts()
    # requests, prompt, completion, total, errors
    assert cells[0] == "4" and cells[3] == str(tokens) and cells[4] == "1", cells
    model = page.get_by_role("region", name="Totals by model").locator("tbody tr", has_text="echo/usage-test")
    assert model.locator("td").first.inner_text() == "3"
    expect(page.locator("#chart-days svg rect").first).to_be_visible()
    expect(page.locator("#chart-models svg")).to_contain_text("echo/usage-test")
    page.screenshot(path=screenshots / "usage.png", full_page=True)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    csv = open(download.value.path(), encoding="utf-8").read()
    assert csv.startswith("group,name,requests,prompt_tokens,completion_tokens,total_tokens,errors\n")
    assert f"user,erin,4," in csv and f",{tokens},1\n" in csv, csv
