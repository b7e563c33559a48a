"""The official `ollama` Python client against the gateway's /api routes.

Chat runs against the three backend kinds: the built-in `echo` (answers with the
user's message), `oa/...` (an OpenAI-compatible upstream, translated by the gateway)
and `ol/...` (a native Ollama upstream). The mock upstream answers `mock-model` with
"Hello from the mock 🦀" and counts 7 + 5; `mock-tool` calls get_weather(city="Tokyo");
`mock-think` thinks "Let me think." first; `mock-statusNNN` fails with status NNN;
`mock-errstream` fails after the first piece of a stream.
"""

from datetime import datetime

import ollama
import pytest

API_KEY = "sk-test"  # the one key conftest.py configures
MOCK_ANSWER = "Hello from the mock 🦀"
ECHO_TEXT = "hello there, gateway"
CHAT_MODELS = ["echo", "oa/mock-model", "ol/mock-model"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch):
    # ollama-python sends $OLLAMA_API_KEY when no Authorization header is given.
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)


@pytest.fixture
def client(gateway):
    return ollama.Client(host=gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)


def ask(text=ECHO_TEXT):
    return [{"role": "user", "content": text}]


def expected_answer(model):
    return ECHO_TEXT if model == "echo" else MOCK_ANSWER


def assert_final(part, model):
    assert part.done is True
    assert part.done_reason == "stop"
    assert part.model == model
    if model == "echo":
        assert part.prompt_eval_count > 0 and part.eval_count > 0
    else:
        assert (part.prompt_eval_count, part.eval_count) == (7, 5)


# --- chat -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat(client, model):
    response = client.chat(model=model, messages=ask())
    assert response.message.role == "assistant"
    assert response.message.content == expected_answer(model)
    assert_final(response, model)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream(client, model):
    parts = list(client.chat(model=model, messages=ask(), stream=True))
    assert "".join(p.message.content or "" for p in parts) == expected_answer(model)
    assert all(p.message.role == "assistant" for p in parts)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert_final(parts[-1], model)


# --- tools and thinking ---------------------------------------------------------------


def assert_weather_call(calls):
    [call] = calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Tokyo"}


def test_tool_call(client):
    response = client.chat(model="oa/mock-tool", messages=ask("Weather in Tokyo?"), tools=[WEATHER_TOOL])
    assert_weather_call(response.message.tool_calls)
    assert response.done_reason == "stop"


def test_tool_call_stream(client):
    parts = list(
        client.chat(model="oa/mock-tool", messages=ask("Weather in Tokyo?"), tools=[WEATHER_TOOL], stream=True)
    )
    assert_weather_call([call for p in parts for call in p.message.tool_calls or []])
    assert parts[-1].done is True


def test_thinking(client):
    response = client.chat(model="oa/mock-think", messages=ask(), think=True)
    assert response.message.thinking == "Let me think."
    assert response.message.content == MOCK_ANSWER


def test_thinking_stream(client):
    parts = list(client.chat(model="oa/mock-think", messages=ask(), think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think."
    assert "".join(p.message.content or "" for p in parts) == MOCK_ANSWER


# --- generate -------------------------------------------------------------------------


def test_generate(client):
    response = client.generate(model="echo", prompt="hi there")
    assert response.response == "hi there"
    assert response.done is True
    assert response.done_reason == "stop"


def test_generate_stream(client):
    parts = list(client.generate(model="echo", prompt="hi there", stream=True))
    assert "".join(p.response or "" for p in parts) == "hi there"
    assert parts[-1].done is True
    assert parts[-1].done_reason == "stop"


def test_generate_through_openai_backend(client):
    response = client.generate(model="oa/mock-model", prompt="x")
    assert response.response == MOCK_ANSWER
    assert response.model == "oa/mock-model"


# --- models ---------------------------------------------------------------------------


def test_list(client):
    models = {m.model: m for m in client.list().models}
    for name in ["echo/echo", "ol/mock-model:latest"]:
        assert name in models
        assert isinstance(models[name].modified_at, datetime)


@pytest.mark.parametrize("model", ["echo", "oa/mock-model"])
def test_show(client, model):
    # ShowResponse requires the `model_info` key: a response without it fails validation.
    response = client.show(model)
    assert isinstance(response.modelinfo, dict)


def test_ps(client):
    assert isinstance(client.ps().models, list)


# --- embeddings -----------------------------------------------------------------------


def test_embed(client):
    response = client.embed(model="echo", input=["a", "b"])
    first, second = response.embeddings
    assert len(first) == len(second) > 0
    assert first != second


def test_embeddings_legacy(client):
    response = client.embeddings(model="echo", prompt="a")
    assert len(response.embedding) > 0


# --- errors ---------------------------------------------------------------------------


def test_missing_key_is_401(gateway):
    anonymous = ollama.Client(host=gateway, timeout=30)
    with pytest.raises(ollama.ResponseError) as raised:
        anonymous.chat(model="echo", messages=ask())
    assert raised.value.status_code == 401


def test_upstream_status_is_passed_on(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="ol/mock-status429", messages=ask())
    assert raised.value.status_code == 429


def test_error_inside_stream(client):
    parts = client.chat(model="ol/mock-errstream", messages=ask(), stream=True)
    with pytest.raises(ollama.ResponseError):
        for _ in parts:
            pass
