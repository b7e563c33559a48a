"""The official `anthropic` Python SDK against the gateway's /v1/messages routes.

Every chat test runs against the three backend kinds: the built-in `echo` (answers with
the user's message), `oa/...` (an OpenAI-compatible upstream) and `ol/...` (a native
Ollama upstream), each translated by the gateway. The mock upstream answers `mock-model`
with "Hello from the mock 🦀" and usage 7 + 5; `mock-tool` calls
get_weather(city="Tokyo"); `mock-think` reasons "Let me think." first;
`mock-statusNNN` fails with status NNN.
"""

import anthropic
import pytest
from anthropic import Anthropic

API_KEY = "sk-test"  # the one key conftest.py configures

MOCK_ANSWER = "Hello from the mock 🦀"
ECHO_TEXT = "hello there, gateway"
CHAT_MODELS = ["echo", "oa/mock-model", "ol/mock-model"]
TOOL_MODELS = ["oa/mock-tool", "ol/mock-tool"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(gateway):
    # The SDK sends the key as `x-api-key`, as Claude Code does.
    with Anthropic(base_url=gateway, api_key=API_KEY, max_retries=0, timeout=30) as client:
        yield client


def ask(text=ECHO_TEXT):
    return [{"role": "user", "content": text}]


def expected_answer(model):
    return ECHO_TEXT if model == "echo" else MOCK_ANSWER


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_create(client, model):
    message = client.messages.create(model=model, max_tokens=256, messages=ask())
    assert message.id.startswith("msg_")
    assert message.model == model
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected_answer(model)
    assert message.stop_reason == "end_turn"
    # The mock counts its five pieces; echo the three words it repeats.
    assert message.usage.output_tokens == (3 if model == "echo" else 5)
    assert message.usage.input_tokens > 0


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream(client, model):
    with client.messages.stream(
        model=model,
        max_tokens=256,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=ask(),
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected_answer(model)
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_bearer_token_and_any_version(gateway):
    # The SDK's other way: `Authorization: Bearer`, with a newer version header.
    with Anthropic(
        base_url=gateway,
        auth_token=API_KEY,
        max_retries=0,
        default_headers={"anthropic-version": "2026-10-21", "anthropic-beta": "a,b"},
    ) as client:
        message = client.messages.create(model="echo", max_tokens=64, messages=ask())
    assert message.content[0].text == ECHO_TEXT


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_tools(client, model):
    message = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
        messages=ask("Weather in Tokyo?"),
    )
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather"
    assert call.input == {"city": "Tokyo"}
    # The result goes back with the call's id, and the conversation goes on.
    follow_up = client.messages.create(
        model="echo",
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[
            *ask("Weather in Tokyo?"),
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                    {"type": "text", "text": ECHO_TEXT},
                ],
            },
        ],
    )
    assert follow_up.stop_reason == "end_turn"
    assert follow_up.content[0].text == ECHO_TEXT


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_streamed_tools(client, model):
    with client.messages.stream(
        model=model, max_tokens=256, tools=[WEATHER_TOOL], messages=ask("Weather?")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = [block for block in final.content if block.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "Tokyo"})


@pytest.mark.parametrize("model", ["oa/mock-think", "ol/mock-think"])
def test_thinking(client, model):
    with client.messages.stream(
        model=model,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=ask("why?"),
    ) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."
    assert final.content[1].text == MOCK_ANSWER


def test_count_tokens(client):
    counted = client.messages.count_tokens(
        model="oa/mock-model",
        system="12345678",
        messages=ask("1234"),
    )
    assert counted.input_tokens == 3


def test_models(client):
    models = list(client.models.list())
    assert any(model.id == "oa/mock-model" for model in models)
    assert all(model.type == "model" for model in models)
    assert client.models.retrieve("oa/mock-model").id == "oa/mock-model"


def test_errors(gateway, client):
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="oa/mock-status500", max_tokens=16, messages=ask())
    assert failed.value.status_code == 500
    assert failed.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="ol/mock-status429", max_tokens=16, messages=ask())
    with Anthropic(base_url=gateway, api_key="sk-wrong", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError):
            stranger.messages.create(model="echo", max_tokens=16, messages=ask())
    # A failure after the stream started reaches the SDK as an error.
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(
            model="oa/mock-errstream", max_tokens=16, messages=ask()
        ) as stream:
            for _ in stream:
                pass
