"""Starts the built mock upstream and gateway once per test session.

The binaries come from `$MOCK_UPSTREAM_BIN` and `$SWITCHYARD_BIN` (see `scripts/test`).
The gateway gets a fresh configuration in a temporary directory: one API key
(`sk-test`), an OpenAI-dialect backend `oa` and an Ollama backend `ol`, both pointing at
the mock, and the built-in `echo` backend as the default. The `gateway` fixture yields
the gateway's base URL, e.g. `http://127.0.0.1:PORT`.
"""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

API_KEY = "sk-test"
STARTUP_SECONDS = 20


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
    keys = directory / "keys.json"
    keys.write_text(json.dumps({API_KEY: "tester"}))
    config = directory / "switchyard.toml"
    config.write_text(
        f"""\
[server]
listen = "{listen}"

[auth]
keys_file = {json.dumps(str(keys))}

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
    directory = tmp_path_factory.mktemp("switchyard")

    mock, mock_url = _start_mock(mock_binary)
    listen = f"127.0.0.1:{_free_port()}"
    config = _write_config(directory, listen, mock_url)
    stderr_path = directory / "switchyard.stderr"
    # Neither $SWITCHYARD_CONFIG nor SWITCHYARD__* overrides may change this config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD")}
    env.setdefault("RUST_LOG", "info")
    with open(stderr_path, "wb") as stderr:
        gateway_process = subprocess.Popen(
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
            if gateway_process.poll() is not None or time.monotonic() > deadline:
                _stop(gateway_process)
                log = stderr_path.read_text(errors="replace")
                pytest.fail(
                    f"gateway did not answer GET {base}/health within {STARTUP_SECONDS}s "
                    f"(exit status {gateway_process.returncode}); its stderr:\n{log}"
                )
            time.sleep(0.1)
        yield base
    finally:
        _stop(gateway_process)
        _stop(mock)
