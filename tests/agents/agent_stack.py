"""What the agent tests share: starting the built mock upstream and gateway, finding the
agents that `scripts/install-agents` put in `target/agents`, and their offline
environment (a module of its own, since `conftest` is a name every suite uses).

The gateway's configuration follows docs/agents.md: one API key (`sk-test`), an
OpenAI-compatible backend `oa`, an Ollama backend `ol` and an Anthropic backend `an` on
the mock, each with `max_output_tokens` (the agents ask for far more than a small local
model writes), the built-in `echo` backend, and a pattern alias `claude-*` that takes
the `claude-…` names Claude Code asks for when no model is set, including the small one
it uses for background work. There is no default backend, so a `claude-…` name that
reaches echo got there by the alias.

The agents are offline: each runs with a fresh HOME (and CODEX_HOME) in a temporary
directory, so nothing of the machine's own agent configuration or login is read, and
every request it makes goes to the gateway on 127.0.0.1.
"""

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from stack import running_stack

API_KEY = "sk-test"
# What the `oa` backend caps a request's max_tokens to; the tests check the mock saw it.
MAX_OUTPUT_TOKENS = 2048
REPO = Path(__file__).resolve().parents[2]
AGENTS_BIN = REPO / "target" / "agents" / "node_modules" / ".bin"
PINS = json.loads((Path(__file__).parent / "package.json").read_text())["dependencies"]


def agent_binary(name, package):
    """The installed agent, at its pinned version; a skip only where npm is missing."""
    path = AGENTS_BIN / name
    if not os.access(path, os.X_OK):
        reason = f"{package} is not installed in {AGENTS_BIN} (scripts/install-agents)"
        if shutil.which("npm") is None and os.environ.get("SWITCHYARD_REQUIRE_AGENTS") != "1":
            pytest.skip(f"npm is not available, so {reason}")
        pytest.fail(reason)
    version = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    if PINS[package] not in version:
        pytest.fail(f"{path} says {version.strip()!r}, but {PINS[package]} is pinned")
    return str(path)


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

[[backends]]
name = "oa"
kind = "openai"
url = "{mock_url}/v1"
max_output_tokens = {MAX_OUTPUT_TOKENS}

[[backends]]
name = "ol"
kind = "ollama"
url = "{mock_url}"
max_output_tokens = {MAX_OUTPUT_TOKENS}

[[backends]]
name = "an"
kind = "anthropic"
url = "{mock_url}/v1"
max_output_tokens = {MAX_OUTPUT_TOKENS}

[[backends]]
name = "echo"
kind = "echo"

[[models]]
name = "claude-*"
targets = ["echo/echo"]
"""
    )
    return config


class Stack:
    """The running gateway and mock: their URLs and what the mock received."""

    def __init__(self, gateway, mock, log):
        self.gateway = gateway
        self.mock = mock
        self.log = log

    def mock_requests(self, model):
        """The requests that reached the mock for this (upstream) model name."""
        with urllib.request.urlopen(f"{self.mock}/_requests?model={model}") as response:
            return json.load(response)

    def gateway_log(self):
        return self.log.read_text(errors="replace")


def offline_env(home):
    """An environment with nothing of the machine's own: no proxies, keys or agent
    settings, HOME in a temporary directory."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "LOGNAME", "SHELL")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["HOME"] = str(home)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def start_stack(tmp_path_factory):
    """Starts the mock and the gateway, yields a `Stack`, then stops both."""
    with running_stack(tmp_path_factory, "switchyard", _write_config) as (base, mock, log):
        yield Stack(base, mock, log)


AGENTS_DOC = REPO / "docs" / "agents.md"


def _doc_block(section, language):
    """The first fenced block in `language` under the heading `## section` of
    docs/agents.md: the tests run the agents with what the page shows."""
    text = AGENTS_DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    fence = f"```{language}\n"
    begin = body.index(fence) + len(fence)
    return body[begin : body.index("```", begin)]


def documented_gateway_config(keys_file):
    """docs/agents.md's gateway configuration, its keys file at `keys_file`."""
    lines = []
    for line in _doc_block("The gateway", "toml").splitlines():
        if line.startswith("keys_file = "):
            line = f"keys_file = {json.dumps(str(keys_file))}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def documented_codex_config(model, gateway):
    """docs/agents.md's Codex config.toml, for this model and gateway."""
    lines = []
    for line in _doc_block("Codex CLI", "toml").splitlines():
        if line.startswith("model = "):
            line = f'model = "{model}"'
        elif line.startswith("base_url = "):
            line = f'base_url = "{gateway}/v1"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def documented_claude_env(gateway, key):
    """docs/agents.md's Claude Code variables, for this gateway and key; the model
    variables it shows as optional are left for each test to set."""
    env = {}
    for line in _doc_block("Claude Code", "sh").splitlines():
        if not line.startswith("export "):
            continue
        name, value = line[len("export ") :].split("#")[0].strip().split("=", 1)
        env[name] = value
    env["ANTHROPIC_BASE_URL"] = gateway
    env["ANTHROPIC_API_KEY"] = key
    for optional in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL"):
        del env[optional]
    return env
