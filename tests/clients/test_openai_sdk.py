"""The official `openai` Python SDK against the gateway's /v1 routes.

Every chat test runs against the three backend kinds: the built-in `echo` (answers with
the user's message), `oa/...` (an OpenAI-compatible upstream) and `ol/...` (a native
Ollama upstream, translated by the gateway). The mock upstream answers `mock-model` with
"Hello from the mock 🦀" and usage 7 + 5; `mock-tool` calls get_weather(city="Tokyo");
`mock-think` reasons "Let me think." first; `mock-statusNNN` fails with status NNN.
"""

import json

import openai
import pytest
from openai import OpenAI

API_KEY = "sk-test"  # the one key conftest.py configures

MOCK_ANSWER = "Hello from the mock 🦀"
ECHO_TEXT = "hello there, gateway"
CHAT_MODELS = ["echo", "oa/mock-model", "ol/mock-model"]
TOOL_MODELS = ["oa/mock-tool", "ol/mock-tool"]
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


@pytest.fixture(scope="module")
def client(gateway):
    with OpenAI(base_url=gateway + "/v1", api_key=API_KEY, timeout=30) as client:
        yield client


def ask(text=ECHO_TEXT):
    return [{"role": "user", "content": text}]


def expected_answer(model):
    return ECHO_TEXT if model == "echo" else MOCK_ANSWER


# --- chat, not streamed -------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat(client, model):
    completion = client.chat.completions.create(model=model, messages=ask())
    choice = completion.choices[0]
    assert completion.model == model
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_answer(model)
    assert choice.finish_reason == "stop"
    if model != "echo":
        assert completion.usage.prompt_tokens == 7
        assert completion.usage.completion_tokens == 5
        assert completion.usage.total_tokens == 12


# --- chat, streamed -----------------------------------------------------------------


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_with_usage(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=ask(),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    last = chunks[-1]
    assert text == expected_answer(model)
    assert finish == ["stop"]
    assert all(c.model == model for c in chunks)
    assert last.choices == []
    assert last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    if model != "echo":
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 5)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_helper_final_completion(client, model):
    with client.chat.completions.stream(model=model, messages=ask()) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == expected_answer(model)
    assert final.choices[0].message.content == expected_answer(model)
    assert final.choices[0].finish_reason == "stop"


# --- tools ----------------------------------------------------------------------------


def assert_weather_call(name, arguments):
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Tokyo"}


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_tool_call(client, model):
    completion = client.chat.completions.create(
        model=model, messages=ask("Weather in Tokyo?"), tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert_weather_call(call.function.name, call.function.arguments)


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_tool_call_stream(client, model):
    stream = client.chat.completions.create(
        model=model, messages=ask("Weather in Tokyo?"), tools=[WEATHER_TOOL], stream=True
    )
    calls = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert_weather_call(calls[0]["name"], calls[0]["arguments"])


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_tool_call_stream_helper(client, model):
    with client.chat.completions.stream(
        model=model, messages=ask("Weather in Tokyo?"), tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert_weather_call(call.function.name, call.function.arguments)


# --- reasoning ------------------------------------------------------------------------


def test_reasoning_from_ollama_thinking(client):
    completion = client.chat.completions.create(model="ol/mock-think", messages=ask())
    message = completion.choices[0].message
    assert message.content == MOCK_ANSWER
    assert (message.model_extra or {}).get("reasoning_content") == "Let me think."


# --- models ---------------------------------------------------------------------------


def test_models_list(client):
    ids = [model.id for model in client.models.list()]
    for expected in ["echo/echo", "oa/mock-model", "ol/mock-model:latest"]:
        assert expected in ids


# --- errors ---------------------------------------------------------------------------


def test_wrong_key_is_authentication_error(gateway):
    with OpenAI(base_url=gateway + "/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as raised:
            wrong.chat.completions.create(model="echo", messages=ask())
    assert raised.value.status_code == 401


def test_upstream_429_is_rate_limit_error(gateway):
    with OpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model="oa/mock-status429", messages=ask())
    assert raised.value.status_code == 429


# --- embeddings -----------------------------------------------------------------------


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_embeddings(client, encoding_format):
    extra = {"encoding_format": encoding_format} if encoding_format else {}

    def embed():
        response = client.embeddings.create(model="echo", input=["a", "bb"], **extra)
        return [item.embedding for item in sorted(response.data, key=lambda d: d.index)]

    first, second = embed()
    assert len(first) == len(second) > 0
    assert all(isinstance(x, float) for x in first + second)
    assert first != second
    assert embed() == [first, second]
