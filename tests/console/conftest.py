"""Starts the built mock upstream and gateway for the console's browser tests, and a
headless Chromium (the system's, driven by Playwright) that may reach loopback only.

The binaries come from `$MOCK_UPSTREAM_BIN` and `$SWITCHYARD_BIN` (see `scripts/test`).
The gateway gets a fresh configuration in a temporary directory: an admin key in
`auth.admin_keys`, a keys file with one user key, backends `oa` (OpenAI-compatible) and
`ol` (Ollama) on the mock, the built-in `echo`, and a usage ledger. Screenshots go to
`target/console-screenshots/`.
"""

import json
import os
import pathlib
import shutil
import urllib.parse
import urllib.request

import pytest
from stack import running_stack

ADMIN_KEY = "sk-console-admin-0123456789"
USER_KEY = "sk-console-user-0123456789"
SCREENSHOTS = pathlib.Path(__file__).resolve().parents[2] / "target" / "console-screenshots"


def _write_config(directory, listen, mock_url):
    # Relative to the gateway's working directory (this folder), so that the keys page
    # and its screenshot name the file as a user's config would.
    (directory / "keys.json").write_text(json.dumps({USER_KEY: "tester"}))
    config = directory / "switchyard.toml"
    config.write_text(
        f"""\
[server]
listen = "{listen}"

[auth]
keys_file = "keys.json"
admin_keys = ["{ADMIN_KEY}"]

[ledger]
path = {json.dumps(str(directory / "usage.db"))}

[routing]
default_backend = "echo"

[[backends]]
name = "oa"
kind = "openai"
url = "{mock_url}/v1"

[[backends]]
name = "ol"
kind = "ollama"
url = "{mock_url}"

[[backends]]
name = "echo"
kind = "echo"
"""
    )
    return config


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """Base URL of a running gateway wired to a running mock upstream."""
    with running_stack(tmp_path_factory, "switchyard-console", _write_config) as (base, _, log):
        yield base
    # The admin key is sent in a header only: it never reaches the log.
    assert ADMIN_KEY not in log.read_text(errors="replace"), "the admin key was logged"


def _chromium():
    """The system's Chromium, or a skip that says how to get it (a failure where
    `SWITCHYARD_REQUIRE_CHROMIUM=1`, as in CI)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "no system Chromium: install Debian's `chromium` package (scripts/test does, as root with apt)"
    if os.environ.get("SWITCHYARD_REQUIRE_CHROMIUM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser():
    from playwright import sync_api

    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


def _loopback_only(route):
    """Every request that is not for 127.0.0.1 is aborted: the console needs no other."""
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.route("**/*", _loopback_only)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture(scope="session")
def admin_key():
    """The gateway's admin key (in `auth.admin_keys`)."""
    return ADMIN_KEY


@pytest.fixture(scope="session")
def user_key():
    """A user key in the keys file."""
    return USER_KEY


@pytest.fixture(scope="session")
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
