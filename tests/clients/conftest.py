"""Starts the built mock upstream and gateway once per test session.

The binaries come from `$MOCK_UPSTREAM_BIN` and `$SWITCHYARD_BIN` (see `scripts/test`).
The gateway gets a fresh configuration in a temporary directory: one API key
(`sk-test`), an OpenAI-dialect backend `oa` and an Ollama backend `ol`, both pointing at
the mock, and the built-in `echo` backend as the default. The `gateway` fixture yields
the gateway's base URL, e.g. `http://127.0.0.1:PORT`.
"""

import json

import pytest
from stack import running_stack

API_KEY = "sk-test"


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


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """Base URL of a running gateway wired to a running mock upstream."""
    with running_stack(tmp_path_factory, "switchyard", _write_config) as (base, _, _):
        yield base
