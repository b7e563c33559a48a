"""Real coding agents, at their pinned versions, against the gateway: OpenAI's Codex CLI
(`codex exec`, Responses wire API) and Claude Code (`claude -p`, Anthropic Messages),
each set up exactly as docs/agents.md says, offline, with only the gateway to talk to.

Each completes a task on the `echo` backend (which answers with the text of the last
user message) and one on the mock upstream's `mock-agent` model, behind an
OpenAI-compatible backend and an Ollama one, which plays one tool
round trip: it calls the tool that the prompt's `mock-call NAME {JSON}` line names, the
agent runs it, and once the tool's result is in the history the mock answers
`MOCK-FINAL (tool said: RESULT)`. That checks the whole loop through the gateway: the
tool call decoded and rendered in the agent's dialect, the agent's tool result parsed
and sent upstream, and the final answer back.
"""

import base64
import json
import subprocess

import pytest

from stack import built_binary

from agent_stack import (
    API_KEY,
    MAX_OUTPUT_TOKENS,
    agent_binary,
    documented_claude_env,
    documented_gateway_config,
    documented_codex_config,
    offline_env,
)

AGENT_SECONDS = 180
# An 8×8 red PNG.
RED_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC"
)


def run_agent(argv, env, cwd):
    """Runs one agent command to its end, failing with its output if it fails."""
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_SECONDS,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{argv[0]} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


# The mock behind each kind of backend: `oa` (OpenAI-compatible), `ol` (Ollama) and `an`
# (Anthropic's Messages API).
BACKENDS = ["oa", "ol", "an"]


def anthropic(request):
    return request["path"] == "/v1/messages"


def tool_messages(request):
    return [m for m in request["body"]["messages"] if m["role"] == "tool"]


def text(content):
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content or [])


def max_tokens(request):
    """The output limit a request asked of the mock, in its backend's own field."""
    body = request["body"]
    if request["path"] == "/api/chat":
        return (body.get("options") or {}).get("num_predict")
    return body.get("max_tokens")


def tool_names(request):
    tools = request["body"]["tools"]
    if anthropic(request):
        return [t["name"] for t in tools]
    return [t["function"]["name"] for t in tools]


def calls_and_results(request):
    """The tool calls in a request's history as (id, name), and its tool results as
    (the id or tool name it answers, its text), in the upstream's own shapes."""
    messages = request["body"]["messages"]
    if anthropic(request):
        blocks = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
        calls = [(b["id"], b["name"]) for b in blocks if b["type"] == "tool_use"]
        results = [
            (b["tool_use_id"], text(b["content"])) for b in blocks if b["type"] == "tool_result"
        ]
        return calls, results
    calls = [
        (call.get("id"), call["function"]["name"])
        for message in messages
        for call in message.get("tool_calls") or []
    ]
    key = "tool_name" if request["path"] == "/api/chat" else "tool_call_id"
    results = [(m[key], text(m["content"])) for m in tool_messages(request)]
    return calls, results


def check_round_trip(requests, tool, marker):
    """Two turns reached the mock: the first with the agent's tools and no result, the
    second with the mock's call and the tool's result, answering it (by id; Ollama by
    the tool's name)."""
    assert len(requests) == 2, requests
    first, second = requests
    assert calls_and_results(first) == ([], [])
    assert first["body"]["stream"] is True
    assert tool in tool_names(first)
    calls, results = calls_and_results(second)
    call_id = "toolu_mock1" if anthropic(second) else "call_mock1"
    assert calls == [(call_id, tool)]
    assert len(results) == 1, results
    answers, result = results[0]
    assert answers == (tool if second["path"] == "/api/chat" else call_id)
    assert marker in result


def check_image_follows_the_tool_result(requests):
    """The second turn's tool result is text, and the PNG the tool returned is in the
    user message right after it."""
    assert len(requests) == 2, requests
    messages = requests[1]["body"]["messages"]
    results = tool_messages(requests[1])
    assert len(results) == 1 and isinstance(results[0]["content"], str), results
    after = messages[messages.index(results[0]) + 1]
    assert after["role"] == "user", after
    urls = [p["image_url"]["url"] for p in after["content"] if p["type"] == "image_url"]
    assert [url.split(",")[0] for url in urls] == ["data:image/png;base64"]


def test_the_documented_gateway_configuration_is_valid(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({API_KEY: "tester"}))
    config = tmp_path / "switchyard.toml"
    config.write_text(documented_gateway_config(keys))
    check = subprocess.run(
        [built_binary("SWITCHYARD_BIN"), "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "max_output_tokens 4096" in check.stdout
    assert "claude-*" in check.stdout


# ---------------------------------------------------------------- Codex CLI


@pytest.fixture
def codex(stack, tmp_path):
    """Runs `codex exec PROMPT` on a model, with a fresh CODEX_HOME holding the
    config.toml docs/agents.md shows; returns the finished process."""
    binary = agent_binary("codex", "@openai/codex")

    def run(model, prompt):
        home = tmp_path / "home"
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True)
        (codex_home / "config.toml").write_text(documented_codex_config(model, stack.gateway))
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        env = offline_env(home)
        env["CODEX_HOME"] = str(codex_home)
        env["SWITCHYARD_API_KEY"] = API_KEY
        # No sandbox: bubblewrap needs user namespaces, which a CI container may not
        # grant, and the one command run is an `echo` in a temporary directory.
        argv = [binary, "exec", "--skip-git-repo-check"]
        argv += ["--sandbox", "danger-full-access", prompt]
        result = run_agent(argv, env, work)
        # Codex names each setting it does not know: every one the page shows is real.
        assert "unrecognized configuration settings" not in result.stderr, result.stderr
        return result

    return run


def test_codex_completes_a_task_on_echo(codex):
    result = codex("echo/echo", "Say CODEX-ECHO-7 back.")
    assert "Say CODEX-ECHO-7 back." in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_codex_tool_round_trip_on_the_mock(codex, stack, backend):
    prompt = 'Run the command I name.\nmock-call exec_command {"cmd":"echo CODEX-TOOL-OK"}'
    result = codex(f"{backend}/mock-agent-codex-{backend}", prompt)

    requests = stack.mock_requests(f"mock-agent-codex-{backend}")
    check_round_trip(requests, "exec_command", "CODEX-TOOL-OK")
    # The final answer is the mock's, quoting the command's output.
    assert "MOCK-FINAL (tool said:" in result.stdout
    assert "CODEX-TOOL-OK" in result.stdout
    for request in requests:
        asked = max_tokens(request)
        assert asked is None or asked <= MAX_OUTPUT_TOKENS


def test_codex_views_an_image_through_an_openai_backend(codex, stack, tmp_path):
    # view_image answers with an image as the function call's output; OpenAI takes
    # images only from users, so the gateway sends it in a user message after it.
    (tmp_path / "work").mkdir()
    shot = tmp_path / "work" / "shot.png"
    shot.write_bytes(RED_PNG)
    prompt = "Look at the screenshot.\nmock-call view_image " + json.dumps({"path": str(shot)})
    result = codex("oa/mock-agent-codex-screenshot", prompt)

    requests = stack.mock_requests("mock-agent-codex-screenshot")
    check_image_follows_the_tool_result(requests)
    assert "MOCK-FINAL (tool said:" in result.stdout


# ---------------------------------------------------------------- Claude Code


@pytest.fixture
def claude(stack, tmp_path):
    """Runs `claude -p PROMPT` with the variables docs/agents.md exports, in a fresh
    HOME; `extra` adds or overrides variables (the model, the way the key is sent)."""
    binary = agent_binary("claude", "@anthropic-ai/claude-code")

    def run(prompt, **extra):
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        env = offline_env(home)
        env.update(documented_claude_env(stack.gateway, API_KEY))
        env.update(extra)
        return run_agent([binary, "-p", prompt], env, work)

    return run


def test_claude_code_completes_a_task_on_echo_through_the_claude_pattern_alias(claude, stack):
    # No model set: Claude Code asks for its own claude-… names, which the `claude-*`
    # alias sends to echo; the key goes as `Authorization: Bearer` this time.
    result = claude(
        "Say CLAUDE-ECHO-3 back.", ANTHROPIC_API_KEY="", ANTHROPIC_AUTH_TOKEN=API_KEY
    )
    assert "Say CLAUDE-ECHO-3 back." in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_claude_code_tool_round_trip_on_the_mock(claude, stack, tmp_path, backend):
    # In the directory Claude Code runs in, where reading needs no permission.
    (tmp_path / "work").mkdir()
    note = tmp_path / "work" / "note.txt"
    note.write_text("CLAUDE-TOOL-OK\n")
    prompt = "Read the file I name.\nmock-call Read " + json.dumps({"file_path": str(note)})
    result = claude(
        prompt,
        ANTHROPIC_MODEL=f"{backend}/mock-agent-claude-{backend}",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="echo/echo",
    )

    requests = stack.mock_requests(f"mock-agent-claude-{backend}")
    check_round_trip(requests, "Read", "CLAUDE-TOOL-OK")
    # Claude Code's system blocks and any late system message are one leading system
    # message (Anthropic: the `system` field).
    roles = [m["role"] for m in requests[0]["body"]["messages"]]
    if anthropic(requests[0]):
        assert "system" not in roles and requests[0]["body"]["system"], roles
    else:
        assert roles[0] == "system" and "system" not in roles[1:], roles
    assert "MOCK-FINAL (tool said:" in result.stdout
    assert "CLAUDE-TOOL-OK" in result.stdout
    # Claude Code asks for 32000 output tokens; the backend's cap lowered that.
    assert [max_tokens(r) for r in requests] == [MAX_OUTPUT_TOKENS] * 2


def test_claude_code_subagent_on_the_small_model_reaches_the_claude_pattern_alias(
    claude, stack
):
    # The main model delegates to a subagent on "haiku", Claude Code's small model for
    # background work. With ANTHROPIC_DEFAULT_HAIKU_MODEL unset it asks for a
    # claude-haiku-… name, which only the `claude-*` alias routes (to echo, which
    # answers with the subagent's prompt); its report comes back as the tool result.
    call = {
        "description": "echo task",
        "prompt": "Say SUBAGENT-ECHO-5",
        "model": "haiku",
        "subagent_type": "general-purpose",
        "run_in_background": False,
    }
    result = claude(
        "Delegate this.\nmock-call Agent " + json.dumps(call),
        ANTHROPIC_MODEL="oa/mock-agent-delegating",
    )

    requests = stack.mock_requests("mock-agent-delegating")
    assert len(requests) == 2, requests
    results = tool_messages(requests[1])
    assert [m["tool_call_id"] for m in results] == ["call_mock1"]
    assert "SUBAGENT-ECHO-5" in text(results[0]["content"])
    assert "MOCK-FINAL (tool said:" in result.stdout


def test_claude_code_reads_an_image_through_an_openai_backend(claude, stack, tmp_path):
    # Read answers with an image block; OpenAI takes images only from users, so the
    # gateway sends it in a user message after the tool result (a fix the agent needed).
    (tmp_path / "work").mkdir()
    shot = tmp_path / "work" / "shot.png"
    shot.write_bytes(RED_PNG)
    prompt = "Look at the screenshot.\nmock-call Read " + json.dumps({"file_path": str(shot)})
    result = claude(prompt, ANTHROPIC_MODEL="oa/mock-agent-screenshot")

    requests = stack.mock_requests("mock-agent-screenshot")
    check_image_follows_the_tool_result(requests)
    assert "MOCK-FINAL (tool said:" in result.stdout
