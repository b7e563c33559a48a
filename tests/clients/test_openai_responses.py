"""The official `openai` Python SDK's Responses API (`client.responses`) against the
gateway's `/v1/responses`: create, stream (raw events and the stream helper), function
tools both ways, reasoning, retrieve and delete of stored responses.

As in test_openai_sdk.py, `echo` answers with the user's message, `oa/...` is an
OpenAI-compatible upstream and `ol/...` a native Ollama one, both the mock: it answers
"Hello from the mock 🦀" with usage 7 + 5, `mock-tool` calls get_weather(city="Tokyo")
and `mock-think` reasons "Let me think." first.
"""

import json

import openai
import pytest
from openai import OpenAI

API_KEY = "sk-test"  # the one key conftest.py configures

MOCK_ANSWER = "Hello from the mock 🦀"
ECHO_TEXT = "hello there, gateway"
MODELS = ["echo", "oa/mock-model", "ol/mock-model"]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(gateway):
    with OpenAI(base_url=gateway + "/v1", api_key=API_KEY, timeout=30) as client:
        yield client


def expected(model):
    return ECHO_TEXT if model == "echo" else MOCK_ANSWER


@pytest.mark.parametrize("model", MODELS)
def test_create(client, model):
    response = client.responses.create(model=model, input=ECHO_TEXT)
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == model
    assert response.output_text == expected(model)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_events(client, model):
    stream = client.responses.create(
        model=model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": ECHO_TEXT}]}],
        stream=True,
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected(model)
    assert events[-1].response.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper(client, model):
    with client.responses.stream(model=model, input=ECHO_TEXT) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == expected(model)
    assert final.output_text == expected(model)
    assert final.status == "completed"


@pytest.mark.parametrize("model", ["oa/mock-tool", "ol/mock-tool"])
def test_function_call_round_trip(client, model):
    response = client.responses.create(
        model=model, input="What is the weather in Tokyo?", tools=[WEATHER_TOOL]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Tokyo"}
    # The call's output goes back by call_id; this model answers with text again.
    answer_model = model.replace("mock-tool", "mock-model")
    follow = client.responses.create(
        model=answer_model,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "11 degrees"}],
        tools=[WEATHER_TOOL],
    )
    assert follow.output_text == MOCK_ANSWER


@pytest.mark.parametrize("model", ["oa/mock-tool", "ol/mock-tool"])
def test_function_call_stream_helper(client, model):
    with client.responses.stream(model=model, input="weather?", tools=[WEATHER_TOOL]) as stream:
        arguments = "".join(
            e.delta for e in stream if e.type == "response.function_call_arguments.delta"
        )
        final = stream.get_final_response()
    assert json.loads(arguments) == {"city": "Tokyo"}
    call = next(item for item in final.output if item.type == "function_call")
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Tokyo"}


def test_reasoning(client):
    response = client.responses.create(model="oa/mock-think", input="think first")
    reasoning = next(item for item in response.output if item.type == "reasoning")
    assert reasoning.content[0].text == "Let me think."
    assert response.output_text == MOCK_ANSWER


def test_retrieve_continue_and_delete(client):
    first = client.responses.create(model="echo", input="remember me")
    again = client.responses.retrieve(first.id)
    assert again.id == first.id
    assert again.output_text == "remember me"
    second = client.responses.create(
        model="echo", previous_response_id=first.id, input="and this"
    )
    assert second.previous_response_id == first.id
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unstored = client.responses.create(model="echo", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_errors_are_sdk_exceptions(gateway, client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="echo", input="x", tools=[{"type": "file_search", "vector_store_ids": ["vs"]}]
        )
    assert refused.value.body["param"] == "tools"
    with OpenAI(base_url=gateway + "/v1", api_key="sk-wrong", timeout=30) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.responses.create(model="echo", input="x")
    with pytest.raises(openai.RateLimitError):
        client.with_options(max_retries=0).responses.create(model="oa/mock-status429", input="x")


@pytest.mark.parametrize("model", ["oa/mock-think", "ol/mock-think"])
def test_reasoning_stream_helper(client, model):
    with client.responses.stream(model=model, input="think first") as stream:
        reasoning = "".join(
            e.delta for e in stream if e.type == "response.reasoning_text.delta"
        )
        final = stream.get_final_response()
    assert reasoning == "Let me think."
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == MOCK_ANSWER
