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
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

ADMIN_KEY = "sk-console-admin-0123456789"
USER_KEY = "sk-console-user-0123456789"
STARTUP_SECONDS = 20
SCREENSHOTS = pathlib.Path(__file__).resolve().parents[2] / "target" / "console-screenshots"


def _binary(variable):
    path = os.environ.get(variable)
    if not path:
        pytest.fail(f"${variable} is not set; run the suite through scripts/test")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        pytest.fail(f"${variable}={path} is not an executable file; build it first")
    return path


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process):
    """Terminates a process this fixture started, killing it if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start_mock(binary):
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline().strip()
    prefix = "mock upstream listening on "
    if not line.startswith(prefix):
        _stop(process)
        pytest.fail(f"mock upstream did not start; its first line was {line!r}")
    return process, line[len(prefix):]


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


def _healthy(base):
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """Base URL of a running gateway wired to a running mock upstream."""
    switchyard = _binary("SWITCHYARD_BIN")
    mock_binary = _binary("MOCK_UPSTREAM_BIN")
    directory = tmp_path_factory.mktemp("switchyard-console")
    mock, mock_url = _start_mock(mock_binary)
    listen = f"127.0.0.1:{_free_port()}"
    config = _write_config(directory, listen, mock_url)
    stderr_path = directory / "switchyard.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.setdefault("RUST_LOG", "info")
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [switchyard, "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://{listen}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(base):
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                log = stderr_path.read_text(errors="replace")
                pytest.fail(f"gateway did not start; its stderr:\n{log}")
            time.sleep(0.1)
        yield base
    finally:
        _stop(process)
        _stop(mock)
        # The admin key is sent in a header only: it never reaches the log.
        log = stderr_path.read_text(errors="replace")
        assert ADMIN_KEY not in log, "the admin key was logged"


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
